"""Parameter-server modes against synchronous DDP with a straggler: one of two workers computes 3x slower.

    .venv/bin/python benchmarks/optim_bench.py                      # writes benchmarks/results/optim_bench.json
    .venv/bin/python benchmarks/optim_bench.py --part compression   # optim_bench_compression.json (no straggler)

Four runs of pipelines/digits_mlp.yaml (MLP [128, 64], AdamW lr 0.003, batch 32, 2 workers, gloo) on scikit-learn's
digits tiled --copies times (identical rows land in the same split), on one Ray cluster started here (num_cpus 4),
each with the same data, seed and epochs, --rounds times in alternating order (medians and every round reported):
sync ddp (train.strategy ddp), and train.strategy parameter_server with 2 shards in mode sync, async and
bounded (max_staleness 2). Rank 1 is slowed through the benchmark-only hook rayline.train.straggler
(RAYLINE_BENCH_STRAGGLER=1:SECONDS: after each batch it sleeps twice the model's forward-backward time on one
thread, measured here once, outside any strategy, so that every run's straggler sleeps the same).

Reported per run and round: updates/s (global parameter updates over the summed epoch time, validation included:
ddp's optimizer steps, a shard's applied versions under parameter_server), samples/s, wall time of fit, final test
accuracy (the best checkpoint on the test split, as registered), and the staleness histogram and refusals of the
parameter-server runs. Every epoch's figures are kept in the JSON, the first (warm-up) epoch included.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "mlp": "pipelines/digits_mlp.yaml (MLP [128, 64], 17,226 parameters)",
    "cnn": "pipelines/digits.yaml's model (CNN, channels [32, 64], hidden [128], 53,002 parameters: about 7x the MLP's "
    "forward-backward time), with digits_mlp.yaml's training settings",
}
"""--model: whose forward-backward the workers compute (the straggler's sleep is measured on the same model)."""
STRAGGLER = "1:3"
"""RANK:FACTOR: that rank's forward-backward takes FACTOR times the model's own."""
RUNS = {
    "ddp sync": {"strategy": "ddp"},
    "ps sync": {"strategy": "parameter_server", "parameter_server": {"shards": 2, "mode": "sync"}},
    "ps async": {"strategy": "parameter_server", "parameter_server": {"shards": 2, "mode": "async"}},
    "ps bounded (K=2)": {
        "strategy": "parameter_server",
        "parameter_server": {"shards": 2, "mode": "bounded", "max_staleness": 2},
    },
}


def model_settings(model: str) -> dict:
    """--model's settings over digits_mlp.yaml's model section."""
    from rayline.config import load_config

    if model == "mlp":
        return {}
    return load_config(REPO / "pipelines" / "digits.yaml").model.model_dump(exclude_defaults=True)


def config(root: Path, name: str, train: dict, epochs: int, model: dict | None = None):
    """pipelines/digits_mlp.yaml on the benchmark's data, with `train` and `model` settings over it."""
    from rayline.config import load_config

    overrides = [
        f"data.source={root / 'digits.parquet'}",
        f"storage.root={root / 'store'}",
        f"storage.run_name={''.join(c if c.isalnum() else '-' for c in name)}",
        f"train.epochs={epochs}",
        "train.early_stopping=null",
        "train.baseline=false",
        "train.cpus_per_worker=1",
    ]
    overrides += [f"train.{key}={json.dumps(value)}" for key, value in train.items()]
    return load_config(REPO / "pipelines" / "digits_mlp.yaml", overrides + model_overrides(model or {}))


def model_overrides(model: dict) -> list[str]:
    """--set style overrides of digits_mlp.yaml's model section."""
    return [f"model.{key}={json.dumps(value)}" for key, value in model.items()]


def measure(cfg) -> dict:
    from rayline.pipeline import train_and_register

    epochs: list[dict] = []
    started = time.perf_counter()
    report = train_and_register(cfg, on_epoch=epochs.append, log=lambda _: None)
    wall = time.perf_counter() - started
    train_s = sum(m["epoch_time_s"] for m in epochs)
    if cfg.train.strategy == "parameter_server":
        updates = epochs[-1]["ps_version"]
    else:
        updates = len(epochs) * steps_per_epoch(report.num_rows["train"], cfg)
    last = epochs[-1]
    result = {
        "updates": updates,
        "updates_per_s": updates / train_s,
        "samples_per_s_median": sorted(m["samples_per_s"] for m in epochs)[len(epochs) // 2],
        "train_s": train_s,
        "fit_wall_s": wall,
        "test_accuracy": report.test_metrics["test_accuracy"],
        "epochs": [
            {k: m[k] for k in ("epoch", "train_loss", "val_accuracy", "samples_per_s", "epoch_time_s") if k in m}
            for m in epochs
        ],
    }
    if "ps_staleness_counts" in last:
        result["staleness_histogram"] = dict(enumerate(last["ps_staleness_counts"]))
        result["staleness_mean"] = last["ps_staleness_mean"]
        result["refused"] = last["ps_refused"]
        result["applied"] = last["ps_applied"]
        result["pushes_by_worker"] = last["ps_pushes_by_worker"]
    return result


def steps_per_epoch(train_rows: int, cfg) -> int:
    """ddp: every replica steps once per batch of its equal share; the global model moves once per step."""
    return -(-(train_rows // cfg.train.num_workers) // cfg.train.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--copies", type=int, default=8, help="digits tiled this many times (epochs of seconds)")
    parser.add_argument("--rounds", type=int, default=2, help="each run this many times, order reversed each round")
    parser.add_argument("--straggler", default=STRAGGLER, help="RANK:FACTOR, or '' for none")
    parser.add_argument("--part", choices=("straggler", "compression"), default="straggler")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {list(RUNS)}")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="straggler part: the model the workers train")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/optim_bench[_cnn|_compression].json")
    args = parser.parse_args()
    results = REPO / "benchmarks" / "results"
    default_name = "optim_bench.json" if args.model == "mlp" else f"optim_bench_{args.model}.json"
    out_path = Path(
        args.out or results / (default_name if args.part == "straggler" else "optim_bench_compression.json")
    )
    model = model_settings(args.model)
    # Before Ray starts: its workers inherit it. Compression is measured with every worker at full speed.
    straggler = straggler_sleep(args.straggler, model) if args.part == "straggler" and args.straggler else None
    os.environ["RAYLINE_BENCH_STRAGGLER"] = "" if straggler is None else f"{straggler['rank']}:{straggler['sleep_s']}"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray
    from train_bench import write_tiled_digits

    root = Path(tempfile.mkdtemp(prefix="optim-bench-"))
    rows = write_tiled_digits(root / "digits.parquet", args.copies)
    ray.init(address="local", num_cpus=4, include_dashboard=True, logging_level=logging.WARNING, log_to_driver=False)
    if args.part == "compression":
        from optim_compression import run_compression

        try:
            out = {**run_compression(root, args.epochs, args.rounds), "rows": rows, "cpus": os.cpu_count()}
        finally:
            ray.shutdown()
            shutil.rmtree(root, ignore_errors=True)
        out_path.write_text(json.dumps(out, indent=2, default=str))
        print(json.dumps(out["targets"], indent=1), f"\nwrote {out_path}")
        return
    runs = [name for name in RUNS if name in args.runs.split(",")]
    rounds: list[dict[str, dict]] = []
    try:
        for index in range(args.rounds):
            names = runs if index % 2 == 0 else list(reversed(runs))
            rounds.append({})
            for name in names:
                load_before = os.getloadavg()[0]
                cfg = config(root, f"{name} r{index}", RUNS[name], args.epochs, model)
                r = rounds[-1][name] = {**measure(cfg), "load_1m_before": load_before}
                print(
                    f"round {index + 1} {name:18s} {r['updates_per_s']:7.1f} updates/s  "
                    f"{r['samples_per_s_median']:8.0f} samples/s  test accuracy {r['test_accuracy']:.4f}  "
                    f"staleness {r.get('staleness_histogram', '-')}  pushes by worker {r.get('pushes_by_worker', '-')}",
                    flush=True,
                )
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "setup": {
            "pipeline": "pipelines/digits_mlp.yaml (AdamW lr 0.003, batch 32)",
            "model": MODELS[args.model],
            "rows": rows,
            "workers": 2,
            "shards": 2,
            "epochs": args.epochs,
            "straggler": straggler or "",
            "cluster": "ray.init(num_cpus=4), cpus_per_worker 1",
            "cpus": os.cpu_count(),
        },
        "median": {name: medians([r[name] for r in rounds]) for name in runs},
        "rounds": rounds,
    }
    out_path.write_text(json.dumps(out, indent=2, default=str))
    for name, m in out["median"].items():
        print(f"median {name:18s} {m['updates_per_s']:7.1f} updates/s  test accuracy {m['test_accuracy']:.4f}")
    print(f"wrote {out_path}")


def straggler_sleep(spec: str, model: dict, batch: int = 32, steps: int = 300) -> dict:
    """RANK:FACTOR as the hook's RANK:SECONDS: (FACTOR - 1) times the median forward-backward time of the
    benchmark's model (digits_mlp.yaml's with `model` over it, a batch of 32, one thread, no strategy)."""
    import torch

    from rayline.config import load_config
    from rayline.models import build_model

    rank, factor = spec.split(":")
    torch.set_num_threads(1)
    model_cfg = load_config(REPO / "pipelines" / "digits_mlp.yaml", model_overrides(model)).model
    network = build_model(model_cfg, num_inputs=64, num_outputs=10)
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        network.zero_grad()
        torch.nn.functional.cross_entropy(network(x), y).backward()
        times.append(time.perf_counter() - began)
    fb_s = statistics.median(times[steps // 5 :])
    sleep_s = (float(factor) - 1) * fb_s
    return {"rank": int(rank), "factor": float(factor), "forward_backward_s": fb_s, "sleep_s": sleep_s}


def medians(runs: list[dict]) -> dict[str, float]:
    keys = ("updates_per_s", "samples_per_s_median", "test_accuracy", "fit_wall_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "spread": {k: [r[k] for r in runs] for k in keys}
    }


if __name__ == "__main__":
    main()
