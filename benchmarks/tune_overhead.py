"""Tune overhead in the style of Ray's own scalability release tests: many short trials, wall time against
the ideal (release/tune_tests/scalability_tests, e.g. test_bookkeeping_overhead.py: 10,000 one-second trials
on 16 CPUs, ideal 10000/16 = 625 s, accepted below 800 s, a ratio of 1.28).

    .venv/bin/python benchmarks/tune_overhead.py          # writes benchmarks/results/tune_overhead.json
    .venv/bin/python benchmarks/tune_overhead.py --trials 4

Two workloads on one embedded Ray cluster, the same number of trials and the same concurrency:

  rayline     N trials of the digits MLP (pipelines/digits_mlp.yaml), one epoch each, through
              rayline.tune.run_search (random search, FIFO). Each trial starts a TorchTrainer with its
              own worker group, as every rayline search does. Ideal = sum of the trials' training
              time (epoch_time_s) / max concurrent trials; the ratio wall / ideal is every overhead
              together (Tune + Train start-up + checkpointing). wall / (sum of Tune's trial time /
              concurrency) leaves the trials' own start-up in the trial time.
  ray tune    Ray's release-test trainable (ray.tune.utils.release_test_util.function_trainable, 1 s
              per trial) through a plain Tuner, with actor reuse off (rayline's setting) and on (the
              release test's setting). Ideal = N * 1 s / concurrency: what Tune alone costs here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tune_timing import load_average, spread, trial_timings

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "digits_mlp.yaml"
RAY_TRIAL_LENGTH_S = 1
SEARCH_SPACE = "# the learning rate only: the workload, not the search, is measured here\n"
SEARCH_SPACE += "train.optimizer.lr: {loguniform: [0.001, 0.01]}\n"


def rayline_config(trials: int, root: Path):
    from rayline.config import load_config

    space = root / "overhead_space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(SEARCH_SPACE)
    overrides = [
        f"storage.root={root}",
        "storage.run_name=overhead-rayline",
        f"tune.search_space={space}",
        f"tune.num_samples={trials}",
        "tune.searcher=random",
        "tune.seed=0",
        "tune.scheduler.kind=fifo",
        "tune.scheduler.max_t=1",
        "tune.scheduler.grace_period=1",
        # digits_tune.yaml's worker size, so that as many trials run at once as in a digits search
        "train.cpus_per_worker=0.25",
    ]
    return load_config(PIPELINE, overrides)


def run_rayline(trials: int, root: Path, log=print) -> dict[str, Any]:
    from rayline.data import prepare_datasets
    from rayline.tune import run_search
    from rayline.tune.plan import cluster_resources, plan_trials

    cfg = rayline_config(trials, root)
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.root)
    cfg = cfg.model_copy(update={"data": data.data_cfg})
    plan = plan_trials(cfg, *cluster_resources())
    load_before = load_average()
    started = time.perf_counter()
    outcome = run_search(cfg, data, log=lambda line: log(f"[overhead rayline] {line}"))
    wall_s = time.perf_counter() - started
    rows = trial_timings(outcome.experiment_dir)
    concurrency = plan.max_concurrent_trials
    training = sum(r["training_s"] for r in rows)
    tune_time = sum(r["tune_time_total_s"] or 0.0 for r in rows)
    ideal = training / concurrency
    return {
        "workload": f"digits MLP ({PIPELINE.relative_to(REPO)}), 1 epoch per trial, run_search, random + FIFO",
        "trials": len(rows),
        "max_concurrent_trials": concurrency,
        "cpus_per_trial": plan.cpus_per_trial,
        "wall_s": round(wall_s, 2),
        "training_s_sum": round(training, 2),
        "tune_trial_time_s_sum": round(tune_time, 2),
        "ideal_s": round(ideal, 2),
        "ratio_wall_over_ideal": round(wall_s / ideal, 2),
        "ratio_wall_over_tune_trial_time": round(wall_s / (tune_time / concurrency), 2) if tune_time else None,
        "startup_s": spread([r["startup_s"] for r in rows], 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "per_trial": rows,
    }


def run_ray_reference(trials: int, concurrency: int, cpus: float, root: Path, reuse_actors: bool) -> dict[str, Any]:
    from ray import tune
    from ray.tune.utils.release_test_util import function_trainable

    # The config timed_tune_run builds for results_per_second=1, trial_length_s=1, no checkpoints.
    config = {
        "score": tune.uniform(0.0, 1.0),
        "num_iters": RAY_TRIAL_LENGTH_S,
        "sleep_time": 1.0,
        "checkpoint_iters": -1,
        "checkpoint_size_b": 0,
        "checkpoint_num_files": 1,
    }
    tuner = tune.Tuner(
        tune.with_resources(function_trainable, {"cpu": cpus}),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=concurrency, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(
            name=f"overhead-ray-reuse-{reuse_actors}".lower(), storage_path=str(root / "tune"), verbose=0
        ),
    )
    load_before = load_average()
    started = time.perf_counter()
    results = tuner.fit()
    wall_s = time.perf_counter() - started
    ideal = trials * RAY_TRIAL_LENGTH_S / concurrency
    return {
        "workload": f"ray.tune.utils.release_test_util.function_trainable, {RAY_TRIAL_LENGTH_S} s per trial",
        "reuse_actors": reuse_actors,
        "trials": len(results),
        "errors": results.num_errors,
        "max_concurrent_trials": concurrency,
        "cpus_per_trial": cpus,
        "wall_s": round(wall_s, 2),
        "ideal_s": round(ideal, 2),
        "ratio_wall_over_ideal": round(wall_s / ideal, 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def measure(trials: int, root: Path, log=print) -> dict[str, Any]:
    """Both workloads, rayline first; the Ray reference gets rayline's concurrency and CPUs per trial."""
    rayline = run_rayline(trials, root, log)
    concurrency, cpus = rayline["max_concurrent_trials"], rayline["cpus_per_trial"]
    reference = [run_ray_reference(trials, concurrency, cpus, root, reuse) for reuse in (False, True)]
    for r in reference:
        log(f"[overhead ray tune, reuse_actors={r['reuse_actors']}] wall {r['wall_s']} s, ideal {r['ideal_s']} s")
    log(f"[overhead rayline] wall {rayline['wall_s']} s, ideal {rayline['ideal_s']} s")
    return {
        "style": "ray release/tune_tests/scalability_tests (test_bookkeeping_overhead): wall time vs ideal",
        "ray_release_test_acceptance_ratio": round(800 / 625, 2),
        "rayline": rayline,
        "ray_tune_reference": reference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "tune_overhead.json")
    args = parser.parse_args()

    import os
    import shutil

    from rayline.data import write_digits
    from rayline.runtime import connect, disconnect

    os.chdir(REPO)  # the pipeline's relative paths (data/digits.parquet) start here
    root = REPO / "benchmarks" / "results" / "tune_overhead_runs"
    shutil.rmtree(root, ignore_errors=True)
    if not (REPO / "data" / "digits.parquet").exists():
        write_digits(str(REPO / "data" / "digits.parquet"))
    connect()
    try:
        summary = {"benchmark": "tune_overhead", **measure(args.trials, root)}
    finally:
        disconnect()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary["rayline"].items() if k != "per_trial"}, indent=2))


if __name__ == "__main__":
    main()
