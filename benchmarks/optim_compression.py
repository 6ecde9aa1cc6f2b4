"""Gradient compression on a model of more than 1M parameters (optim_bench.py --part compression).

pipelines/digits_mlp.yaml with hidden sizes [1024, 1024] (1,126,410 parameters), ddp on 2 workers over gloo,
the same data, seed and epochs for train.compression kind none, fp16 and powersgd (rank 2, start_step 10), each
--rounds times in alternating order. Reported: gradient bytes each worker sends per optimizer step (the last
epoch's mean, from the DDP communication hooks' own counts; none: the fp32 gradient), the compression ratio,
samples/s (median epoch) and final test accuracy. Targets: fp16 sends half of none's bytes, powersgd at most 10%;
both within 0.5 pt of none's test accuracy.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from optim_bench import config

HIDDEN = [1024, 1024]
RUNS = {
    "none": {"kind": "none"},
    "fp16": {"kind": "fp16"},
    "powersgd rank 2": {"kind": "powersgd", "rank": 2, "start_step": 10},
}
ACCURACY_PT = 0.5


def measure(cfg) -> dict:
    from rayline.pipeline import train_and_register

    epochs: list[dict] = []
    started = time.perf_counter()
    report = train_and_register(cfg, on_epoch=epochs.append, log=lambda _: None)
    last = epochs[-1]
    return {
        "grad_bytes_per_step": last["grad_bytes_per_step"],
        "compression_ratio": last["compression_ratio"],
        "samples_per_s_median": statistics.median(m["samples_per_s"] for m in epochs),
        "test_accuracy": report.test_metrics["test_accuracy"],
        "fit_wall_s": time.perf_counter() - started,
        "epochs": [
            {k: m[k] for k in ("epoch", "train_loss", "val_accuracy", "samples_per_s", "grad_bytes_per_step") if k in m}
            for m in epochs
        ],
    }


def run_compression(root: Path, epochs: int, rounds: int) -> dict:
    results: list[dict[str, dict]] = []
    for index in range(rounds):
        names = list(RUNS) if index % 2 == 0 else list(reversed(RUNS))
        results.append({})
        for name in names:
            train = {"strategy": "ddp", "compression": RUNS[name]}
            cfg = config(root, f"compression {name} r{index}", train, epochs, model={"hidden_sizes": HIDDEN})
            r = results[-1][name] = measure(cfg)
            print(
                f"round {index + 1} {name:16s} {r['grad_bytes_per_step'] / 2**20:7.2f} MiB/step  "
                f"{r['samples_per_s_median']:8.0f} samples/s  test accuracy {r['test_accuracy']:.4f}",
                flush=True,
            )
    median = {name: medians([r[name] for r in results]) for name in RUNS}
    return {"setup": setup(epochs), "median": median, "targets": targets(median), "rounds": results}


def setup(epochs: int) -> dict:
    return {
        "pipeline": f"pipelines/digits_mlp.yaml with model.hidden_sizes {HIDDEN} (1,126,410 parameters), AdamW",
        "strategy": "ddp, 2 workers of 1 CPU, gloo",
        "epochs": epochs,
        "runs": RUNS,
    }


def medians(runs: list[dict]) -> dict:
    keys = ("grad_bytes_per_step", "compression_ratio", "samples_per_s_median", "test_accuracy", "fit_wall_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "spread": {k: [r[k] for r in runs] for k in keys}
    }


def targets(median: dict) -> dict:
    none, fp16, power = median["none"], median["fp16"], median["powersgd rank 2"]
    fp16_share = fp16["grad_bytes_per_step"] / none["grad_bytes_per_step"]
    power_share = power["grad_bytes_per_step"] / none["grad_bytes_per_step"]
    fp16_drop = 100 * (none["test_accuracy"] - fp16["test_accuracy"])
    power_drop = 100 * (none["test_accuracy"] - power["test_accuracy"])
    return {
        "fp16 bytes / none": {"value": fp16_share, "target": "<= 0.5", "met": fp16_share <= 0.5},
        "powersgd bytes / none": {"value": power_share, "target": "<= 0.10", "met": power_share <= 0.10},
        "fp16 accuracy drop (pt)": {"value": fp16_drop, "target": f"<= {ACCURACY_PT}", "met": fp16_drop <= ACCURACY_PT},
        "powersgd accuracy drop (pt)": {
            "value": power_drop,
            "target": f"<= {ACCURACY_PT}",
            "met": power_drop <= ACCURACY_PT,
        },
    }
