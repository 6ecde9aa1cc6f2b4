"""Read a source into a Ray Dataset and check it before anything else touches it; or read its first rows with
pyarrow alone (no Ray) to learn its columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from rayline.config import DataConfig
from rayline.data.errors import DataError, reading
from rayline.data.files import (
    HIVE_NULL,
    SourceFiles,
    csv_delimiter,
    list_source_files,
    partition_values,
    resolve_source,
)
from rayline.data.schema import check_schema, is_text

if TYPE_CHECKING:
    import ray.data
    from ray.data.datasource.partitioning import Partitioning

__all__ = ["check_schema", "list_source_files", "open_source", "read_sample", "read_source"]

SAMPLE_FILES = 32
"""Most files read_sample opens: a source of many tiny files is sampled from its first ones."""


SOURCE_PATH_COLUMN = "path"
"""The column Ray Data adds with each row's file when asked (include_paths): a federated run's clients by file."""


def read_source(
    data_cfg: DataConfig, include_paths: bool = False, files: SourceFiles | None = None
) -> ray.data.Dataset:
    """A lazy Dataset of the source's rows, after checks that it has rows and the configured columns; with
    `include_paths`, each row's file in the SOURCE_PATH_COLUMN column. `files`: the source already listed."""
    source = data_cfg.source
    files = files or resolve_source(source, data_cfg.format)
    with reading(source):
        # read_parquet reads the footers here, on the driver: a corrupt file fails in this call.
        ds = open_source(files, include_paths)
        # One row is enough to learn the schema and that the source is not empty, and is cheap to read.
        head = ds.limit(1).materialize()
    if head.count() == 0:
        raise no_rows_error(source, files)
    check_schema(arrow_schema(head), data_cfg, source)
    return ds


def no_rows_error(source: str, files: SourceFiles) -> DataError:
    names = ", ".join(files.paths[:5]) + (", ..." if len(files.paths) > 5 else "")
    return DataError(f"{source}: no data rows (an empty table or only a header) in {names}")


def open_source(files: SourceFiles, include_paths: bool = False) -> ray.data.Dataset:
    """A lazy Dataset over the listed files, with their partition folders (key=value) as typed columns and
    CSV read with the delimiter its header shows."""
    delimiter = csv_delimiter(files) if files.format == "csv" else ","
    if not files.partitions:
        return open_dataset(
            files.paths, files.filesystem, files.format, delimiter=delimiter, include_paths=include_paths
        )
    from ray.data.datasource.partitioning import Partitioning

    # Ray adds each partition value as a string column; type_partitions gives it the type inferred from
    # every folder name. base_dir keeps folders above the source (/data/env=prod/...) out of the table.
    partitioning = Partitioning("hive", base_dir=files.base, filesystem=files.filesystem)
    ds = open_dataset(files.paths, files.filesystem, files.format, partitioning, delimiter, include_paths)
    return ds.map_batches(
        type_partitions, fn_kwargs={"types": files.partitions}, batch_format="pyarrow", zero_copy_batch=True
    )


def open_dataset(
    paths: list[str],
    filesystem: pafs.FileSystem,
    fmt: str,
    partitioning: Partitioning | None = None,
    delimiter: str = ",",
    include_paths: bool = False,
) -> ray.data.Dataset:
    """A lazy Dataset over exactly these files (from list_source_files); folder names add columns only through
    `partitioning`, and CSV is read with `delimiter` (open_source sets both)."""
    import pyarrow.csv as pacsv
    import ray.data

    # The file list is already chosen, so the readers' extension filters must not drop any of it
    # (read_json's default skips .ndjson). json means JSON lines: Arrow's JSON reader parses one object
    # per line, while read_json(lines=True) refuses a filesystem argument.
    # One read task per file: by default Ray Data cuts the files' rows into as many blocks as the cluster has
    # free CPUs at that moment, and the prepared files (one per block), so the order training sees rows in, would
    # change with what else runs. Within a file, blocks are still cut by size, the same way every time.
    layout = {"file_extensions": None, "partitioning": partitioning, "override_num_blocks": len(paths)}
    layout["include_paths"] = include_paths
    if fmt == "parquet":
        return read_parquet_v1(paths, filesystem, partitioning, include_paths)
    if fmt == "csv":
        parse_options = pacsv.ParseOptions(delimiter=delimiter)
        return ray.data.read_csv(paths, filesystem=filesystem, parse_options=parse_options, **layout)
    return ray.data.read_json(paths, filesystem=filesystem, **layout)


def read_parquet_v1(
    paths: list[str],
    filesystem: pafs.FileSystem,
    partitioning: Partitioning | None = None,
    include_paths: bool = False,
) -> ray.data.Dataset:
    """read_parquet through Ray Data's V1 datasource.

    Ray 2.60's default V2 path starts FooterReader actors on every read: about 2 s per read on an idle
    2-core machine and 5-15 s on a busy one, against 0.1 s for V1; its listing task is also what waits
    forever when trainers hold every CPU (RAY_NOTES §3). The flag is only read while the Dataset is
    built, so setting it around the call changes nothing else.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(
            paths,
            filesystem=filesystem,
            file_extensions=None,
            partitioning=partitioning,
            include_paths=include_paths,
            override_num_blocks=len(paths),  # see open_dataset
        )
    finally:
        context.use_datasource_v2 = saved


def type_partitions(batch: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """Partition columns, read from folder names as strings, in their inferred types; Hive's null marker and
    empty values become nulls. A partition column the files also hold keeps the files' type."""
    for name, dtype in types.items():
        i = batch.schema.get_field_index(name)
        column = batch.column(i)
        if not is_text(column.type):
            continue
        null = pc.is_in(column, value_set=pa.array([HIVE_NULL, ""]))
        column = pc.if_else(null, pa.scalar(None, column.type), column).cast(dtype)
        batch = batch.set_column(i, pa.field(name, dtype), column)
    return batch


def read_sample(files: SourceFiles, max_rows: int, source: str) -> pa.Table:
    """The source's first rows (at most max_rows, from at most SAMPLE_FILES files in listing order) with its
    partition columns, read by pyarrow on this machine: no Ray, no cluster, and not the whole source."""
    tables, rows = [], 0
    with reading(source):
        delimiter = csv_delimiter(files) if files.format == "csv" else ","
        for path in files.paths[:SAMPLE_FILES]:
            head = read_head(files.filesystem, path, files.format, max_rows - rows, delimiter)
            tables.append(with_partitions(head, files, path))
            rows += head.num_rows
            if rows >= max_rows:
                break
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"{source}: its files disagree on a column's type: {err}") from None


def read_head(filesystem: pafs.FileSystem, path: str, fmt: str, max_rows: int, delimiter: str = ",") -> pa.Table:
    """At most max_rows rows from the start of one file, typed as Ray Data's readers type them."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if fmt == "parquet":
        with filesystem.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            return first_rows(parquet.iter_batches(batch_size=max_rows), parquet.schema_arrow, max_rows)
    with filesystem.open_input_stream(path) as f:
        # Ray's CSV and JSON readers also stream with these options: the first block's cells decide the types.
        if fmt == "csv":
            options = pacsv.ReadOptions(use_threads=False)
            reader = pacsv.open_csv(f, read_options=options, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        else:
            reader = pajson.open_json(f)
        return first_rows(reader, reader.schema, max_rows)


def read_file(filesystem: pafs.FileSystem, path: str, fmt: str, delimiter: str = ",") -> pa.Table:
    """One whole Parquet or CSV file, typed as Ray Data's readers type it (rayline.data.blocks reads small sources
    with it); a reader's failure names the file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            with filesystem.open_input_file(path) as f:
                return pq.ParquetFile(f).read()
        with filesystem.open_input_stream(path) as f:
            options = pacsv.ReadOptions(use_threads=False)
            parse = pacsv.ParseOptions(delimiter=delimiter)
            return pacsv.open_csv(f, read_options=options, parse_options=parse).read_all()
    except (ValueError, OSError) as err:  # what read_failure reports; a source may have many files
        raise ValueError(f"{path}: {err}") from err


def first_rows(batches: Iterable[pa.RecordBatch], schema: pa.Schema, max_rows: int) -> pa.Table:
    taken, rows = [], 0
    for batch in batches:
        taken.append(batch)
        rows += batch.num_rows
        if rows >= max_rows:
            break
    return pa.Table.from_batches(taken, schema=schema).slice(0, max_rows)


def with_partitions(table: pa.Table, files: SourceFiles, path: str) -> pa.Table:
    values = partition_values(path, files.base)
    for name in files.partitions:
        if name not in table.column_names:
            table = table.append_column(name, pa.array([values[name] or ""] * table.num_rows, pa.string()))
    return type_partitions(table, files.partitions)


def arrow_schema(ds: ray.data.Dataset) -> pa.Schema:
    schema = ds.schema()
    if isinstance(schema.base_schema, pa.Schema):
        return schema.base_schema
    # Blocks held as pandas report numpy dtypes; Ray's Schema.types maps them to Arrow types.
    return pa.schema(list(zip(schema.names, schema.types, strict=True)))
