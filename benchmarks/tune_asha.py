"""ASHA + Optuna against full-budget random search, same trial count and max_t, in one run.

    .venv/bin/python benchmarks/tune_asha.py            # writes benchmarks/results/tune_asha.json

Both searches tune the digits CNN over tune/digits.yaml on one embedded Ray cluster. For each we
report the epochs trained (summed over trials), wall time and the best validation accuracy; the
target is (a) within 0.5 percentage points of (b)'s best accuracy with at most 40% of its epochs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(label: str, overrides: list[str], root: Path) -> dict:
    from ray import tune

    from rayline.config import load_config
    from rayline.data import prepare_datasets
    from rayline.tune import run_search
    from rayline.tune.report import collect_trials, write_report

    cfg = load_config(REPO / "pipelines" / "digits_tune.yaml", [f"storage.root={root}", *overrides])
    data = prepare_datasets(cfg.data)
    started = time.perf_counter()
    outcome = run_search(cfg, data, log=lambda line: print(f"[{label}] {line}"))
    wall_s = time.perf_counter() - started
    results = tune.ResultGrid(tune.ExperimentAnalysis(str(outcome.experiment_dir)))
    write_report(results, outcome.experiment_dir)
    trials = collect_trials(results, cfg.tune.metric, cfg.tune.mode, cfg.tune.scheduler.max_t)
    return {
        "searcher": cfg.tune.searcher,
        "scheduler": cfg.tune.scheduler.kind,
        "trials": len(trials),
        "epochs_trained": sum(t.epochs for t in trials),
        "trials_stopped_early": sum(t.stopped_early for t in trials),
        "wall_time_s": round(wall_s, 1),
        "best_val_accuracy": max(t.best for t in trials if t.best is not None),
        "best_params": outcome.best_params,
        "report": str(outcome.experiment_dir / "trials.txt"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--max-t", type=int, default=9)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "tune_asha.json"))
    args = parser.parse_args()

    from rayline.data import write_digits
    from rayline.runtime import connect, disconnect

    root = REPO / "benchmarks" / "results" / "tune_asha_runs"
    shutil.rmtree(root, ignore_errors=True)
    source = REPO / "data" / "digits.parquet"
    if not source.exists():
        write_digits(str(source))
    common = [f"tune.num_samples={args.trials}", f"tune.scheduler.max_t={args.max_t}", "tune.seed=0"]
    connect()
    try:
        asha = run_one(
            "asha+optuna",
            [
                *common,
                "tune.searcher=optuna",
                "tune.scheduler.kind=asha",
                "tune.scheduler.grace_period=1",
                "tune.scheduler.reduction_factor=3",
                "storage.run_name=asha",
            ],
            root,
        )
        full = run_one(
            "random, full budget",
            [*common, "tune.searcher=random", "tune.scheduler.kind=fifo", "storage.run_name=random"],
            root,
        )
    finally:
        disconnect()
    summary = {
        "benchmark": "tune_asha",
        "pipeline": "pipelines/digits_tune.yaml",
        "search_space": "tune/digits.yaml",
        "a_asha_optuna": asha,
        "b_random_full_budget": full,
        "epochs_ratio_a_over_b": round(asha["epochs_trained"] / full["epochs_trained"], 3),
        "wall_time_ratio_a_over_b": round(asha["wall_time_s"] / full["wall_time_s"], 3),
        "accuracy_gap_pp_b_minus_a": round(100 * (full["best_val_accuracy"] - asha["best_val_accuracy"]), 2),
        "targets": {"accuracy_gap_pp_at_most": 0.5, "epochs_ratio_at_most": 0.4},
    }
    summary["targets_met"] = summary["accuracy_gap_pp_b_minus_a"] <= 0.5 and summary["epochs_ratio_a_over_b"] <= 0.4
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
