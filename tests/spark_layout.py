"""Write a table the way Spark writes `df.write.partitionBy(*keys).parquet(root)` (or `.csv(root, header=True)`),
with pyarrow: no JVM in the tests.

What Spark (Hadoop's committer) leaves in root, reproduced here:
- one `part-NNNNN-<job uuid>-c000.snappy.parquet` file per task and partition (`part-NNNNN-<uuid>-c000.csv`
  for CSV, a header line in each; Spark 4 names them `part-NNNNN-<uuid>.c000.snappy.parquet`, as in
  tests/fixtures/spark_written, which real PySpark 4.3 wrote), under one `key=value/` folder per partition
  key, nested in partitionBy order; partition columns are not stored in the files;
- a null partition value as the folder `key=__HIVE_DEFAULT_PARTITION__`, special characters in a value
  escaped as %XX;
- `_SUCCESS` (empty) at the root when the job commits;
- a hidden `.<name>.crc` beside every file (Hadoop's checksum file: "crc\\0", bytes per checksum, a CRC-32
  per 512-byte chunk).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
ESCAPED = set("\"#%'*/:=?\\\x7f{[]^")
"""Characters Spark's escapePathName writes as %XX in a partition folder name (with control characters)."""


def write_spark_table(
    df: pd.DataFrame, root: Path, *, fmt: str = "parquet", partition_by: tuple[str, ...] = (), tasks: int = 2
) -> list[Path]:
    """Write df under root as `tasks` Spark tasks would; return the data files written."""
    root.mkdir(parents=True, exist_ok=True)
    job = uuid.uuid4()
    written = []
    for task, rows in enumerate(task_slices(df, tasks)):
        groups = rows.groupby(list(partition_by), dropna=False, sort=True) if partition_by else [((), rows)]
        for values, group in groups:
            values = values if isinstance(values, tuple) else (values,)
            folder = root.joinpath(*(f"{k}={folder_value(v)}" for k, v in zip(partition_by, values, strict=True)))
            folder.mkdir(parents=True, exist_ok=True)
            data = group.drop(columns=list(partition_by))
            written.append(write_part(data, folder / part_name(task, job, fmt), fmt))
    success = root / "_SUCCESS"
    success.write_bytes(b"")
    write_crc(success)
    return sorted(written)


def task_slices(df: pd.DataFrame, tasks: int) -> list[pd.DataFrame]:
    size = -(-len(df) // tasks)
    return [df.iloc[i : i + size] for i in range(0, len(df), size)]


def part_name(task: int, job: uuid.UUID, fmt: str) -> str:
    return f"part-{task:05d}-{job}-c000." + ("snappy.parquet" if fmt == "parquet" else "csv")


def folder_value(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return HIVE_NULL
    return "".join(f"%{ord(c):02X}" if c in ESCAPED or ord(c) < 0x20 else c for c in str(value))


def write_part(data: pd.DataFrame, path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(data, preserve_index=False), path, compression="snappy")
    else:
        data.to_csv(path, index=False)
    write_crc(path)
    return path


def write_crc(path: Path, bytes_per_checksum: int = 512) -> None:
    data = path.read_bytes()
    chunks = [data[i : i + bytes_per_checksum] for i in range(0, len(data), bytes_per_checksum)]
    body = b"".join(struct.pack(">I", zlib.crc32(chunk)) for chunk in chunks)
    (path.parent / f".{path.name}.crc").write_bytes(b"crc\0" + struct.pack(">i", bytes_per_checksum) + body)


SPARK_WRITTEN = Path(__file__).resolve().parent / "fixtures" / "spark_written"
"""Tables that real PySpark 4.3 wrote (its make.py), with the rows it was given in rows.jsonl."""


def spark_written_rows() -> pd.DataFrame:
    rows = pd.read_json(SPARK_WRITTEN / "rows.jsonl", lines=True, dtype=False)
    return rows


def missing_as_empty(rows: pd.DataFrame) -> pd.DataFrame:
    """Spark writes a null string as an empty cell; Arrow's CSV reader reads it as "" or, in a file where the
    column has no value at all, as null. rayline's preprocessing counts both as missing."""
    return rows.assign(color=rows["color"].fillna(""))
