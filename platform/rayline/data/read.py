"""Read a source into a Ray Dataset and check it before anything else touches it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs

from rayline.config import DataConfig
from rayline.data.errors import DataError, reading
from rayline.data.files import list_source_files, resolve_source
from rayline.data.schema import check_schema

if TYPE_CHECKING:
    import ray.data

__all__ = ["check_schema", "list_source_files", "read_source"]


def read_source(data_cfg: DataConfig) -> ray.data.Dataset:
    """A lazy Dataset of the source's rows, after checks that it has rows and the configured columns."""
    source = data_cfg.source
    files = resolve_source(source, data_cfg.format)
    with reading(source):
        # read_parquet reads the footers here, on the driver: a corrupt file fails in this call.
        ds = open_dataset(files.paths, files.filesystem, files.format)
        # One row is enough to learn the schema and that the source is not empty, and is cheap to read.
        head = ds.limit(1).materialize()
    if head.count() == 0:
        names = ", ".join(files.paths[:5]) + (", ..." if len(files.paths) > 5 else "")
        raise DataError(f"{source}: no data rows (an empty table or only a header) in {names}")
    check_schema(arrow_schema(head), data_cfg, source)
    return ds


def open_dataset(paths: list[str], filesystem: pafs.FileSystem, fmt: str) -> ray.data.Dataset:
    """A lazy Dataset over exactly these files (from list_source_files)."""
    import ray.data

    # The file list is already chosen, so the readers' extension filters must not drop any of it
    # (read_json's default skips .ndjson). json means JSON lines: Arrow's JSON reader parses one object
    # per line, while read_json(lines=True) refuses a filesystem argument.
    if fmt == "parquet":
        return read_parquet_v1(paths, filesystem)
    if fmt == "csv":
        return ray.data.read_csv(paths, filesystem=filesystem, file_extensions=None)
    return ray.data.read_json(paths, filesystem=filesystem, file_extensions=None)


def read_parquet_v1(paths: list[str], filesystem: pafs.FileSystem) -> ray.data.Dataset:
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
        return ray.data.read_parquet(paths, filesystem=filesystem, file_extensions=None)
    finally:
        context.use_datasource_v2 = saved


def arrow_schema(ds: ray.data.Dataset) -> pa.Schema:
    schema = ds.schema()
    if isinstance(schema.base_schema, pa.Schema):
        return schema.base_schema
    # Blocks held as pandas report numpy dtypes; Ray's Schema.types maps them to Arrow types.
    return pa.schema(list(zip(schema.names, schema.types, strict=True)))
