"""`storage.root: s3://...` end to end against a real S3-compatible server (moto's, on 127.0.0.1): data read
from the bucket (a folder, and a glob that reads only the files it matches), Ray Train's checkpoints and the
registry written to it, the version served over HTTP, promoted, batch-predicted from and to the bucket, a run
resumed from its checkpoints there, a search whose trials and report live in the bucket, and a bucket that
refuses writes named in the error."""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from clusters import VENV_BIN
from http_client import http
from pipelines import PIXELS, digits_config, digits_source
from rayline.config import ConfigError, ServeConfig
from rayline.data import DataError, fingerprint_source, list_source_files, prepare_datasets
from rayline.pipeline import train_and_register
from rayline.predict import predict_files
from rayline.registry import ModelVersion, Registry
from rayline.runtime import free_port
from rayline.tracking.tracker import RUN_KEY_TAG
from s3_server import read_only_user, start_s3_server

# In the second pytest process of `make test` (tests/run_suite.sh), on a cluster of its own there.
pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]

BUCKET = "rayline-store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.create_bucket(BUCKET)
    server.create_bucket("datasets")
    yield server
    server.stop()


def test_a_glob_in_the_bucket_prepares_exactly_the_files_it_matches(ray_cluster, s3, tmp_path):
    """data.source as an s3:// glob: the data stage reads every part-*.parquet (part-?.parquet lists the same), not
    a file of another name beside them nor a part file one folder down; a glob that matches nothing is named in
    the error, as the user wrote it."""
    digits = pd.read_parquet(digits_source(tmp_path))
    # Each file's row count differs, so the rows prepared tell which files were read.
    matched = {"part-0.parquet": digits.iloc[:400], "part-1.parquet": digits.iloc[400:1000]}
    matched["part-2.parquet"] = digits.iloc[1000:1500]
    skipped = {"other.parquet": digits.iloc[1500:1600], "old/part-3.parquet": digits.iloc[1600:]}
    local = tmp_path / "matched"
    local.mkdir()
    for name, frame in {**matched, **skipped}.items():
        body = frame.to_parquet(index=False)
        s3.client().put_object(Bucket="datasets", Key=f"glob/{name}", Body=body)
        if name in matched:
            (local / name).write_bytes(body)
    source = s3.uri("datasets", "glob/part-*.parquet")
    assert list_source_files(source)[1] == [f"datasets/glob/{name}" for name in matched]
    assert list_source_files(s3.uri("datasets", "glob/part-?.parquet"))[1] == list_source_files(source)[1]

    cfg = digits_config(tmp_path, "glob-s3", data={"source": source})
    data = prepare_datasets(cfg.data, storage_root=str(tmp_path / "store"), log=lambda _: None)
    assert sum(data.num_rows.values()) + data.rows_without_label + data.rows_dropped == 1500
    assert sum(data.label_counts) == data.num_rows["train"]
    # The fingerprint covers the names and bytes of the files listed: those of the matched files alone.
    assert data.fingerprint == fingerprint_source(digits_config(tmp_path, data={"source": str(local)}).data)

    empty = s3.uri("datasets", "glob/nothing-*.parquet")
    with pytest.raises(DataError, match=re.escape(f"{empty}: no data files found")):
        prepare_datasets(digits_config(tmp_path, data={"source": empty}).data, storage_root=str(tmp_path / "store"))


@pytest.fixture(scope="module")
def trained(ray_cluster, s3, mlflow_server, tmp_path_factory):
    """Two epochs, then the same run asked for three: the second start resumes from the bucket. Both starts are
    tracked in MLflow, into one run."""
    local = tmp_path_factory.mktemp("s3-train")
    s3.client().upload_file(str(digits_source(local)), "datasets", "digits/part-0.parquet")
    sections = {
        "data": {"source": s3.uri("datasets", "digits")},
        "train": {"num_workers": 2, "epochs": 2, "batch_size": 64},
        "storage": {"root": f"s3://{BUCKET}/rayline", "endpoint_override": s3.endpoint},
        "tracking": {"mlflow": {"uri": mlflow_server.uri, "experiment": "s3-runs"}, "tensorboard": True},
    }
    first_lines: list[str] = []
    first = train_and_register(digits_config(local, "digits-s3", **sections), log=first_lines.append)
    sections["train"]["epochs"] = 3
    resumed_cfg = digits_config(local, "digits-s3", **sections)
    epochs: list[dict] = []
    resumed = train_and_register(resumed_cfg, log=first_lines.append, on_epoch=epochs.append)
    return resumed_cfg, first, resumed, epochs


def test_checkpoints_prepared_data_and_registry_live_in_the_bucket(s3, trained):
    cfg, first, resumed, _ = trained
    assert (first.version, resumed.version) == (ModelVersion("digits-s3", "v1"), ModelVersion("digits-s3", "v2"))
    keys = s3.keys(BUCKET, "rayline/")
    assert any(k.startswith("rayline/runs/digits-s3/checkpoint_") and k.endswith("/model.pt") for k in keys)
    assert any(k.startswith("rayline/prepared/") and k.endswith(".parquet") for k in keys)
    events = [k for k in keys if k.startswith("rayline/runs/digits-s3/tensorboard/events.out.tfevents.")]
    assert len(events) == 2, "TensorBoard files of both starts, copied to the bucket"
    for version in ("v1", "v2"):
        assert f"rayline/registry/models/digits-s3/{version}/record.json" in keys
        assert f"rayline/registry/models/digits-s3/{version}/checkpoint/manifest.json" in keys
    registry = Registry(cfg.storage.uri)
    assert registry.model("digits-s3").serving_version() == "v2"
    record = registry.record(resumed.version)
    assert record["test_metrics"]["test_accuracy"] > 0.7, "a trained model (chance is 0.1)"
    assert "endpoint_override" not in str(record), "the record keeps no endpoint or credentials"


def test_a_resumed_run_is_one_mlflow_run_with_every_epoch_once(mlflow_server, trained):
    cfg, first, resumed, _ = trained
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("s3-runs").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "digits-s3"
    assert run.data.tags[RUN_KEY_TAG] == "s3://rayline-store/rayline#runs/digits-s3", "no URI options in the key"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2], "each epoch once, the first start's and the resumed one"
    # Params are those of the run's first start: MLflow refuses to change a logged param.
    assert run.data.params["train.num_workers"] == "2" and run.data.params["train.epochs"] == "2"
    assert not [p for p in run.data.params if p.startswith("tracking")], "the tracking URI is not a param"
    assert "epoch_started_at" not in run.data.metrics
    assert run.data.tags["rayline.version"] == str(resumed.version) == "digits-s3/v2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"record.json", "learning_curves.png", "confusion_matrix.png"} <= artifacts, artifacts
    registry = Registry(cfg.storage.uri)
    for version in (first.version, resumed.version):
        assert registry.record(version)["tracking"] == {"mlflow_run_id": run.info.run_id}


def test_a_run_resumes_from_its_checkpoints_in_the_bucket(trained):
    cfg, _, resumed, epochs_trained = trained
    assert [int(m["epoch"]) for m in epochs_trained] == [2], "the second start trained only the new epoch"
    history = Registry(cfg.storage.uri).record(resumed.version)["history"]
    # Epochs 0 and 1 came back with the checkpoint from the first start, read from the bucket.
    assert [int(h["epoch"]) for h in history] == [0, 1, 2]


def test_a_version_in_the_bucket_is_served_promoted_rolled_back_and_batch_predicted_to_the_bucket(
    ray_cluster, s3, trained, tmp_path
):
    from rayline.serve import deploy, shutdown

    cfg, first, resumed, _ = trained
    port = free_port()
    serve_cfg = ServeConfig(port=port, app_name="digits-s3", route_prefix="/s3", cpus_per_replica=0.25)
    rows = pd.read_parquet(digits_source(tmp_path)).head(5)
    url = deploy(cfg.storage.uri, resumed.version, serve_cfg)
    try:
        answer = http.post(f"{url}/predict", json={"rows": rows[PIXELS].to_dict("records")}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "v2"
        listed = rayline("models", "--root", cfg.storage.uri)
        assert "digits-s3" in listed and "v2" in listed and "endpoint_override" not in listed
        address = ray_cluster.address_info["address"]
        switched = rayline("promote", "digits-s3", "v1", "--root", cfg.storage.uri, "--ray-address", address)
        assert "switched running app(s) digits-s3 to digits-s3/v1 in place" in switched
        assert http.get(f"{url}/v1/model", timeout=30).json()["model_version"] == "v1"
        assert Registry(cfg.storage.uri).model("digits-s3").serving_version() == "v1"
        rolled_back = rayline("rollback", "digits-s3", "--root", cfg.storage.uri, "--ray-address", address)
        assert "digits-s3/v2" in rolled_back, rolled_back
        assert http.get(f"{url}/v1/model", timeout=30).json()["model_version"] == "v2"
        assert Registry(cfg.storage.uri).model("digits-s3").serving_version() == "v2"
    finally:
        shutdown()

    s3.client().put_object(Bucket="datasets", Key="batch/in.csv", Body=rows.to_csv(index=False).encode())
    source = f"s3://datasets/batch/in.csv?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    output = f"s3://datasets/batch/out.parquet?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    used, written = predict_files(cfg.storage.uri, "digits-s3/v2", source, output)
    assert (used, written) == (resumed.version, 5)
    parts = [k for k in s3.keys("datasets", "batch/out.parquet/") if k.endswith(".parquet")]
    assert parts, s3.keys("datasets", "batch/")
    body = s3.client().get_object(Bucket="datasets", Key=parts[0])["Body"].read()
    table = pq.read_table(pa_buffer(body))
    assert "prediction" in table.column_names and "probability_0" in table.column_names


def rayline(*args: str) -> str:
    done = subprocess.run([str(VENV_BIN / "rayline"), *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"rayline {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def pa_buffer(body: bytes):
    import pyarrow as pa

    return pa.BufferReader(body)


def test_a_bucket_that_refuses_writes_is_named_before_anything_starts(ray_cluster, tmp_path, monkeypatch):
    server = start_s3_server(tmp_path / "moto.log", free_actions=4)
    try:
        for key, value in read_only_user(server, "read-only").items():
            monkeypatch.setenv(key, value)
        cfg = digits_config(tmp_path, storage={"root": "s3://read-only/rayline", "endpoint_override": server.endpoint})
        with pytest.raises(ConfigError, match=r"storage.root='s3://read-only/rayline': cannot write there") as err:
            train_and_register(cfg, log=lambda _: None)
        assert "ACCESS_DENIED" in str(err.value) or "Access Denied" in str(err.value)
        assert "endpoint_override" not in str(err.value)
    finally:
        server.stop()


def test_a_search_keeps_its_trials_in_the_bucket_and_registers_the_best(ray_cluster, s3, tmp_path):
    from rayline.pipeline import search_and_register

    space = tmp_path / "space.yaml"
    space.write_text("train.optimizer.lr: {loguniform: [0.001, 0.01]}\n")
    cfg = digits_config(
        tmp_path,
        "search-s3",
        train={"num_workers": 1, "cpus_per_worker": 0.5, "batch_size": 64},
        tune={
            "num_samples": 2,
            "search_space": str(space),
            "metric": "val_accuracy",
            "mode": "max",
            "scheduler": {"kind": "fifo", "max_t": 2},
        },
        storage={"root": f"s3://{BUCKET}/search", "endpoint_override": s3.endpoint},
    )
    lines: list[str] = []
    report = search_and_register(cfg, log=lines.append)
    assert report.version == ModelVersion("search-s3", "v1")
    keys = s3.keys(BUCKET, "search/")
    experiment = "search/tune/search-s3"
    for name in ("rayline_search.json", "trials.txt", "learning_curves.png"):
        assert f"{experiment}/{name}" in keys, sorted(keys)
    assert len([k for k in keys if k.startswith(f"{experiment}/") and k.endswith("/result.json")]) == 2
    assert any(k.startswith("search/runs/search-s3-") and k.endswith("/model.pt") for k in keys), sorted(keys)
    table = s3.client().get_object(Bucket=BUCKET, Key=f"{experiment}/trials.txt")["Body"].read().decode()
    assert len(table.splitlines()) == 3 and "ERROR" not in table, table
    best = max(float(line.split()[-3]) for line in table.splitlines()[1:])
    record = Registry(cfg.storage.uri).record(report.version)
    assert record["metrics"]["val_accuracy"] == pytest.approx(best, abs=1e-4), "the best trial's best epoch"
    assert any(line.startswith(f"report: s3://{BUCKET}/{experiment}/trials.txt") for line in lines), lines

    uri = f"s3://{BUCKET}/{experiment}?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    printed = rayline("tune-report", uri)
    assert printed.startswith(table), "`rayline tune-report` redraws the report from the bucket"
    assert f"wrote s3://{BUCKET}/{experiment}/trials.txt and" in printed and "endpoint_override" not in printed
    with pytest.raises(ConfigError, match="already exists"):
        search_and_register(cfg, log=lambda _: None)
