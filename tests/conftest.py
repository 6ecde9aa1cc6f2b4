"""One Ray cluster per test session (dashboard on: the fault tests find actors through its State API)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

import pytest

from mlflow_server import MlflowServer
from s3_server import S3_TEST_ENVIRONMENT

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# As rayline sets it for the clusters it starts (rayline.runtime.connect): Tune trials start many small-CPU actors
# (trial driver, Train controller and workers, Ray Data's split coordinator) at once, and the raylet's default of
# one starting worker per core queues them behind each other.
os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "8")
# S3 is only ever the server a test starts (tests/s3_server.py), reached with its keys; set before the session's
# cluster starts so that its workers have them too. Object-store copies are cached under the session's temp dir.
os.environ.update(S3_TEST_ENVIRONMENT)
os.environ["RAYLINE_CACHE"] = tempfile.mkdtemp(prefix="rayline-cache-")
atexit.register(shutil.rmtree, os.environ["RAYLINE_CACHE"], ignore_errors=True)


def pytest_itemcollected(item):
    """Marks each test as it is collected, before -m selects by the marks."""
    if "tests/integration" in str(item.fspath):
        item.add_marker(pytest.mark.integration)
    # `make test` (tests/run_suite.sh) runs two pytest processes at once: the tests on the session cluster in
    # one, and everything else (unit tests, tests that start clusters and servers of their own, which spend
    # most of their time waiting on them) in the other.
    # A module marked own_cluster uses the ray_cluster fixture in that other process, which then starts a cluster
    # of its own there: it moves work off the longer of the two.
    if "ray_cluster" in item.fixturenames and item.get_closest_marker("own_cluster") is None:
        item.add_marker(pytest.mark.session_cluster)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from rayline.runtime import (
        agent_port_chosen_by_the_os,
        point_state_api_at_own_dashboard,
        stop_autoscaler_monitor,
        stop_log_monitor,
    )

    with agent_port_chosen_by_the_os():  # as rayline's embedded clusters: Ray's fixed default would clash
        ctx = ray.init(
            address="local",
            num_cpus=4,
            num_gpus=0,  # the CPU-only scenarios (a use_gpu run refused) hold on a GPU machine too
            include_dashboard=True,
            dashboard_port=point_state_api_at_own_dashboard(preferred=8266),
            logging_level=logging.WARNING,
            log_to_driver=False,
            object_store_memory=512 * 2**20,
        )
    stop_log_monitor()  # as rayline's commands do without --verbose: nothing here prints the workers' output
    yield ctx
    stop_autoscaler_monitor()  # as rayline's commands do: a second off the session's end
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow tracking server on 127.0.0.1 for the session, started on first use; each test logs to an
    experiment of its own."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
