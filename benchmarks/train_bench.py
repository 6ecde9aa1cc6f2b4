"""Training: rayline against torchrun from the command to a trained model, and every parallel strategy, in one run.

    .venv/bin/python benchmarks/train_bench.py                    # writes benchmarks/results/train_bench.json
    .venv/bin/python benchmarks/train_bench.py --skip-strategies  # the rayline/torchrun part alone

(1) rayline vs torchrun, each launched as a command with nothing started beforehand (train_launch.py):
`rayline train pipelines/digits_transformer.yaml --set ...` (its embedded Ray cluster included) against
`torchrun --standalone --nproc_per_node=2 benchmarks/torchrun_ddp.py` (a hand-written DDP loop that saves the
model's state_dict at the end), on the same Parquet file (scikit-learn's digits tiled --copies times), model,
optimizer, batch size and 2 processes. Per run: launch to the first training step, epoch 0 (time, samples/s),
steady-state samples/s (median over the epochs after the first), and the wall time from the command to a trained
model (rayline: exit 0 with a registered version, after scoring the test split and fitting its linear baseline;
torchrun: model saved, processes exited). The two alternate (order swapped every round) for --rounds pairs;
every round is listed with the 1-minute load average before and after each run, and the medians and spread.
Targets, on the medians: start-up <= 8 s; epoch 0 samples/s >= 0.8x torchrun's; end to end <= 1.2x torchrun's;
steady state >= 0.95x. The default size (digits x 24 = 43,128 rows, 15 epochs, the pipeline's own count) is
chosen so that torchrun takes about 60 s end to end on a quiet 2-core machine (about 7,000 samples/s over
30,190 training rows: ~4 s an epoch plus ~4 s of start-up); --copies and --epochs change it.

(2) Where rayline's start-up goes (train_timeline.py): the same command line once more, run in-process so that
the embedded cluster can be asked afterwards for each actor's creation events (startup_timeline.py's query),
with the phases the command's own output marks.

(3) Each strategy's pipeline on a cluster started in this process (skip with --skip-strategies): steady-state
samples/s (rows through the model per second, all replicas) and the largest per-worker peak process memory and
parameter + optimizer-state footprint, measured in the workers, on digits x --strategy-copies.

The machine's load average is recorded beside each measurement: on a shared machine the absolute numbers move
with it, the ratios (measured back to back) less so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import train_launch

REPO = Path(__file__).resolve().parents[1]
PIPELINES = {
    "ddp": "digits_transformer.yaml",
    "fsdp": "digits_transformer_fsdp.yaml",
    "tensor": "digits_transformer_tensor.yaml",
    "pipeline": "digits_transformer_pipeline.yaml",
    "hybrid fsdp+tensor": "digits_transformer_hybrid.yaml",
    "hybrid fsdp+pipeline": "digits_transformer_hybrid_pipeline.yaml",
}


def write_tiled_digits(path: Path, copies: int) -> int:
    import pandas as pd

    from rayline.data import write_digits

    single = path.with_name("digits_single.parquet")
    write_digits(str(single))
    frame = pd.read_parquet(single)
    pd.concat([frame] * copies, ignore_index=True).to_parquet(path)
    return len(frame) * copies


def load(name: str, source: Path, root: Path, epochs: int):
    from rayline.config import load_config

    return load_config(
        REPO / "pipelines" / PIPELINES[name],
        [
            f"data.source={source}",
            f"storage.root={root}",
            f"train.epochs={epochs}",
            "train.cpus_per_worker=0.5",
        ],
    )


def steady(epochs: list[dict], key: str = "samples_per_s") -> float:
    return statistics.median(m[key] for m in epochs[1:]) if len(epochs) > 1 else epochs[0][key]


def run_strategy(name: str, source: Path, root: Path, epochs: int) -> dict:
    from rayline.data import prepare_datasets
    from rayline.train.driver import fit

    cfg = load(name, source, root, epochs)
    load_before = os.getloadavg()[0]
    launched = time.time()
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.root)
    # No live progress (it polls a queue actor on this 2-core machine): the metrics come from the newest
    # checkpoint's history.
    fit(cfg, data)
    seen = train_launch.latest_history(root)
    print(f"[{name}] {[round(m['samples_per_s']) for m in seen]} samples/s per epoch", flush=True)
    return {
        "workers": cfg.train.num_workers,
        "samples_per_s": round(steady(seen), 1),
        "samples_per_cpu_s": round(steady(seen, "samples_per_cpu_s"), 1),
        "epoch_samples_per_s": [round(m["samples_per_s"], 1) for m in seen],
        "startup_s": round(seen[0]["epoch_started_at"] - launched, 2),
        "peak_memory_mb": round(max(m["peak_memory_mb"] for m in seen), 1),
        "worker_state_mb": round(seen[-1]["worker_state_mb"], 3),
        "val_accuracy": round(seen[-1]["val_accuracy"], 4),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def worker_niceness() -> int:
    return int(os.environ.get("RAY_worker_niceness", 15))  # noqa: SIM112 (Ray spells it so)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--copies", type=int, default=24, help="times the digits are repeated in the rayline/torchrun file")
    add("--epochs", type=int, default=15, help="epochs of each rayline/torchrun run; the first is warm-up")
    add("--rounds", type=int, default=3, help="rayline/torchrun pairs, the order swapped every round")
    add("--rayline-set", action="append", default=[], metavar="KEY=VALUE", help="another --set for rayline train")
    add("--timeline-epochs", type=int, default=1, help="epochs of the start-up timeline run (0: skip it)")
    add("--timeout", type=float, default=1800, help="seconds any one command may run")
    add("--skip-strategies", action="store_true", help="only the rayline/torchrun comparison and timeline")
    add("--strategy-copies", type=int, default=4, help="times the digits are repeated for the per-strategy runs")
    add("--strategy-epochs", type=int, default=5, help="epochs per strategy run; the first is warm-up")
    add("--strategies", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    add("--output", default=str(REPO / "benchmarks" / "results" / "train_bench.json"))
    return parser.parse_args()


def compare_commands(args: argparse.Namespace, work: Path) -> tuple[dict, dict | None]:
    """(1) and (2): the rayline/torchrun rounds with their summary, and the start-up timeline."""
    source = work / "digits_tiled.parquet"
    rows = write_tiled_digits(source, args.copies)
    job = train_launch.Job(
        pipeline=REPO / "pipelines" / PIPELINES["ddp"],
        source=source,
        epochs=args.epochs,
        rayline_sets=args.rayline_set,
        torchrun_niceness=worker_niceness(),
        timeout_s=args.timeout,
    )
    rounds = [train_launch.run_pair(job, work / f"round-{r + 1}", r) for r in range(args.rounds)]
    timeline = None
    if args.timeline_epochs > 0:
        timeline_job = dataclasses.replace(job, epochs=args.timeline_epochs)
        timeline = train_launch.run_timeline(timeline_job, work / "timeline")
        print(f"[timeline] {json.dumps(timeline['startup_breakdown'])}", flush=True)
    root = "<run dir>/rayline-store"
    comparison = {
        "data": {"source": f"digits x {args.copies}", "rows": rows, "epochs": args.epochs},
        "configuration": {
            "rayline": " ".join(job.rayline_command(Path(root))).replace(str(REPO) + "/", ""),
            "torchrun": " ".join(job.torchrun_command(Path("out.json"), Path("model.pt"))).replace(str(REPO) + "/", ""),
            "torchrun_environment": {"OMP_NUM_THREADS": "1"},
            "notes": (
                "Same file, model, AdamW settings, the pipeline's batch size per process, 2 processes. "
                "epoch_time_s: rayline's includes its per-epoch validation pass and checkpoint, torchrun's (no "
                "validation) is training only; the epoch-0 target compares training samples/s. End to end, rayline "
                "also scores the test split, fits its linear baseline and registers the version; torchrun saves its "
                "state_dict."
            ),
        },
        **train_launch.summarise(rounds),
        "rounds": rounds,
    }
    return comparison, timeline


def run_strategies(args: argparse.Namespace, work: Path) -> dict:
    """(3): every strategy's pipeline on a cluster started here."""
    import ray

    from rayline.runtime import connect

    work.mkdir(parents=True, exist_ok=True)
    source = work / "digits_tiled_for_strategies.parquet"
    rows = write_tiled_digits(source, args.strategy_copies)
    cluster_started = time.perf_counter()
    connect()
    cluster_start_s = time.perf_counter() - cluster_started
    try:
        runs = {
            name: run_strategy(name, source, work / name.replace(" ", "-"), args.strategy_epochs)
            for name in args.strategies
        }
    finally:
        ray.shutdown()
    for name, figures in runs.items():
        print(f"{name:22s} {figures['samples_per_s']:8.0f} samples/s  peak {figures['peak_memory_mb']:6.0f} MB  "
              f"state {figures['worker_state_mb']:.3f} MB  startup {figures['startup_s']:.1f} s")  # fmt: skip
    data = {"source": f"digits x {args.strategy_copies}", "rows": rows, "epochs": args.strategy_epochs}
    return {"data": data, "cluster_start_s": round(cluster_start_s, 2), "runs": runs}


def main() -> None:
    args = parse_args()
    import ray
    import torch

    work = REPO / "benchmarks" / "results" / "train_bench_runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    began, load_at_start = time.time(), os.getloadavg()[0]
    comparison, timeline = compare_commands(args, work)
    strategies = None if args.skip_strategies else run_strategies(args, work / "strategies")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "worker_niceness": worker_niceness(),
            "load_avg_1m_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
        },
        "wall_s": round(time.time() - began, 1),
        "rayline_vs_torchrun": comparison,
        "startup_timeline": timeline,
        "strategies": strategies if strategies is not None else "skipped (--skip-strategies)",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for side in ("rayline", "torchrun"):
        medians = {k: v["median"] for k, v in comparison[side].items() if isinstance(v, dict) and "median" in v}
        print(f"{side} medians: {json.dumps(medians)}")
    print(json.dumps(comparison["targets"], indent=2))
    print(f"wrote {args.output} (per-run logs under {work})")


if __name__ == "__main__":
    main()
