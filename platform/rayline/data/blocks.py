"""Where the two preparation passes (prepare.py) run a function over the source's blocks: on the cluster, in one
Ray Data task per block, or, for a small source, here in the driver's process, one block per file read by pyarrow.

Ray Data's first use on a cluster starts its stats actor, then a read task per file for each pass: the benchmark's
43,000-row source took 2.6-2.9 s to prepare through Ray Data on a fresh embedded cluster on 2 cores, and 0.4-0.6 s
in this process (README, "Data larger than memory"). Both give the function the same blocks for such a
source: Ray Data also makes one block of each file (one read task per file, blocks cut only past 128 MiB), read
by the same pyarrow readers with the same options, and handed over as pandas by Ray Data's own conversion; so the
prepared files are the same either way. JSON sources always go through Ray Data, whose reader falls back to
Python's json module where pyarrow's fails.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from rayline.data.errors import reading
from rayline.data.files import COMPRESSIONS, SourceFiles, csv_delimiter
from rayline.data.read import SOURCE_PATH_COLUMN, no_rows_error, read_file, read_head, with_partitions

if TYPE_CHECKING:
    import ray.data

IN_PROCESS_MAX_BYTES = 16 * 2**20
"""Sources whose files hold at most this many bytes (a compressed file counted 10x) are prepared in this process."""
COMPRESSED_EXPANSION = 10


class ClusterBlocks:
    """The source's blocks in Ray Data, each pass a map over them in Ray tasks across the cluster."""

    def __init__(self, ds: ray.data.Dataset, files: SourceFiles):
        self.ds, self.files = ds, files

    def results(self, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """fn(block as pandas, **kwargs) for every block, with the block's rows and bytes added, as they come back."""
        results = self.ds.map_batches(
            packed, fn_kwargs={"fn": fn, "kwargs": kwargs}, batch_format="pandas", batch_size=None
        )
        for row in results.iter_rows():
            yield pickle.loads(row["result"])


def packed(batch: pd.DataFrame, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"result": [pickle.dumps(with_size(fn(batch, **kwargs), batch))]})


def with_size(result: dict[str, Any], batch: pd.DataFrame) -> dict[str, Any]:
    result.update(rows=len(batch), bytes=int(batch.memory_usage(index=False).sum()))
    return result


class LocalBlocks:
    """A small source's files read whole in this process, one block per file; the first pass keeps them for the
    second."""

    def __init__(self, files: SourceFiles, include_paths: bool = False):
        self.files, self.include_paths = files, include_paths
        self.delimiter = csv_delimiter(files) if files.format == "csv" else ","
        self.tables: list[pa.Table] | None = None

    def results(self, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """fn(block as pandas, **kwargs) for every file's block, with the block's rows and bytes added."""
        from ray.data.block import BlockAccessor  # Ray Data's own conversion: the frames its tasks get

        for table in self.read():
            batch = BlockAccessor.for_block(table).to_pandas()
            yield with_size(fn(batch, **kwargs), batch)

    def read(self) -> Iterator[pa.Table]:
        if self.tables is not None:
            yield from self.tables
            return
        tables = []
        for path in self.files.paths:
            table = self.read_one(path)
            if table.num_rows:  # Ray Data hands no empty block to a map either
                tables.append(table)
                yield table
        self.tables = tables

    def read_one(self, path: str) -> pa.Table:
        table = read_file(self.files.filesystem, path, self.files.format, self.delimiter)
        table = with_partitions(table, self.files, path)
        if self.include_paths:  # as Ray Data's include_paths: the path the filesystem was given
            table = table.append_column(SOURCE_PATH_COLUMN, pa.array([path] * table.num_rows, pa.string()))
        return table

    def first_row(self, source: str) -> pa.Table:
        """The first row of the first file that has one, typed as the reader types its file's first block: what
        Ray Data's limit(1) gives read_source's checks. (prepare_entry's row count reads every Parquet footer
        next, so a corrupt file still fails before either pass.)"""
        files = self.files
        with reading(source):
            for path in files.paths:
                head = with_partitions(read_head(files.filesystem, path, files.format, 1, self.delimiter), files, path)
                if head.num_rows:
                    return head
        raise no_rows_error(source, files)


def prepared_here(files: SourceFiles) -> bool:
    """Whether a source is small enough to prepare in this process (IN_PROCESS_MAX_BYTES), and not JSON."""
    if files.format == "json":
        return False
    sizes = zip(files.paths, files.sizes, strict=True)
    stored = sum(size * (COMPRESSED_EXPANSION if compressed(path) else 1) for path, size in sizes)
    return stored <= IN_PROCESS_MAX_BYTES


def compressed(path: str) -> bool:
    return path.endswith(COMPRESSIONS)
