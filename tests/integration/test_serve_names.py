"""Named models over real HTTP: two pipelines (a classifier and a regressor) in one storage root, each
served by its own app, and a registry written before names, served as it is."""

from __future__ import annotations

import httpx
import pytest

from http_client import http
from rayline.config import ServeConfig
from rayline.registry import ModelVersion, Registry
from serve_models import make_unnamed_registry, model_name, register, row

PORT = 8131
CLF, REG = model_name("classification"), model_name("regression")
EVALUATION = {"confusion_matrix": [[3, 1], [0, 4]], "baseline": {"test_accuracy": 0.5, "worse_than_baseline": False}}


def app_config(app: str) -> ServeConfig:
    return ServeConfig(port=PORT, route_prefix=f"/{app}", app_name=app, cpus_per_replica=0.25)


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """One storage root: classifier v1, regressor v1, classifier v2 (the order the issue's user hit),
    each name served by its own app, as `rayline serve <its pipeline>.yaml` deploys it."""
    from rayline.serve import deploy, shutdown
    from rayline.serve.control import wait_until_running

    root = str(tmp_path_factory.mktemp("names"))
    register(root, "classification", seed=0)
    register(root, "regression", metrics={"val_loss": 0.3, "val_rmse": 4.5, "val_r2": 0.7})
    register(root, "classification", seed=1, metrics={"val_loss": 0.4, "val_accuracy": 0.9}, evaluation=EVALUATION)
    registry = Registry(root)
    urls = {
        "clf": deploy(root, registry.resolve(CLF), app_config("clf"), wait=False),
        "reg": deploy(root, registry.resolve(REG), app_config("reg"), wait=False),
        "old": deploy(make_unnamed_registry(tmp_path_factory.mktemp("old")), None, app_config("old"), wait=False),
    }
    for app in urls:
        wait_until_running(app, timeout_s=180)
    yield root, urls
    shutdown()


def post(url: str, path: str = "/predict") -> httpx.Response:
    return http.post(f"{url}{path}", json={"rows": [row(0), row(1)]}, timeout=30)


def test_each_pipeline_gets_its_own_model(served):
    _, urls = served
    clf = post(urls["clf"])
    assert clf.status_code == 200, clf.text
    assert (clf.json()["model_name"], clf.json()["model_version"]) == (CLF, "v2")
    assert all("label" in p for p in clf.json()["predictions"])
    reg = post(urls["reg"])
    assert reg.status_code == 200, reg.text
    assert (reg.json()["model_name"], reg.json()["model_version"]) == (REG, "v1")
    assert all(set(p) == {"value"} for p in reg.json()["predictions"])


def test_another_name_and_version_on_demand(served):
    _, urls = served
    r = post(urls["clf"], f"/v1/models/{REG}/v1/predict")
    assert r.status_code == 200, r.text
    assert (r.json()["model_name"], r.json()["model_version"]) == (REG, "v1")
    assert r.json()["predictions"] == post(urls["reg"]).json()["predictions"], "the same model answers the same"
    r = post(urls["reg"], "/v1/models/v1/predict")  # a version of the served name
    assert (r.status_code, r.json()["model_name"]) == (200, REG)
    r = post(urls["reg"], f"/v1/models/{CLF}/v1/predict")
    assert (r.status_code, r.json()["model_name"], r.json()["model_version"]) == (200, CLF, "v1")
    assert post(urls["clf"], "/v1/models/v1/predict").json()["predictions"] == r.json()["predictions"]


def test_unknown_names_and_versions_are_404s_that_list_what_exists(served):
    _, urls = served
    r = post(urls["clf"], "/v1/models/housing/v1/predict")
    assert r.status_code == 404
    assert "no model named 'housing'" in r.json()["error"] and f"{CLF}, {REG}" in r.json()["error"]
    assert r.json()["detail"][0]["loc"] == "path.name"
    r = post(urls["clf"], f"/v1/models/{REG}/v5/predict")
    assert r.status_code == 404 and "known: v1" in r.json()["error"]
    assert r.json()["detail"][0]["loc"] == "path.version"
    r = post(urls["clf"], f"/v1/models/{REG}/latest/predict")
    assert r.status_code == 404 and "versions look like v3" in r.json()["error"]


def test_model_info_carries_the_name_and_every_metric(served):
    _, urls = served
    info = http.get(f"{urls['clf']}/v1/model", timeout=30).json()
    assert (info["model_name"], info["model_version"], info["pipeline"]) == (CLF, "v2", CLF)
    assert info["metrics"] == {"val_loss": 0.4, "val_accuracy": 0.9}
    assert info["test_metrics"] == {"loss": 1.5}
    assert info["evaluation"] == EVALUATION
    listed = http.get(f"{urls['reg']}/v1/models", timeout=30).json()
    assert (listed["default_model"], listed["default_version"]) == (REG, "v1")
    rows = {(m["model_name"], m["model_version"]): m for m in listed["models"]}
    assert list(rows) == [(CLF, "v1"), (CLF, "v2"), (REG, "v1")]
    assert rows[(CLF, "v2")]["evaluation"] == EVALUATION and rows[(CLF, "v2")]["registry_serving"]
    assert rows[(REG, "v1")]["metrics"]["val_r2"] == 0.7 and rows[(REG, "v1")]["default_here"]
    assert not rows[(CLF, "v1")]["registry_serving"]


def test_promote_switches_only_the_apps_serving_that_name(served):
    from rayline.serve import promote, rollback

    root, urls = served
    regressor_marker = Registry(root).model(REG).path / "serving.json"
    untouched = regressor_marker.read_bytes()
    assert promote(root, CLF, "v1") == ["clf"]
    assert post(urls["clf"]).json()["model_version"] == "v1"
    assert post(urls["reg"]).json()["model_name"] == REG, "the regressor's app is untouched"
    assert regressor_marker.read_bytes() == untouched, "the regressor's marker is not rewritten"
    assert rollback(root, CLF) == (ModelVersion(CLF, "v2"), ["clf"])
    assert post(urls["clf"]).json()["model_version"] == "v2"


def test_a_registry_from_before_names_is_served(served):
    _, urls = served
    r = post(urls["old"])
    assert r.status_code == 200, r.text
    assert (r.json()["model_name"], r.json()["model_version"]) == (CLF, "v1")


def test_batch_prediction_picks_the_named_model(served, tmp_path):
    import pandas as pd

    from rayline.predict import predict_files

    root, _ = served
    pd.DataFrame([row(i) for i in range(5)]).to_csv(tmp_path / "rows.csv", index=False)
    model, rows = predict_files(root, f"{REG}/v1", str(tmp_path / "rows.csv"), str(tmp_path / "out.parquet"))
    assert (model, rows) == (ModelVersion(REG, "v1"), 5)
    assert "probability_cat" not in pd.read_parquet(tmp_path / "out.parquet").columns, "the regressor answered"
    model, _ = predict_files(root, CLF, str(tmp_path / "rows.csv"), str(tmp_path / "clf.parquet"))
    assert model == ModelVersion(CLF, "v2"), "the name's serving version (v2 again after the rollback test)"
    assert {"prediction", "probability_cat"} <= set(pd.read_parquet(tmp_path / "clf.parquet").columns)
