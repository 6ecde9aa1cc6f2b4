"""Can the cluster place a run's workers? Decided on the driver before any data is read.

A Ray Train worker group is one placement group of num_workers equal bundles; a group the cluster can never
hold waits forever, silently (Ray Train retries its start without end). So a fixed cluster that cannot hold it
fails at once, and an autoscaling one gets train.start_timeout_s to grow. The Tune planner (tune/plan.py)
sizes its trials with the same functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from rayline.config import TrainConfig
from rayline.errors import RaylineError
from rayline.runtime import alive_nodes

HOW_TO_FIT = "Lower train.num_workers or train.cpus_per_worker, set train.use_gpu false, or add nodes."


class PlanError(RaylineError, ValueError):
    """The run (or one trial of a search) cannot be placed on this cluster."""


@dataclass(frozen=True)
class Cluster:
    nodes: list[dict[str, float]]
    """Resources of each alive node."""
    autoscales: bool = False
    """Whether an autoscaler may add nodes."""
    most: dict[str, float] | None = None
    """The most of each resource the autoscaler may grow the cluster to, where its config says."""

    @property
    def total(self) -> dict[str, float]:
        return {name: sum(n.get(name, 0.0) for n in self.nodes) for name in ("CPU", "GPU")}


def worker_resources(train: TrainConfig) -> dict[str, float]:
    """What each training worker reserves (the Train V2 controller itself reserves nothing)."""
    return {"CPU": train.cpus_per_worker, **({"GPU": 1.0} if train.use_gpu else {})}


def describe(resources: dict[str, float]) -> str:
    """ "4 CPUs and 0 GPUs"."""
    return f"{resources.get('CPU', 0.0):g} CPUs and {resources.get('GPU', 0.0):g} GPUs"


def workers_that_fit(worker: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many workers of this size the nodes hold together (a worker never spans two nodes)."""
    per_node = (
        min(math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in worker.items() if amount > 0)
        for node in nodes
    )
    return sum(per_node)


def placement_problem(train: TrainConfig, cluster: Cluster) -> str | None:
    """What the run needs and what the cluster has, when its nodes cannot hold the worker group; else None."""
    worker = worker_resources(train)
    held = workers_that_fit(worker, cluster.nodes)
    if held >= train.num_workers:
        return None
    needs = {name: amount * train.num_workers for name, amount in worker.items()}
    largest = max(cluster.nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    return (
        f"the run needs {train.num_workers} workers x {describe(worker)} ({describe(needs)} in all), but the "
        f"cluster has {describe(cluster.total)} on {len(cluster.nodes)} node(s) (largest: {describe(largest)}), "
        f"room for {held} such worker(s)"
    )


def must_wait(train: TrainConfig, cluster: Cluster) -> str | None:
    """None when the cluster holds the run now; a line saying what the run waits for when an autoscaler may add
    the nodes it needs. Raises PlanError when no cluster this one can become holds it."""
    problem = placement_problem(train, cluster)
    if problem is None:
        return None
    if not cluster.autoscales:
        raise PlanError(f"train cannot start: {problem}, and it does not autoscale. {HOW_TO_FIT}")
    needs = {name: amount * train.num_workers for name, amount in worker_resources(train).items()}
    if cluster.most is not None and any(amount > cluster.most.get(name, 0.0) for name, amount in needs.items()):
        raise PlanError(
            f"train cannot start: {problem}, and its autoscaler can grow it to {describe(cluster.most)} at most. "
            + HOW_TO_FIT
        )
    return (
        f"waiting up to {train.start_timeout_s:g} s for the autoscaler to add nodes: {problem} (train.start_timeout_s)"
    )


def start_timed_out(train: TrainConfig, cluster: Cluster) -> PlanError:
    """The error of a run whose workers were not placed within train.start_timeout_s."""
    problem = placement_problem(train, cluster) or "its workers could not be placed"
    return PlanError(
        f"train did not start within train.start_timeout_s={train.start_timeout_s:g} s: {problem}. {HOW_TO_FIT}"
    )


def cluster_state() -> Cluster:
    """The connected cluster's alive nodes, and whether (and how far) an autoscaler may grow it."""
    autoscales, most = autoscaling()
    return Cluster(alive_nodes(), autoscales, most)


def autoscaling() -> tuple[bool, dict[str, float] | None]:
    """(whether the cluster autoscales, the most resources its config allows or None).

    Autoscaler v2 publishes its cluster config (node groups with min/max counts) in the GCS, which is what Ray
    Data and Ray Train read too. Autoscaler v1 only publishes a status report: its monitor on a cluster started
    by hand mirrors each node as a read-only type named node_<id>; any other node type comes from a launcher
    config, so that cluster can grow.
    """
    import ray._private.state as ray_state

    try:
        config = ray_state.state.get_cluster_config()
        if config is not None and config.node_group_configs:
            grows = any(
                g.max_count == -1 or g.max_count > g.min_count
                for g in config.node_group_configs
                if g.resources and g.max_count != 0
            )
            most = ray_state.state.get_max_resources_from_cluster_config()
            return grows, None if most is None else {k: float(v) for k, v in most.items()}
        return v1_autoscales(), None
    except Exception:  # a private API: when it cannot tell, wait (bounded) rather than refuse a valid run
        return True, None


def v1_autoscales() -> bool:
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    if not raw:
        return False
    report = json.loads(raw).get("autoscaler_report") or {}
    node_types = [*report.get("active_nodes", {}), *report.get("pending_launches", {})]
    return any(not str(t).startswith("node_") for t in node_types)


def check_cluster_fits(train: TrainConfig, log) -> bool:
    """Refuse a run the connected cluster can never hold (PlanError); True when it must wait for an autoscaler
    to add nodes (printed), False when it fits now or no cluster is connected yet."""
    import ray

    if not ray.is_initialized():
        return False
    line = must_wait(train, cluster_state())
    if line:
        log(line)
    return line is not None
