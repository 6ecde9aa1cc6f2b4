"""The resource planner: how many distributed trials fit on the cluster at once, decided before Tune starts.

Each trial is a Tune actor (its driver) plus a Ray Train worker group (one placement group of
num_workers bundles). Running more trials than fit leaves the extra worker groups PENDING forever,
so the planner caps `max_concurrent_trials` at what the cluster holds, keeping a reserve for Ray Data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayline.config import PipelineConfig
from rayline.runtime import alive_nodes
from rayline.train.resources import PlanError, worker_resources, workers_that_fit

__all__ = ["Plan", "PlanError", "cluster_resources", "plan_trials"]


@dataclass(frozen=True)
class Plan:
    max_concurrent_trials: int
    trial_driver_resources: dict[str, float]
    worker_resources: dict[str, float]
    num_workers: int

    @property
    def cpus_per_trial(self) -> float:
        return self.trial_driver_resources["cpu"] + self.num_workers * self.worker_resources["CPU"]

    @property
    def gpus_per_trial(self) -> float:
        return self.num_workers * self.worker_resources.get("GPU", 0.0)

    def describe(self) -> str:
        gpus = f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
        return (
            f"{self.max_concurrent_trials} trial(s) at once, each {self.cpus_per_trial:g} CPU{gpus} "
            f"(driver {self.trial_driver_resources['cpu']:g} + {self.num_workers} workers x "
            f"{self.worker_resources['CPU']:g})"
        )


def plan_trials(cfg: PipelineConfig, total: dict[str, float], nodes: list[dict[str, float]]) -> Plan:
    """Fit trials into the cluster's totals (`ray.cluster_resources()`) and per-node resources."""
    assert cfg.tune is not None
    worker = worker_resources(cfg.train)
    driver = {"cpu": cfg.tune.trial_driver_cpus}
    plan = Plan(0, driver, worker, cfg.train.num_workers)
    check_a_worker_fits_a_node(worker, nodes)

    free_cpus = total.get("CPU", 0.0) - cfg.tune.data_reserve_cpus
    by_cpu = math.floor(free_cpus / plan.cpus_per_trial + 1e-9)
    by_gpu = math.floor(total.get("GPU", 0.0) / plan.gpus_per_trial + 1e-9) if plan.gpus_per_trial else by_cpu
    fits = min(by_cpu, by_gpu)
    if fits < 1:
        raise PlanError(
            f"the search cannot start: one trial needs {plan.cpus_per_trial:g} CPUs (trial driver "
            f"{driver['cpu']:g} + {cfg.train.num_workers} workers x {worker['CPU']:g})"
            + (f" and {plan.gpus_per_trial:g} GPUs" if plan.gpus_per_trial else "")
            + f", plus {cfg.tune.data_reserve_cpus:g} CPUs kept for Ray Data; the cluster has "
            f"{total.get('CPU', 0.0):g} CPUs and {total.get('GPU', 0.0):g} GPUs. Lower train.num_workers "
            "or train.cpus_per_worker, or add nodes."
        )
    wanted = [fits, cfg.tune.num_samples]
    if cfg.tune.max_concurrent_trials is not None:
        wanted.append(cfg.tune.max_concurrent_trials)
    return Plan(min(wanted), driver, worker, cfg.train.num_workers)


def check_a_worker_fits_a_node(worker: dict[str, float], nodes: list[dict[str, float]]) -> None:
    if workers_that_fit(worker, nodes) >= 1:
        return
    biggest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    raise PlanError(
        f"no node can hold one training worker ({worker}); the largest node has {biggest:g} CPUs "
        f"and {max((n.get('GPU', 0.0) for n in nodes), default=0.0):g} GPUs"
    )


def cluster_resources() -> tuple[dict[str, float], list[dict[str, float]]]:
    """Totals and per-node resources of the connected Ray cluster."""
    import ray

    return ray.cluster_resources(), alive_nodes()
