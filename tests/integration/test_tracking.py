"""`tracking:` on the session cluster: TensorBoard event files per run under the storage root (read back with
TensorBoard's reader), and a tracking server that is down never stops a run. MLflow itself is checked against a
real server in test_storage_s3.py (a run resumed from a bucket), test_faults_train.py (a worker killed) and
test_faults_tune.py (a search stopped, crashed and resumed). And workers' output is still written to the session's
log files on a cluster whose log monitor rayline stopped (as it does without --verbose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import digits_config
from rayline.pipeline import train_and_register
from rayline.registry import Registry
from rayline.runtime import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked(ray_cluster, tmp_path_factory):
    """TensorBoard on, and MLflow at a port nothing listens on."""
    root = tmp_path_factory.mktemp("tracked")
    down = f"http://127.0.0.1:{free_port()}"
    tracking = {"mlflow": {"uri": down, "experiment": "nowhere"}, "tensorboard": True}
    cfg = digits_config(root, "tracked", train={"num_workers": 2, "epochs": 2}, tracking=tracking)
    return cfg, train_and_register(cfg, log=lambda _: None)


def test_tensorboard_shows_the_run_under_the_storage_roots_runs(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _ = tracked
    folder = Path(cfg.storage.root) / "runs" / "tracked" / "tensorboard"
    assert list(folder.glob("events.out.tfevents.*")), list(folder.iterdir())
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"train/loss", "val/accuracy", "val/loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/accuracy")] == [0, 1]


def test_a_tracking_server_that_is_down_never_stops_a_run(tracked):
    cfg, report = tracked
    record = Registry(cfg.storage.root).record(report.version)
    assert record["tracking"] == {}, "no run id: the server never answered"
    assert [int(h["epoch"]) for h in record["history"]] == [0, 1], "and the run trained and registered in full"


def test_worker_output_is_still_written_to_the_session_logs_without_the_log_monitor(ray_cluster):
    import os
    import time

    import ray
    from ray._private import worker

    node = worker._global_node
    monitors = node.all_processes.get("log_monitor", [])
    assert monitors and all(m.process.poll() is not None for m in monitors), "the session's log monitor is stopped"

    @ray.remote(num_cpus=0)
    def say(marker: str) -> int:
        print(marker, flush=True)
        return os.getpid()

    marker = f"worker output {time.time_ns()}"
    pid = ray.get(say.remote(marker))
    logs = list(Path(node.get_logs_dir_path()).glob(f"worker-*-{pid}.out"))
    assert len(logs) == 1 and marker in logs[0].read_text(), logs
