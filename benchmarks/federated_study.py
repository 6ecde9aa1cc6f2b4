"""rayline-only parts of benchmarks/federated_bench.py: FedAvg, FedProx and FedAvgM at two Dirichlet alphas over
seeds, and the accuracy cost of DP-FedAvg at two noise levels (and of its clipping alone) with their epsilon.
Each run is federated_rayline.run on the shipped digits_federated pipeline with only federated.* changed, on one
cluster."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import federated_rayline as rayline_side
from tune_timing import spread

ALGORITHMS: dict[str, dict[str, Any]] = {
    "fedavg": {"algorithm": "fedavg"},
    "fedprox": {"algorithm": "fedprox", "mu": 0.01},
    # mu 0.01 changed no prediction here; 1.0 shrinks a client's update to about 40% of FedAvg's on these clients.
    "fedprox_mu1": {"algorithm": "fedprox", "mu": 1.0},
    # Hsu et al. 2019 keep server_lr / (1 - momentum) near 1; at server_lr 1.0 and momentum 0.9 the step is 10x.
    "fedavgm": {"algorithm": "fedavgm", "server_lr": 0.1, "server_momentum": 0.9},
}
ALPHAS = (0.1, 10.0)
STUDY_CLIENTS = {"clients": 20, "clients_per_round": 0.5}
"""The shipped pipeline's 20 clients, half of them a round (100 clients cannot all get rows at alpha 0.1)."""
DP_CLIENTS = {"clients": 100, "clients_per_round": 0.2}
DP_CLIP_NORM = 0.2
"""About the median norm of a client's first update here (0.15-0.30 from the 10th to the 90th percentile)."""
DP_NOISE = (0.0, 1.0, 2.0)
"""0.0: clipping and equal weights without noise (no guarantee), to tell their cost from the noise's."""


def algorithm_study(
    root: Path, data, seeds: int, rounds: int, verbose: bool, only: list[str] | None = None
) -> dict[str, Any]:
    """Final test accuracy of each algorithm (or of those in `only`) at each alpha, per seed, with the median and
    spread over seeds."""
    chosen = {name: a for name, a in ALGORITHMS.items() if only is None or name in only}
    found: dict[str, Any] = {"settings": {**STUDY_CLIENTS, "rounds": rounds, "algorithms": chosen}, "runs": {}}
    for alpha in ALPHAS:
        for name, algorithm in chosen.items():
            runs = []
            for seed in range(seeds):
                federated = {**STUDY_CLIENTS, **algorithm, "alpha": alpha, "seed": seed, "rounds": rounds}
                runs.append(one_run(root, f"alpha{alpha}-{name}-seed{seed}", federated, data, verbose))
            accuracy = [r["test"]["test_accuracy"] for r in runs]
            found["runs"][f"alpha {alpha} {name}"] = {
                "test_accuracy": spread(accuracy, 4),
                "test_accuracy_mean": round(sum(accuracy) / len(accuracy), 4),
                "per_seed": [brief(r, seed) for seed, r in enumerate(runs)],
            }
            print(f"  alpha {alpha} {name}: test accuracy per seed {accuracy}", flush=True)
    return found


def dp_study(root: Path, data, rounds: int, verbose: bool) -> dict[str, Any]:
    """The same run without DP and with clipping plus noise at each multiplier: accuracy, its cost, epsilon."""
    base = {**DP_CLIENTS, "rounds": rounds}
    reference = one_run(root, "dp-none", base, data, verbose)
    found: dict[str, Any] = {
        "settings": {**base, "clip_norm": DP_CLIP_NORM, "noise_multipliers": list(DP_NOISE)},
        "without_dp": brief(reference, 0),
        "with_dp": [],
    }
    print(f"  dp: without, test accuracy {reference['test']['test_accuracy']}", flush=True)
    for noise in DP_NOISE:
        dp = {"clip_norm": DP_CLIP_NORM, "noise_multiplier": noise}
        run = one_run(root, f"dp-noise{noise}", {**base, "dp": dp}, data, verbose)
        cost = round(100 * (reference["test"]["test_accuracy"] - run["test"]["test_accuracy"]), 2)
        privacy = {**run["privacy"], "epsilon": finite_or_text(run["privacy"]["epsilon"])}
        found["with_dp"].append({**brief(run, 0), "dp": dp, "privacy": privacy, "accuracy_cost_pp": cost})
        print(
            f"  dp: noise {noise}, test accuracy {run['test']['test_accuracy']} (cost {cost} pt), "
            f"epsilon {run['privacy']['epsilon']:.2f} at delta {run['privacy']['delta']}",
            flush=True,
        )
    return found


def finite_or_text(value: float) -> float | str:
    """JSON has no infinity: epsilon without noise is written "inf"."""
    return value if math.isfinite(value) else "inf"


def one_run(root: Path, name: str, federated: dict[str, Any], data, verbose: bool) -> dict[str, Any]:
    cfg = rayline_side.with_data(rayline_side.bench_config(root, name, federated), data)
    return rayline_side.run(cfg, data, verbose=verbose)


def brief(run: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "test_accuracy": run["test"]["test_accuracy"],
        "final_val_accuracy": run["val_accuracy_by_round"][-1],
        "clients_heldout": run["clients_heldout"],
        "clients_clipped": run["clients_clipped"],
        "wall_time_s": run["wall_time_s"],
        "median_round_s": spread(run["round_wall_s"], 4)["median"],
    }
