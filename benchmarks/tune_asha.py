"""ASHA + Optuna (TPE) against full-budget random search, with the shipped pipeline's settings, over seeds.

    .venv/bin/python benchmarks/tune_asha.py                      # 3 seeds; writes benchmarks/results/tune_asha.json
    .venv/bin/python benchmarks/tune_asha.py --seeds 1 --num-samples 4 --max-t 2 --overhead-trials 4   # smoke

Both searches tune the digits CNN of pipelines/digits_tune.yaml over tune/digits.yaml, as `rayline tune`
does, on one embedded Ray cluster:

  a  ASHA + Optuna   the pipeline as shipped: TPE (seeded by tune.seed, random start-up trials as
                     rayline.tune.driver.random_startup_trials decides) and its ASHA settings
                     (max_t, grace_period, reduction_factor from the YAML, nothing harsher)
  b  random, FIFO    Tune's random search (BasicVariantGenerator) with every trial run to max_t

Same trial count (12 by default) and max_t. Each seed s sets tune.seed=s and data.split.seed=s (a new
train/validation/test split), and the order of the two searches alternates from seed to seed. Each
search's winner (rayline.tune.run_search's best checkpoint, as `rayline tune` registers it) is scored on
the test split with rayline.pipeline.score_split, the function the pipeline's own assessment uses.

Reported per search and seed: wall time of run_search (data preparation, done once per seed, is reported
beside it), epochs trained, trials stopped early, the winner's validation and test metrics, each trial's
start-up (Tune's trial start to its first training step, see tune_timing.py) and the load average. Then
medians over seeds, and targets: the median of (a wall / b wall) at most 0.5 with a's median test accuracy
at most 0.5 percentage points below b's, and the median trial start-up at most 5 s. Last, a Tune overhead
measurement in the style of Ray's release tests (tune_overhead.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from tune_timing import load_average, spread, trial_timings

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "digits_tune.yaml"
SEARCHES = {
    "asha_optuna": ["tune.searcher=optuna", "tune.scheduler.kind=asha"],
    "random_fifo": ["tune.searcher=random", "tune.scheduler.kind=fifo"],
}
WALL_RATIO_AT_MOST = 0.5
ACCURACY_GAP_PP_AT_MOST = 0.5
STARTUP_S_AT_MOST = 5.0
SIDES = ("a_asha_optuna", "b_random_fifo")


def search_config(search: str, seed: int, args: argparse.Namespace, root: Path):
    """The shipped pipeline with only the search kind, the seeds, the trial count and max_t set. ASHA's
    grace_period is lowered only when a shortened run's max_t is below it (a config the schema refuses)."""
    from rayline.config import load_config

    shipped = load_config(PIPELINE).tune.scheduler
    overrides = [
        f"storage.root={root}",
        f"storage.run_name=seed{seed}-{search}",
        f"tune.num_samples={args.num_samples}",
        f"tune.scheduler.max_t={args.max_t}",
        f"tune.seed={seed}",
        f"data.split.seed={seed}",
        *SEARCHES[search],
    ]
    if shipped.grace_period > args.max_t:
        overrides.append(f"tune.scheduler.grace_period={args.max_t}")
    return load_config(PIPELINE, overrides)


def prepare(cfg):
    """The data of one seed, prepared as rayline.pipeline.search_and_register prepares it."""
    from rayline.data import prepare_datasets
    from rayline.pipeline import preflight, trials_take_inputs
    from rayline.tune.space import load_search_space

    cfg = preflight(cfg)
    params = load_search_space(cfg.tune.search_space, cfg)
    return prepare_datasets(cfg.data, storage_root=cfg.storage.root, check=trials_take_inputs(cfg, params))


def with_data(cfg, data):
    """A search's config after its data is prepared, as search_and_register passes it to run_search."""
    from rayline.pipeline import fit_batch_to_data, preflight

    cfg = preflight(cfg).model_copy(update={"data": data.data_cfg})
    return fit_batch_to_data(cfg, data, print)


def run_one(search: str, cfg, data, verbose: bool) -> dict[str, Any]:
    from ray import tune

    from rayline.pipeline import held_out_split, score_split
    from rayline.tune import run_search
    from rayline.tune.report import collect_trials, write_report

    log = (lambda line: print(f"[{search}] {line}", flush=True)) if verbose else (lambda line: None)
    load_before = load_average()
    started = time.perf_counter()
    outcome = run_search(cfg, data, log=log, verbose=verbose)
    wall_s = time.perf_counter() - started
    load_after = load_average()
    results = tune.ResultGrid(tune.ExperimentAnalysis(str(outcome.experiment_dir)))
    write_report(results, outcome.experiment_dir)
    trials = collect_trials(results, cfg.tune.metric, cfg.tune.mode, cfg.tune.scheduler.max_t)
    timings = trial_timings(outcome.experiment_dir)
    scored_at = time.perf_counter()
    split = held_out_split(data)
    test = score_split(outcome.best_checkpoint, data, split).named("test")
    return {
        "searcher": cfg.tune.searcher,
        "scheduler": cfg.tune.scheduler.model_dump() if cfg.tune.scheduler.kind == "asha" else {"kind": "fifo"},
        "trials": len(trials),
        "trials_errored": sum(t.status != "OK" for t in trials),
        "epochs_trained": sum(t.epochs for t in trials),
        "trials_stopped_early": sum(t.stopped_early for t in trials),
        "wall_time_s": round(wall_s, 1),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "winner": {
            "trial_id": outcome.best_trial_id,
            "params": outcome.best_params,
            "checkpoint": str(outcome.best_checkpoint),
            f"best_{cfg.tune.metric}": outcome.best_metrics.get(cfg.tune.metric),
            "scored_split": split,
            "test_metrics": test,
            "scoring_s": round(time.perf_counter() - scored_at, 2),
        },
        "trial_startup_s": spread([t["startup_s"] for t in timings], 2),
        # Where the trials' time went: start-up is paid once per trial whatever the scheduler does.
        "trial_startup_s_sum": round(sum(t["startup_s"] or 0.0 for t in timings), 1),
        "trial_training_s_sum": round(sum(t["training_s"] for t in timings), 1),
        "per_trial": timings,
        "report": str(outcome.experiment_dir / "trials.txt"),
    }


def run_seed(seed: int, index: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    order = list(SEARCHES) if index % 2 == 0 else list(reversed(SEARCHES))
    started = time.perf_counter()
    data = prepare(search_config(order[0], seed, args, root))
    prepared_s = time.perf_counter() - started
    print(f"seed {seed}: data {data.num_rows} prepared in {prepared_s:.1f} s; order {order}", flush=True)
    runs = {}
    for search in order:
        cfg = with_data(search_config(search, seed, args, root), data)
        runs[search] = run_one(search, cfg, data, args.verbose)
        r = runs[search]
        print(
            f"seed {seed} {search}: wall {r['wall_time_s']} s, {r['epochs_trained']} epochs, test accuracy "
            f"{r['winner']['test_metrics'].get('test_accuracy', float('nan')):.4f}, median start-up "
            f"{r['trial_startup_s']['median']} s, load {r['load_average_after'][0]}",
            flush=True,
        )
    a, b = runs["asha_optuna"], runs["random_fifo"]
    return {
        "seed": seed,
        "tune_seed": seed,
        "data_split_seed": seed,
        "order": order,
        "data_rows": data.num_rows,
        "data_preparation_s": round(prepared_s, 1),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "a_asha_optuna": a,
        "b_random_fifo": b,
        "wall_ratio_a_over_b": round(a["wall_time_s"] / b["wall_time_s"], 3),
        "epochs_ratio_a_over_b": round(a["epochs_trained"] / b["epochs_trained"], 3),
        "test_accuracy_gap_pp_b_minus_a": round(100 * (test_accuracy(b) - test_accuracy(a)), 2),
    }


def test_accuracy(run: dict[str, Any]) -> float:
    return run["winner"]["test_metrics"]["test_accuracy"]


def summarize(seeds: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Medians over seeds (with their spread) and the targets, each marked met or not."""

    def over(side: str, pick) -> dict:
        return spread([pick(s[side]) for s in seeds], 4)

    medians = {
        side: {
            "wall_time_s": over(side, lambda r: r["wall_time_s"]),
            "epochs_trained": over(side, lambda r: r["epochs_trained"]),
            "test_accuracy": over(side, test_accuracy),
            "trial_startup_s_all_trials": spread([t["startup_s"] for s in seeds for t in s[side]["per_trial"]], 2),
        }
        for side in SIDES
    }
    medians["wall_ratio_a_over_b"] = spread([s["wall_ratio_a_over_b"] for s in seeds])
    medians["epochs_ratio_a_over_b"] = spread([s["epochs_ratio_a_over_b"] for s in seeds])
    medians["load_average_1m"] = spread([s[side]["load_average_after"][0] for s in seeds for side in SIDES], 2)
    startups = [t["startup_s"] for s in seeds for side in SIDES for t in s[side]["per_trial"]]
    medians["trial_startup_s_all_trials"] = spread(startups, 2)

    ratio = medians["wall_ratio_a_over_b"]["median"]
    gap = round(
        100
        * (medians["b_random_fifo"]["test_accuracy"]["median"] - medians["a_asha_optuna"]["test_accuracy"]["median"]),
        2,
    )
    startup = medians["trial_startup_s_all_trials"]["median"]
    targets = {
        "wall_ratio_at_most": {"target": WALL_RATIO_AT_MOST, "value": ratio, "met": ratio <= WALL_RATIO_AT_MOST},
        "test_accuracy_gap_pp_at_most": {
            "target": ACCURACY_GAP_PP_AT_MOST,
            "value": gap,
            "note": "median test accuracy of b minus that of a, in percentage points",
            "met": gap <= ACCURACY_GAP_PP_AT_MOST,
        },
        "median_trial_startup_s_at_most": {
            "target": STARTUP_S_AT_MOST,
            "value": startup,
            "met": startup is not None and startup <= STARTUP_S_AT_MOST,
        },
    }
    targets["wall_ratio_at_equal_accuracy_met"] = (
        targets["wall_ratio_at_most"]["met"] and targets["test_accuracy_gap_pp_at_most"]["met"]
    )
    return medians, targets


def environment() -> dict[str, Any]:
    import optuna
    import ray
    import torch

    return {
        "cpus": os.cpu_count(),
        "ray_cluster_cpus": ray.cluster_resources().get("CPU"),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (0, 1, ... N-1); default 3")
    parser.add_argument("--num-samples", "--trials", type=int, default=12, help="trials per search; default 12")
    parser.add_argument("--max-t", type=int, default=None, help="epochs per trial at most; default: the pipeline's")
    parser.add_argument("--overhead-trials", type=int, default=8, help="trials of the overhead test; 0 skips it")
    parser.add_argument("--verbose", action="store_true", help="print every trial event")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "tune_asha.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from rayline.config import load_config
    from rayline.data import write_digits
    from rayline.runtime import connect, disconnect

    os.chdir(REPO)  # the pipeline's relative paths (data/digits.parquet, tune/digits.yaml) start here
    shipped = load_config(PIPELINE)
    args.max_t = args.max_t or shipped.tune.scheduler.max_t
    root = REPO / "benchmarks" / "results" / "tune_asha_runs"
    shutil.rmtree(root, ignore_errors=True)
    if not (REPO / "data" / "digits.parquet").exists():
        write_digits(str(REPO / "data" / "digits.parquet"))
    began = time.perf_counter()
    connect(verbose=args.verbose)
    try:
        env = environment()
        seeds = [run_seed(seed, i, args, root) for i, seed in enumerate(range(args.seeds))]
        overhead = None
        if args.overhead_trials > 0:
            import tune_overhead

            overhead = tune_overhead.measure(args.overhead_trials, root / "overhead")
    finally:
        disconnect()
    medians, targets = summarize(seeds)
    summary = {
        "benchmark": "tune_asha",
        "pipeline": str(PIPELINE.relative_to(REPO)),
        "search_space": shipped.tune.search_space,
        "settings": {
            "num_samples": args.num_samples,
            "max_t": args.max_t,
            "shipped_scheduler": shipped.tune.scheduler.model_dump(),
            "seeds": list(range(args.seeds)),
            "a": "tune.searcher=optuna (TPE), tune.scheduler.kind=asha as shipped",
            "b": "tune.searcher=random (BasicVariantGenerator), tune.scheduler.kind=fifo: every trial to max_t",
            "wall_time": "rayline.tune.run_search alone; data preparation once per seed, reported beside it",
            "test_scoring": "rayline.pipeline.score_split on the winner's best checkpoint (held-out test split)",
            "trial_startup": "Tune's Trial.run_metadata.start_time (trial RUNNING) to epoch 0's epoch_started_at",
        },
        "environment": env,
        "total_wall_time_s": round(time.perf_counter() - began, 1),
        "seeds": seeds,
        "medians": medians,
        "targets": targets,
        "tune_overhead": overhead,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"medians": medians, "targets": targets}, indent=2))
    if overhead:
        shown = {k: v for k, v in overhead["rayline"].items() if k != "per_trial"}
        print(json.dumps({"tune_overhead": {**overhead, "rayline": shown}}, indent=2))


if __name__ == "__main__":
    main()
