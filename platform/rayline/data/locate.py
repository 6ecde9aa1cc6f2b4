"""Find a refused cell in the source files, to name the file and the row as the file counts them.

Inside Ray Data rows are hashed into splits and shuffled, so a RefusedValue raised there knows only its
position in a batch. On that error path (only there) the driver reads the source files again, column by
column and in file order, runs the same check over them, and reports the first cell it refuses:
"data/x.csv line 17: column 'age' holds 'abc', expected a finite number".

Positions: a CSV's line number counting the header as line 1 (a quoted value spanning lines makes it the
record number plus one instead); a JSON-lines file's line number; a Parquet file's row number, counting from 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from rayline.data.files import csv_delimiter, partition_values, resolve_source
from rayline.data.values import RefusedValue

CHUNK_ROWS = 65536
Check = Callable[[pd.DataFrame], object]
"""Raises RefusedValue for a refused cell of the frame (row = position in the frame)."""


def locate_refused_value(
    source: str,
    fmt: str | None,
    columns: dict[str, bool],
    check: Check,
    keep: Callable[[pd.DataFrame], np.ndarray],
) -> str | None:
    """ "FILE POSITION: column C REASON" for the first cell `check` refuses among the rows `keep` keeps, or None
    when the files hold none (or cannot be read again). `columns`: {name: is numeric} of the columns to read."""
    try:
        files = resolve_source(source, fmt)
        delimiter = csv_delimiter(files) if files.format == "csv" else ","
        for path in files.paths:
            partition = partition_values(path, files.base)
            offset = 0
            for chunk in read_chunks(files.filesystem, path, files.format, columns, partition, delimiter):
                found = refused_row(chunk, check, keep)
                if found is not None:
                    row, err = found
                    return f"{path} {position(files.format, offset + row)}: column {err.column!r} {err.reason}"
                offset += len(chunk)
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException):
        return None  # the error path must not hide the original error behind a new one
    return None


def refused_row(
    chunk: pd.DataFrame, check: Check, keep: Callable[[pd.DataFrame], np.ndarray]
) -> tuple[int, RefusedValue] | None:
    rows = np.flatnonzero(keep(chunk))
    try:
        check(chunk.iloc[rows].reset_index(drop=True))
    except RefusedValue as err:
        return int(rows[err.row]), err
    return None


def position(fmt: str, row: int) -> str:
    if fmt == "csv":
        return f"line {row + 2}"
    if fmt == "json":
        return f"line {row + 1}"
    return f"row {row + 1}"


def read_chunks(
    fs, path: str, fmt: str, columns: dict[str, bool], partition: dict[str, str | None], delimiter: str
) -> Iterator[pd.DataFrame]:
    for batch in read_batches(fs, path, fmt, columns, delimiter):
        frame = batch.to_pandas()
        for key, value in partition.items():
            if key in columns and key not in frame.columns:
                frame[key] = value
        yield frame


def read_batches(fs, path: str, fmt: str, columns: dict[str, bool], delimiter: str) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        parquet = pq.ParquetFile(fs.open_input_file(path))
        present = [c for c in columns if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=CHUNK_ROWS, columns=present)
        return
    with fs.open_input_stream(path) as stream:
        if fmt == "json":
            table = pajson.read_json(stream)
            yield from table.select([c for c in columns if c in table.column_names]).to_batches(CHUNK_ROWS)
            return
    parse = pacsv.ParseOptions(delimiter=delimiter)
    with fs.open_input_stream(path) as stream:
        names = pacsv.open_csv(stream, parse_options=parse).schema.names
    present = [c for c in columns if c in names]
    # Numeric columns as text, so a cell Arrow could not convert still reaches the check, which names it;
    # the others are typed as Ray Data's reader types them (from the first block), so their keys match.
    text = {c: pa.string() for c in present if columns[c]}
    options = pacsv.ConvertOptions(include_columns=present, column_types=text)
    with fs.open_input_stream(path) as stream:
        yield from pacsv.open_csv(stream, parse_options=parse, convert_options=options)
