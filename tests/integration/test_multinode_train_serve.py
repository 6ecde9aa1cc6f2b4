"""A cluster of two Ray nodes on this machine: 2 training workers land on different nodes, then the model is served.

Each node has 3 CPUs and each worker asks for 2, so no node fits both and Ray must place one per
node. Runs and the registry live on one path both nodes reach, set explicitly with storage.root
(on real clusters: a shared filesystem mounted at the same path on every node).
"""

from __future__ import annotations

import subprocess

import pytest

from clusters import REPO, VENV_BIN, Lines, start_cluster, wait_for_samples
from http_client import http
from pipelines import PIXELS, digits_source
from rayline.registry import Registry
from rayline.runtime import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=3, resources={"rayline_head": 1})
    try:
        cluster.add_node(num_cpus=3, resources={"rayline_worker_node": 1})
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def test_two_workers_on_two_nodes_train_then_serve(cluster, tmp_path):
    shared = tmp_path / "shared"
    source = digits_source(tmp_path)
    port = free_port()
    overrides = [f"data.source={source}", f"storage.root={shared}", "train.epochs=2", "train.cpus_per_worker=2"]
    command = [str(VENV_BIN / "rayline"), "run", "pipelines/digits.yaml", "--ray-address", cluster.address]
    for override in [*overrides, f"serve.port={port}"]:
        command += ["--set", override]
    # State tracking lets the dashboard (and this test) see which node each rank ran on.
    env = cluster.client_env(RAY_TRAIN_ENABLE_STATE_TRACKING="1")
    driver = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = Lines(driver)
        serving = output.wait_for("serving model digits/v1 at ", timeout=600)
        url = serving.split(" at ")[1].split()[0]
        # Both nodes share 127.0.0.1 here, so HAProxy reaches the worker node's replicas too; on separate machines
        # it would not, and the user is told so.
        assert "reaches only the head's replicas" in output.text, output.text[-3000:]

        ranks = worker_nodes(cluster, run_name="digits")
        assert sorted(ranks) == [0, 1], ranks
        assert len(set(ranks.values())) == 2, f"both ranks ran on one node: {ranks}"
        assert set(ranks.values()) == cluster.node_ids(), "one rank on the head, one on the worker node"

        registry = Registry(shared)
        assert registry.model("digits").serving_version() == "v1"
        assert (shared / "runs" / "digits").is_dir(), "checkpoints went to the shared path"

        row = dict.fromkeys(PIXELS, 0.0)
        answer = http.post(url, json={"rows": [row]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] in [str(d) for d in range(10)]

        ports = [node.metrics_port for node in cluster.nodes]
        epochs = wait_for_samples(ports, "ray_rayline_train_epoch", has_run("digits"))
        assert [value for labels, value in epochs if labels["run"] == "digits"] == [2.0]
    finally:
        driver.kill()
        driver.wait()


def worker_nodes(cluster, run_name: str) -> dict[int, str]:
    """world rank -> node id of the run's last attempt, from Ray Train's state in the dashboard."""
    runs = [run for run in cluster.get("/api/train/v2/runs/v1")["train_runs"] if run["name"] == run_name]
    assert runs, f"no Train run named {run_name!r} in the dashboard"
    workers = runs[0]["attempts"][-1]["workers"]
    return {worker["world_rank"]: worker["node_id"] for worker in workers}


def has_run(run: str):
    return lambda samples: any(labels.get("run") == run for labels, _ in samples)
