"""`tracking:` end to end on the session cluster, against a real MLflow tracking server on 127.0.0.1 (read back
through MLflow's client) and TensorBoard event files (read back with TensorBoard's reader): one MLflow run per
training run across a resume, its params, curves, artifacts and registered version; and a tracking server that
is down never stops a run (test_storage_s3.py trains with one)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipelines import digits_config
from rayline.pipeline import train_and_register
from rayline.registry import Registry
from rayline.tracking.tracker import RUN_KEY_TAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(mlflow_server):
    return mlflow_server


@pytest.fixture(scope="module")
def tracked(ray_cluster, server, tmp_path_factory):
    """Two epochs, then the same run asked for three (a resume): both starts log into one MLflow run."""
    root = tmp_path_factory.mktemp("tracked")
    sections = {
        "train": {"num_workers": 2, "epochs": 2},
        "tracking": {"mlflow": {"uri": server.uri, "experiment": "rayline-tests"}, "tensorboard": True},
    }
    first = train_and_register(digits_config(root, "tracked", **sections), log=lambda _: None)
    sections["train"]["epochs"] = 3
    cfg = digits_config(root, "tracked", **sections)
    resumed = train_and_register(cfg, log=lambda _: None)
    return cfg, first, resumed


def runs_of(server, experiment: str) -> list:
    client = mlflow.tracking.MlflowClient(server.uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_resumed_run_is_one_mlflow_run_with_every_epoch_once(server, tracked):
    cfg, first, resumed = tracked
    runs = runs_of(server, "rayline-tests")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.tags[RUN_KEY_TAG].endswith("#runs/tracked")
    client = mlflow.tracking.MlflowClient(server.uri)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2], "each epoch once, the first start's and the resumed one"
    # Params are those of the run's first start: MLflow refuses to change a logged param.
    assert run.data.params["train.num_workers"] == "2" and run.data.params["train.epochs"] == "2"
    assert not [p for p in run.data.params if p.startswith("tracking")], "the tracking URI is not a param"
    assert "epoch_started_at" not in run.data.metrics
    assert run.data.tags["rayline.version"] == str(resumed.version) == "tracked/v2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"record.json", "learning_curves.png", "confusion_matrix.png"} <= artifacts, artifacts
    record = Registry(cfg.storage.root).record(resumed.version)
    assert record["tracking"] == {"mlflow_run_id": run.info.run_id}
    assert Registry(cfg.storage.root).record(first.version)["tracking"] == {"mlflow_run_id": run.info.run_id}


def test_tensorboard_shows_the_run_under_the_storage_roots_runs(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, _ = tracked
    folder = Path(cfg.storage.root) / "runs" / "tracked" / "tensorboard"
    assert list(folder.glob("events.out.tfevents.*")), list(folder.iterdir())
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"train/loss", "val/accuracy"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/accuracy")] == [0, 1, 2]
