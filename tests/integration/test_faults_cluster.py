"""A node of a multi-node cluster lost mid-training: every process of one `ray start` node SIGKILLed, as
when a machine loses power, while `rayline train` runs on the cluster from the head node."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusters import RayCluster, RayNode, start_cluster
from faults import command_line, crash_process_group, process_tree, wait_until
from pipelines import digits_pipeline, write_pipeline
from rayline.registry import Registry

pytestmark = pytest.mark.slow

EPOCHS = 6

# The GCS declares a node dead after this many failed health checks this far apart (Ray's defaults, 5 x 3 s,
# leave a run waiting 15 s for workers that are already gone). Each check still has Ray's 10 s timeout, so
# a node that is only slow is not declared dead.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def node_loss_pipeline(tmp_path: Path) -> Path:
    # One machine plays every node here, so a local path (storage.root under tmp_path) is storage every node shares.
    train = {"num_workers": 2, "cpus_per_worker": 1, "epochs": EPOCHS, "batch_size": 16, "max_failures": 2}
    pipeline = digits_pipeline(tmp_path, "node-loss", model={"hidden_sizes": [64]}, train=train)
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline)


def runs(node: RayNode, process_title: str) -> bool:
    """Whether one of the node's processes is a Ray actor of this title ("ray::<class>...")."""
    return any(command_line(pid).startswith(process_title) for pid in process_tree(node.process.pid))


def epochs_printed(log: Path) -> list[int]:
    """0-based epochs from the driver's progress lines ("epoch 3/6 train_loss ...")."""
    return [int(n) - 1 for n in re.findall(rf"^epoch (\d+)/{EPOCHS}\b", log.read_text(), re.MULTILINE)]


@pytest.fixture
def cluster() -> Iterator[RayCluster]:
    """A head without CPUs (it runs the driver) and three 1-CPU worker nodes."""
    cluster = start_cluster(num_cpus=0, node_env=FAST_NODE_DEATH)
    try:
        cluster.add_nodes(3, num_cpus=1)
        yield cluster
    finally:
        cluster.stop()


def test_a_node_lost_mid_training_is_survived_on_the_remaining_nodes(cluster, tmp_path):
    """Once two epochs are done, a node running a training worker is killed outright; two 1-CPU workers fit
    on the two nodes left.

    Ray pins its own helpers (Train's controller, the dataset split coordinator) to the driver's node, but
    rayline's progress queue is a CPU-less actor, which Ray places on a random node. The node lost here is
    one without it: losing the queue is a fault of its own (test_faults_train.py).
    """
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "rayline.cli", "train", str(node_loss_pipeline(tmp_path))]
    env = cluster.client_env()
    with log.open("w") as out:
        driver = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def two_epochs_done() -> bool:
            assert driver.poll() is None, f"`rayline train` exited early:\n{log.read_text()[-3000:]}"
            return len(epochs_printed(log)) >= 2

        wait_until(two_epochs_done, 900, "two epochs on the cluster")
        victims = [n for n in cluster.nodes[1:] if runs(n, "ray::RayTrainWorker") and not runs(n, "ray::_QueueActor")]
        assert victims, "no worker node runs a training worker"
        done_before = len(epochs_printed(log))
        crash_process_group(victims[0].process)
        assert driver.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            crash_process_group(driver)

    seen, output = epochs_printed(log), log.read_text()
    print(f"node lost with {done_before} epochs done; epochs reported {seen}")
    assert sorted(set(seen)) == list(range(EPOCHS)), f"an epoch is missing: {seen}"
    assert len(seen) - len(set(seen)) <= 1, f"more than the in-flight epoch was trained again: {seen}"
    assert "registered model node-loss/v1" in output, output[-3000:]
    registry = Registry(tmp_path / "store")
    registry.load(registry.resolve("node-loss", "v1"))
