"""Can the cluster hold a run's workers: needs against what the nodes have, decided with no cluster."""

import pytest

from rayline.config import TrainConfig
from rayline.train.resources import Cluster, PlanError, must_wait, placement_problem, workers_that_fit

CPU_ONLY = Cluster(nodes=[{"CPU": 4.0}])


def test_a_run_that_fits_the_nodes_neither_waits_nor_fails():
    assert placement_problem(TrainConfig(num_workers=2), CPU_ONLY) is None
    assert must_wait(TrainConfig(num_workers=4), CPU_ONLY) is None


def test_gpu_workers_on_a_fixed_cpu_cluster_fail_at_once_with_needs_and_haves():
    with pytest.raises(PlanError) as err:
        must_wait(TrainConfig(num_workers=2, use_gpu=True), CPU_ONLY)
    message = str(err.value)
    assert "2 workers x 1 CPUs and 1 GPUs (2 CPUs and 2 GPUs in all)" in message
    assert "the cluster has 4 CPUs and 0 GPUs on 1 node(s)" in message
    assert "does not autoscale" in message
    assert "set train.use_gpu false" in message


def test_workers_never_span_nodes():
    # 2 nodes x 3 CPUs hold 6 CPUs, but only two 2-CPU workers (one per node)
    nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    assert workers_that_fit({"CPU": 2.0}, nodes) == 2
    with pytest.raises(PlanError, match="room for 2 such worker"):
        must_wait(TrainConfig(num_workers=3, cpus_per_worker=2.0), Cluster(nodes))


def test_an_autoscaling_cluster_makes_the_run_wait_up_to_its_timeout():
    cluster = Cluster(nodes=[{"CPU": 4.0}], autoscales=True, most={"CPU": 64.0, "GPU": 8.0})
    line = must_wait(TrainConfig(num_workers=2, use_gpu=True, start_timeout_s=120), cluster)
    assert line.startswith("waiting up to 120 s for the autoscaler to add nodes: the run needs 2 workers")
    assert "train.start_timeout_s" in line


def test_an_autoscaler_that_can_never_grow_enough_fails_at_once():
    cluster = Cluster(nodes=[{"CPU": 4.0}], autoscales=True, most={"CPU": 64.0, "GPU": 1.0})
    with pytest.raises(PlanError, match="its autoscaler can grow it to 64 CPUs and 1 GPUs at most"):
        must_wait(TrainConfig(num_workers=2, use_gpu=True), cluster)


def test_start_timeout_has_a_default_and_must_be_positive():
    assert TrainConfig().start_timeout_s == 300.0
    with pytest.raises(ValueError):
        TrainConfig(start_timeout_s=0)
