"""Where a training run's start-up goes: the actors one `rayline train` starts, each one's life from
submission to the end of its __init__, read from Ray's task events after the run.

    .venv/bin/python benchmarks/startup_timeline.py      # prints a table; --json writes one

Run on an embedded cluster started here (like `rayline train`); the digits MLP, 2 workers, 2 epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def creation_events(since_s: float) -> list[dict]:
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("type", "=", "ACTOR_CREATION_TASK")], detail=True, limit=1000)
    rows = []
    for task in tasks:
        events = {e["state"]: e["created_ms"] / 1000 for e in (task.events or [])}
        first = min(events.values(), default=0)
        if first < since_s:
            continue
        rows.append({"actor": task.func_or_class_name, **{k: round(v - since_s, 2) for k, v in events.items()}})
    return sorted(rows, key=lambda r: min(v for k, v in r.items() if k != "actor"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    began = time.time()
    from rayline.runtime import connect

    connect()
    connected = time.time()
    from rayline.config import validate_config
    from rayline.data import write_digits
    from rayline.pipeline import train_and_register

    work = Path(tempfile.mkdtemp())
    write_digits(str(work / "digits.parquet"))
    first_epoch: list[float] = []
    cfg = validate_config(
        {
            "name": "startup",
            "data": {"source": str(work / "digits.parquet"), "task": "classification", "label": "label"},
            "model": {"kind": "mlp", "hidden_sizes": [32]},
            "train": {"num_workers": 2, "batch_size": 64, "epochs": 2},
            "storage": {"root": str(work / "store")},
        }
    )
    fit_began = time.time()
    report = train_and_register(cfg, on_epoch=lambda m: first_epoch.append(time.time()), log=lambda _: None)
    done = time.time()
    phases = {
        "connect_s": connected - began,
        "first_epoch_reported_s": first_epoch[0] - fit_began if first_epoch else None,
        "train_and_register_s": done - fit_began,
        "timings": report.evaluation.get("timings"),
    }
    rows = creation_events(fit_began)
    for row in rows:
        print(row)
    print(json.dumps(phases, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps({"phases": phases, "actors": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
