"""Prepared data on storage: the model-ready splits as Parquet files under `{storage.root}/prepared/`, one
entry per data section, reused by every run, resumed run and search trial until the source changes.

An entry is a folder named by the data section (source, features, missing rules, split...). Its manifest.json,
written last, names the source's fingerprint, the fitted preprocessor, the row counts and every file with the
rows of each of its row groups; readers read only the files it names. A changed source (another fingerprint)
is prepared again into a new parts folder, and the manifest then points there; parts older than the one it
replaced are deleted.
Files hold two columns: "x" (fixed-size list of float32, the model's inputs) and "y" (int64 class id, or float32
standardised target).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayline.config import DataConfig
from rayline.data.errors import DataError
from rayline.data.files import open_filesystem, split_query
from rayline.storage import join

FORMAT = 1
"""Bumped whenever what is written changes, so older entries are prepared again rather than misread."""
MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
STALE_AFTER_S = 6 * 3600
ROW_GROUP_BYTES = 1 << 20
"""About 1 MiB per row group: the unit that shards and streamed epochs shuffle, small enough to mix well."""


@dataclass(frozen=True)
class SplitFiles:
    """One prepared split: its files (paths under `root`) and each file's row-group sizes."""

    root: str
    """The entry's location, a local path or URI."""
    paths: list[str]
    row_groups: list[list[int]]
    num_inputs: int

    @property
    def rows(self) -> int:
        return sum(sum(groups) for groups in self.row_groups)

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.num_inputs)

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "paths": self.paths, "row_groups": self.row_groups, "num_inputs": self.num_inputs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitFiles:
        return cls(d["root"], list(d["paths"]), [list(g) for g in d["row_groups"]], int(d["num_inputs"]))

    def open(self) -> ParquetFiles:
        return ParquetFiles(self)

    def read_column(self, name: str) -> np.ndarray:
        """One column of the whole split in file order (e.g. "y", or the client column a federated run's data
        carries), read without the inputs."""
        filesystem, base = open_filesystem(self.root)
        parts = [
            pq.read_table(posixpath.join(base, path), columns=[name], filesystem=filesystem).column(name)
            for path in self.paths
        ]
        return np.concatenate([p.to_numpy(zero_copy_only=False) for p in parts]) if parts else np.zeros(0)

    def iter_arrays(self, batch_size: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) numpy batches of the whole split in file order, read by pyarrow in this process."""
        files = self.open()
        for f, groups in enumerate(self.row_groups):
            for g in range(len(groups)):
                x, y = files.read(f, g)
                for start in range(0, len(y), batch_size):
                    yield x[start : start + batch_size], y[start : start + batch_size]


class ParquetFiles:
    """A split's files, each opened once; reads one row group at a time as numpy arrays."""

    def __init__(self, split: SplitFiles):
        self.split = split
        self.filesystem, self.base = open_filesystem(split.root)
        self.opened: dict[int, pq.ParquetFile] = {}

    def read(self, file_index: int, group: int) -> tuple[np.ndarray, np.ndarray]:
        if file_index not in self.opened:
            path = posixpath.join(self.base, self.split.paths[file_index])
            self.opened[file_index] = pq.ParquetFile(self.filesystem.open_input_file(path))
        table = self.opened[file_index].read_row_group(group, columns=["x", "y"])
        return arrays_of(table, self.split.num_inputs)


def arrays_of(table: pa.Table, num_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    x = table.column("x").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return x.reshape(-1, num_inputs), table.column("y").to_numpy()


def row_bytes(num_inputs: int) -> int:
    """Bytes of one prepared row: float32 inputs and an 8-byte label."""
    return 4 * num_inputs + 8


def table_of(x: np.ndarray, y: np.ndarray, client: np.ndarray | None = None) -> pa.Table:
    x = np.ascontiguousarray(x, dtype=np.float32)
    inputs = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    columns = {"x": inputs, "y": pa.array(y)}
    if client is not None:
        columns["client"] = pa.array(client, type=pa.string())
    return pa.table(columns)


def write_split_file(
    x: np.ndarray, y: np.ndarray, root: str, relative_path: str, client: np.ndarray | None = None
) -> list[int]:
    """Write one file of a split (with each row's client, for a federated partition_by); returns its row-group
    sizes."""
    filesystem, base = open_filesystem(root)
    path = posixpath.join(base, relative_path)
    filesystem.create_dir(posixpath.dirname(path), recursive=True)
    group_rows = max(1, ROW_GROUP_BYTES // row_bytes(x.shape[1]))
    # No dictionaries: model inputs are floats, and dictionary-encoding them is most of the writing time.
    table = table_of(x, y, client)
    pq.write_table(table, path, filesystem=filesystem, row_group_size=group_rows, use_dictionary=False)
    return [min(group_rows, len(y) - start) for start in range(0, len(y), group_rows)]


def check_outside_source(storage_root: str, source: str) -> None:
    """A storage root inside a source folder would have its prepared files read back as data (and change the
    source's fingerprint on every run)."""
    source, storage_root = split_query(source)[0], split_query(storage_root)[0]
    folder = source
    for i, c in enumerate(source):
        if c in "*?[":
            folder = posixpath.dirname(source[:i])
            break
    local = "://" not in folder and "://" not in storage_root
    root, folder = (posixpath.abspath(p) if local else p.rstrip("/") for p in (storage_root, folder))
    if root == folder or root.startswith(folder.rstrip("/") + "/"):
        raise DataError(
            f"storage.root {storage_root} is inside data.source {source}: the data prepared there would be read "
            "back as source data; put storage.root outside the source folder"
        )


def entry_location(storage_root: str, data_cfg: DataConfig, client_column: str | None = None) -> str:
    """Where the data section's prepared entry lives: named by everything in the section that shapes it (and
    the column of clients its files carry, if any)."""
    shape = {"format": FORMAT, "data": data_cfg.model_dump(mode="json")}
    if client_column is not None:
        shape["client_column"] = client_column
    described = json.dumps(shape, sort_keys=True)
    name = hashlib.sha256(described.encode()).hexdigest()[:20]
    return join(storage_root.rstrip("/"), "prepared", name)


def new_parts_folder() -> str:
    return f"parts-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Manifest:
    fingerprint: str
    preprocessor: dict[str, Any]
    splits: dict[str, SplitFiles | None]
    label_counts: list[int] | None
    """Training rows per class id (classification)."""
    left_out: dict[str, int]
    """{"no_label": rows, "incomplete": rows} no split got."""
    seconds: float
    """How long preparing took."""

    def to_json(self) -> str:
        splits = {
            name: None if s is None else {"paths": s.paths, "row_groups": s.row_groups}
            for name, s in self.splits.items()
        }
        body = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "preprocessor": self.preprocessor,
            "num_inputs": self.splits["train"].num_inputs,
            "splits": splits,
            "label_counts": self.label_counts,
            "left_out": self.left_out,
            "seconds": self.seconds,
        }
        return json.dumps(body, indent=1)


def write_manifest(location: str, manifest: Manifest) -> None:
    """Write the manifest last: until then the entry is not there for anyone. A local file is replaced
    atomically; an object store's put is atomic anyway."""
    filesystem, base = open_filesystem(location)
    path = posixpath.join(base, MANIFEST)
    staged = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with filesystem.open_output_stream(staged) as out:
        out.write(manifest.to_json().encode())
    filesystem.move(staged, path)


def read_manifest(location: str) -> Manifest | None:
    """The entry's manifest; None when there is none, it is from another format, or any file it names is gone
    (the entry is then prepared again)."""
    filesystem, base = open_filesystem(location)
    try:
        with filesystem.open_input_stream(posixpath.join(base, MANIFEST)) as stream:
            body = json.loads(stream.read())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return None
    try:
        splits = {
            name: None if s is None else SplitFiles(location, s["paths"], s["row_groups"], int(body["num_inputs"]))
            for name, s in body["splits"].items()
        }
        manifest = Manifest(
            body["fingerprint"], body["preprocessor"], splits, body["label_counts"], body["left_out"], body["seconds"]
        )
    except (KeyError, TypeError, ValueError):
        return None
    paths = [posixpath.join(base, p) for s in splits.values() if s is not None for p in s.paths]
    if any(info.type != pafs.FileType.File for info in filesystem.get_file_info(paths)):
        return None
    return manifest


def remove_parts(location: str, parts: str) -> None:
    filesystem, base = open_filesystem(location)
    path = posixpath.join(base, parts)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)


def remove_old_parts(location: str, keep: set[str]) -> None:
    """Delete parts folders of earlier preparations, except those in `keep` (the current one and the one it
    replaced, which a run started before may still be reading) and those changed in the last STALE_AFTER_S
    (another process may be writing one right now)."""
    filesystem, base = open_filesystem(location)
    now = time.time()
    for info in filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("parts-") or info.base_name in keep:
            continue
        if info.mtime is not None and now - info.mtime.timestamp() < STALE_AFTER_S:
            continue
        filesystem.delete_dir(info.path)
