"""What streaming a worker's share costs in shuffle quality: the same training job on a source sorted by label
(the hardest order for a windowed shuffle), with the share held in memory (a full permutation every epoch)
against streamed windows of the default size and of a small one.

    .venv/bin/python benchmarks/shuffle_quality.py     # writes benchmarks/results/shuffle_quality.json

Data: the ingest benchmark's 1x data set (ingest_data.py, 262,144 rows, 32 features, 10 classes) rewritten sorted by
label into 4 files. Job: ingest_bench.py's pipeline (MLP [64, 64], batch 256 per worker, 2 DDP workers), 3 epochs.
All three runs share one embedded cluster and one storage root, so the data is prepared once and the other two
runs reuse it (their log says so). Per run: validation accuracy after each epoch and training samples/s.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import ingest_bench
import ingest_data
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "data" / "shuffle_quality"
SETTINGS = {
    "in memory (full permutation)": ["train.cache_shard_mb=512", "storage.run_name=memory"],
    "streamed, 64 MiB windows (default)": ["train.cache_shard_mb=0", "storage.run_name=window-64"],
    "streamed, 4 MiB windows": ["train.cache_shard_mb=0", "train.shuffle_window_mb=4", "storage.run_name=window-4"],
}
EPOCHS = 3
BASE_ROWS = 262_144
"""ingest_bench.py's default 1x."""


def sorted_source() -> Path:
    """The 1x data set, rows sorted by label, in 4 files."""
    source = WORK / "sorted"
    if source.exists():
        return source
    generated = WORK / "generated"
    ingest_data.generate(generated, BASE_ROWS)
    table = pq.read_table(generated).sort_by(ingest_data.LABEL)
    source.mkdir(parents=True)
    rows = table.num_rows // 4 + 1
    for i in range(4):
        pq.write_table(table.slice(i * rows, rows), source / f"part-{i}.parquet")
    return source


def run(overrides: list[str], source: Path, log) -> dict:
    from rayline.config import load_config
    from rayline.pipeline import train_and_register

    pipeline = WORK / "pipeline.yaml"
    pipeline.write_text(json.dumps(ingest_bench.pipeline_yaml(source, WORK / "store", 256)))
    cfg = load_config(pipeline, [f"train.epochs={EPOCHS}", *overrides])
    epochs: list[dict] = []
    lines: list[str] = []
    started = time.perf_counter()
    train_and_register(cfg, on_epoch=epochs.append, log=lambda line: (lines.append(line), log(line)))
    return {
        "overrides": overrides,
        "val_accuracy_per_epoch": [round(m["val_accuracy"], 4) for m in epochs],
        "samples_per_s_per_epoch": [round(m["samples_per_s"]) for m in epochs],
        "seconds": round(time.perf_counter() - started, 1),
        "data_line": next(line for line in lines if line.startswith("data: prepared") or "reused" in line),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    from rayline.runtime import connect

    source = sorted_source()
    shutil.rmtree(WORK / "store", ignore_errors=True)  # every run trains from scratch
    connect()
    results = {name: run(overrides, source, print) for name, overrides in SETTINGS.items()}
    out = REPO / "benchmarks" / "results" / "shuffle_quality.json"
    out.write_text(
        json.dumps({"source": "ingest 1x data, sorted by label", "epochs": EPOCHS, "runs": results}, indent=1)
    )
    for name, result in results.items():
        print(
            f"{name:38s} val accuracy {result['val_accuracy_per_epoch']}  samples/s {result['samples_per_s_per_epoch']}"
        )


if __name__ == "__main__":
    main()
