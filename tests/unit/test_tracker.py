"""rayline.tracking against a real MLflow tracking server on 127.0.0.1, read back through MLflow's client;
TensorBoard event files read back with TensorBoard's own reader."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import pytest

from mlflow_server import free_port
from rayline.tracking.tracker import (
    CREATED_TAG,
    MAX_PARAM_CHARS,
    QUEUE_SIZE,
    RUN_KEY_TAG,
    TRUNCATED,
    RunTracker,
    flatten,
    tensorboard_tag,
)


@pytest.fixture(scope="module")
def server(mlflow_server):
    return mlflow_server


@pytest.fixture
def client(server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


@pytest.fixture
def experiment():
    return f"test-{uuid.uuid4().hex[:8]}"


def runs_with_key(client, experiment: str, key: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'")


def steps(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def wait_for(condition, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return result


def tracking_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "rayline.tracking.tracker" and r.levelno == logging.WARNING
    ]


def test_run_logs_params_metrics_artifacts_and_tags(server, client, experiment, tmp_path):
    curves = tmp_path / "learning_curves.json"
    curves.write_text('{"train_loss": [1.0, 0.5]}')
    record = tmp_path / "record"
    (record / "nested").mkdir(parents=True)
    (record / "run.json").write_text("{}")
    (record / "nested" / "confusion.csv").write_text("1,0\n0,1\n")
    config = {"train": {"optimizer": {"lr": 0.01}, "epochs": 3}, "model": {"hidden": [64, 32]}, "notes": "x" * 7000}
    tracker = RunTracker(
        run_key="run-a",
        run_name="run-a",
        mlflow_uri=server.uri,
        experiment=experiment,
        params=flatten(config),
        tags={"rayline.version": "7"},
    )
    for epoch in range(3):
        tracker.log_epoch(epoch, {"train_loss": 1.0 / (epoch + 1), "val_accuracy": 0.5 + 0.1 * epoch, "note": "x"})
    tracker.log_artifact(str(curves))
    tracker.log_artifact(str(record))
    tracker.set_tags({"rayline.registered": "demo:7"})
    run_id = tracker.run_id()
    tracker.finish()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "train.optimizer.lr": "0.01",
        "train.epochs": "3",
        "model.hidden": "[64, 32]",
        "notes": "x" * (MAX_PARAM_CHARS - len(TRUNCATED)) + TRUNCATED,
    }
    assert steps(client, run_id, "train_loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [s for s, _ in steps(client, run_id, "val_accuracy")] == [0, 1, 2]
    assert set(run.data.metrics) == {"train_loss", "val_accuracy"}
    assert run.data.tags["rayline.version"] == "7"
    assert run.data.tags["rayline.registered"] == "demo:7"
    assert run.data.tags["mlflow.runName"] == "run-a"
    assert {a.path for a in client.list_artifacts(run_id)} == {"learning_curves.json", "record"}
    assert {a.path for a in client.list_artifacts(run_id, "record")} == {"record/run.json", "record/nested"}
    assert [a.path for a in client.list_artifacts(run_id, "record/nested")] == ["record/nested/confusion.csv"]
    assert [r.info.run_id for r in runs_with_key(client, experiment, "run-a")] == [run_id]


def test_restarted_worker_and_resume_log_into_the_same_run(server, client, experiment):
    def tracker(epochs: int = 5) -> RunTracker:
        params = flatten({"train": {"lr": 0.1, "epochs": epochs}})
        return RunTracker(
            run_key="run-b", run_name="run-b", mlflow_uri=server.uri, experiment=experiment, params=params
        )

    first = tracker()
    for epoch in range(3):
        first.log_epoch(epoch, {"train_loss": 10.0 + epoch})
    run_id = first.run_id()
    # The worker dies without finishing: the run stays RUNNING with epochs 0-2 logged.
    wait_for(lambda: len(client.get_metric_history(run_id, "train_loss")) == 3)

    restarted = tracker()  # resumes from the checkpoint after epoch 1, so epoch 2 runs again
    for epoch in range(2, 5):
        restarted.log_epoch(epoch, {"train_loss": 20.0 + epoch})
    assert restarted.run_id() == run_id
    restarted.finish()
    assert client.get_run(run_id).info.status == "FINISHED"

    resumed = tracker(epochs=6)  # `rayline train --resume` with one more epoch; MLflow refuses a changed param
    assert resumed.run_id() == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.log_epoch(5, {"train_loss": 25.0})
    resumed.finish()

    assert [r.info.run_id for r in runs_with_key(client, experiment, "run-b")] == [run_id]
    assert steps(client, run_id, "train_loss") == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.1", "train.epochs": "5"}


def test_search_has_one_parent_run_with_a_child_per_trial(server, client, experiment):
    def tracker(key: str, parent_key: str | None = None) -> RunTracker:
        return RunTracker(
            run_key=key, run_name=key, mlflow_uri=server.uri, experiment=experiment, parent_key=parent_key
        )

    # Trials and a restarted driver race to find or create the parent.
    trackers = [tracker("search-1/trial-0", "search-1"), tracker("search-1"), tracker("search-1/trial-1", "search-1")]
    trackers.append(tracker("search-1"))
    for tracker_ in trackers:
        tracker_.finish()

    parents = runs_with_key(client, experiment, "search-1")
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    assert trackers[1].run_id() == trackers[3].run_id() == parent_id
    assert parents[0].data.tags["mlflow.runName"] == "search-1"
    for key in ("search-1/trial-0", "search-1/trial-1"):
        (child,) = runs_with_key(client, experiment, key)
        assert child.data.tags["mlflow.parentRunId"] == parent_id
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    assert len(client.search_runs([experiment_id])) == 3


def test_racing_creators_agree_on_the_oldest_run(server, client, experiment):
    tracker = RunTracker(run_key="race", run_name="race", mlflow_uri=server.uri, experiment=experiment)
    (mine,) = wait_for(lambda: runs_with_key(client, experiment, "race"))
    # A racer's run becomes visible only now, though its creator stamped it first.
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    created_ns = str(int(mine.data.tags[CREATED_TAG]) - 1)
    racer = client.create_run(experiment_id, run_name="race", tags={RUN_KEY_TAG: "race", CREATED_TAG: created_ns})
    assert tracker.run_id() == racer.info.run_id
    tracker.finish()
    assert [r.info.run_id for r in runs_with_key(client, experiment, "race")] == [racer.info.run_id]
    assert client.get_run(mine.info.run_id).info.lifecycle_stage == "deleted"


def test_down_server_warns_once_and_never_raises(caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    artifact = tmp_path / "curves.json"
    artifact.write_text("{}")
    started = time.monotonic()
    tracker = RunTracker(run_key="down", run_name="down", mlflow_uri=f"http://127.0.0.1:{free_port()}", experiment="x")
    for epoch in range(20):
        tracker.log_epoch(epoch, {"train_loss": 1.0})
    tracker.log_artifact(str(artifact))
    tracker.set_tags({"a": "b"})
    assert time.monotonic() - started < 1.0
    tracker.finish(timeout_s=20)
    assert time.monotonic() - started < 10.0
    assert tracker.run_id(timeout_s=0) is None
    warnings = tracking_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "127.0.0.1" in warnings[0]


@pytest.mark.parametrize(("epochs", "warning"), [(20, "did not answer within 2 s"), (QUEUE_SIZE + 100, "too slow")])
def test_hung_server_does_not_block_the_caller(caplog, epochs, warning):
    caplog.set_level(logging.WARNING)
    # Connections complete in the listen backlog but are never accepted, so every request hangs.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        tracker = RunTracker(run_key="hung", run_name="hung", mlflow_uri=uri, experiment="x")
        for epoch in range(epochs):
            tracker.log_epoch(epoch, {"train_loss": 1.0, "val_accuracy": 0.5})
        assert tracker.run_id(timeout_s=0.5) is None
        tracker.finish(timeout_s=2)
        assert time.monotonic() - started < 10.0
    # Closing the socket resets the hung request: the tracker fails again, and stays quiet.
    wait_for(lambda: not tracker._thread.is_alive())
    warnings = tracking_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warning in warnings[0] and uri in warnings[0]


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    logdir = tmp_path / "runs" / "run-c" / "tensorboard"

    first = RunTracker(run_key="run-c", run_name="run-c", tensorboard_dir=str(logdir))
    for epoch in range(3):
        first.log_epoch(epoch, {"train_loss": 1.0 + epoch, "val_accuracy": 0.25 * epoch, "lr": 0.1, "phase": "x"})
    first.finish()
    restarted = RunTracker(run_key="run-c", run_name="run-c", tensorboard_dir=str(logdir))
    for epoch in range(2, 4):  # epoch 2 runs again after a restart: TensorBoard shows the new value
        restarted.log_epoch(epoch, {"train_loss": 10.0 + epoch})
    restarted.finish()

    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    accumulator = event_accumulator.EventAccumulator(str(logdir))
    accumulator.Reload()
    assert set(accumulator.Tags()["scalars"]) == {"train/loss", "val/accuracy", "lr"}
    loss = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert loss == [(0, 1.0), (1, 2.0), (2, 12.0), (3, 13.0)]
    assert [(e.step, e.value) for e in accumulator.Scalars("val/accuracy")] == [(0, 0.0), (1, 0.25)]


def test_flatten_nested_config():
    flat = flatten(
        {
            "train": {"optimizer": {"lr": 0.01, "name": "adamw"}, "layers": [64, {"dim": 8}], "schedule": None},
            "empty": {},
            "flag": True,
            "name": "demo",
            "long": "y" * 7000,
        }
    )
    assert flat == {
        "train.optimizer.lr": "0.01",
        "train.optimizer.name": "adamw",
        "train.layers": '[64, {"dim": 8}]',
        "train.schedule": "null",
        "empty": "{}",
        "flag": "true",
        "name": "demo",
        "long": "y" * (MAX_PARAM_CHARS - len(TRUNCATED)) + TRUNCATED,
    }
    assert len(flat["long"]) == MAX_PARAM_CHARS
    assert flatten({"a": 1}, prefix="cfg.") == {"cfg.a": "1"}


def test_tensorboard_tag_groups_by_split():
    assert [tensorboard_tag(n) for n in ("train_loss", "val_accuracy", "val_roc_auc", "test_f1", "lr", "val_")] == [
        "train/loss",
        "val/accuracy",
        "val/roc_auc",
        "test/f1",
        "lr",
        "val_",
    ]


def test_mlflow_needs_a_uri_and_tensorboard_takes_an_object_store_root():
    from rayline.config import ConfigError, validate_config

    base = {"name": "t", "data": {"source": "/x.parquet", "task": "classification", "label": "y", "features": ["a"]}}
    s3_tensorboard = validate_config({**base, "storage": {"root": "s3://b/r"}, "tracking": {"tensorboard": True}})
    assert s3_tensorboard.tracking.tensorboard
    with pytest.raises(ConfigError, match=r"tracking.mlflow.uri: required field is missing"):
        validate_config({**base, "tracking": {"mlflow": {"experiment": "e"}}})
    cfg = validate_config({**base, "storage": {"root": "s3://b/r"}, "tracking": {"mlflow": {"uri": "http://h:5000"}}})
    assert cfg.tracking.enabled and not cfg.tracking.tensorboard
