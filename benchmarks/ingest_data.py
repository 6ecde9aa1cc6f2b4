"""The ingest benchmark's data set: a directory of Parquet files holding a 10-class classification task.

    .venv/bin/python benchmarks/ingest_data.py DIR --rows N [--seed S]

32 float64 feature columns f00..f31 (each a standard normal with its own scale and offset, so standardising
matters) and an int64 column "label": the argmax of a fixed random linear map of the standardised features plus
Gumbel noise, so a model that learns the map gets about 82% right (chance is about 10%). Files of FILE_ROWS rows
(about 33 MB each), row groups of ROW_GROUP_ROWS rows (about 8 MB), written one row group at a time so generating
any size takes bounded memory. The same rows and seed give the same bytes: every row group comes from its own
generator seeded with (seed, row group number). A directory whose marker (MARKER) records the same rows, seed and
layout is reused as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i:02d}" for i in range(32)]
LABEL = "label"
CLASSES = 10
FILE_ROWS = 131_072
ROW_GROUP_ROWS = 32_768
NOISE = 0.5
"""Scale of the Gumbel noise on the logits: 0.5 leaves the true map about 82% accurate."""
MARKER = "_ingest_data.json"
"""Underscore-named, so readers of the directory (rayline's, Spark's) skip it as they skip _SUCCESS."""
LAYOUT = {"features": len(FEATURES), "dtype": "float64", "file_rows": FILE_ROWS, "row_group_rows": ROW_GROUP_ROWS}
SCHEMA = pa.schema([*(pa.field(name, pa.float64()) for name in FEATURES), pa.field(LABEL, pa.int64())])


def row_bytes() -> int:
    """Arrow in-memory bytes of one row (fixed-width columns, no nulls)."""
    return len(FEATURES) * 8 + 8


def task(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale, offset, weights) of the data set with this seed."""
    rng = np.random.default_rng([seed, 2**32 - 1])  # apart from every row group's stream
    scale = rng.uniform(0.5, 5.0, len(FEATURES))
    offset = rng.uniform(-10.0, 10.0, len(FEATURES))
    weights = rng.standard_normal((len(FEATURES), CLASSES)) * 3.0 / np.sqrt(len(FEATURES))
    return scale, offset, weights


def row_group(seed: int, number: int, rows: int, params) -> pa.Table:
    scale, offset, weights = params
    rng = np.random.default_rng([seed, number])
    z = rng.standard_normal((rows, len(FEATURES)))
    labels = np.argmax(z @ weights + NOISE * rng.gumbel(size=(rows, CLASSES)), axis=1).astype(np.int64)
    x = z * scale + offset
    return pa.Table.from_arrays([*(pa.array(x[:, i]) for i in range(len(FEATURES))), pa.array(labels)], schema=SCHEMA)


def write_file(path: Path, first_group: int, rows: int, seed: int, params) -> None:
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for offset in range(0, rows, ROW_GROUP_ROWS):
            group_rows = min(ROW_GROUP_ROWS, rows - offset)
            writer.write_table(row_group(seed, first_group + offset // ROW_GROUP_ROWS, group_rows, params))


def generate(directory: str | Path, rows: int, seed: int = 0) -> dict:
    """Write (or reuse) the data set of `rows` rows under `directory`; returns its rows, files, bytes on disk,
    Arrow in-memory bytes and whether it was reused."""
    directory = Path(directory)
    wanted = {"rows": rows, "seed": seed, **LAYOUT}
    marker = directory / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return {**found, "reused": True}
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    params = task(seed)
    groups_per_file = FILE_ROWS // ROW_GROUP_ROWS
    for number, start in enumerate(range(0, rows, FILE_ROWS)):
        path = directory / f"part-{number:05d}.parquet"
        write_file(path, number * groups_per_file, min(FILE_ROWS, rows - start), seed, params)
    files = sorted(directory.glob("*.parquet"))
    written = {
        **wanted,
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "arrow_bytes": rows * row_bytes(),
    }
    marker.write_text(json.dumps(written, indent=1) + "\n")  # last: a half-written directory has no marker
    return {**written, "reused": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(generate(args.directory, args.rows, args.seed)))


if __name__ == "__main__":
    main()
