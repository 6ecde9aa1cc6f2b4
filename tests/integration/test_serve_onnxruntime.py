"""serve.runtime onnxruntime on a trained digits MLP: a deployment answers as the torch one does (same classes,
probabilities within 1e-5) over HTTP, for its served version and another one loaded on demand, and keeps doing
so across a version swap. Models are trained briefly without Ray (tests/export_models.py)."""

from __future__ import annotations

import pytest

from export_models import register_trained, source_frame
from http_client import http
from pipelines import PIXELS, digits_pipeline
from rayline.config import ServeConfig
from rayline.registry import Registry
from rayline.runtime import free_port
from rayline.serve.control import wait_until_serving

PORT = free_port()
NAME = "digits-onnx"


@pytest.fixture(scope="module")
def digits(ray_cluster, tmp_path_factory):
    from rayline.serve import deploy, shutdown

    folder = tmp_path_factory.mktemp("digits")
    pipeline = digits_pipeline(folder, name=NAME, model={"kind": "mlp", "hidden_sizes": [32]})
    root = folder / "store"
    for seed in (0, 1):  # v1, v2; v2 served
        register_trained(root, pipeline, epochs=5, seed=seed)
    urls = {}
    for runtime in ("torch", "onnxruntime"):
        cfg = ServeConfig(
            port=PORT, app_name=runtime, route_prefix=f"/{runtime}", runtime=runtime, cpus_per_replica=0.25
        )
        urls[runtime] = deploy(str(root), serve_cfg=cfg, wait=False)
    for runtime, url in urls.items():
        wait_until_serving(runtime, url, 180)
    rows = source_frame(pipeline["data"]["source"])[PIXELS].head(60).to_dict(orient="records")
    yield {"urls": urls, "root": str(root), "rows": rows}
    shutdown()


def predict(url: str, rows: list[dict], path: str = "/predict") -> dict:
    r = http.post(f"{url}{path}", json={"rows": rows}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def assert_same_answers(by_torch: dict, by_onnx: dict) -> None:
    assert by_onnx["model_version"] == by_torch["model_version"]
    for t, o in zip(by_torch["predictions"], by_onnx["predictions"], strict=True):
        assert o["label"] == t["label"]
        assert max(abs(o["probabilities"][c] - t["probabilities"][c]) for c in t["probabilities"]) <= 1e-5


def test_onnxruntime_deployment_answers_as_torch(digits):
    urls, rows = digits["urls"], digits["rows"]
    info = http.get(f"{urls['onnxruntime']}/v1/model", timeout=30).json()
    assert info["runtime"] == "onnxruntime" and info["model_version"] == "v2"
    assert_same_answers(predict(urls["torch"], rows), predict(urls["onnxruntime"], rows))
    # Rows one at a time share batches the way torch's do; the answers stay the same.
    one = [predict(urls["onnxruntime"], [r])["predictions"][0] for r in rows[:5]]
    assert [p["label"] for p in one] == [p["label"] for p in predict(urls["torch"], rows[:5])["predictions"]]
    # Another version, loaded on demand through the multiplexed cache, on the same runtime.
    path = "/v1/models/v1/predict"
    assert_same_answers(predict(urls["torch"], rows, path), predict(urls["onnxruntime"], rows, path))


def test_onnxruntime_refuses_bad_rows_as_torch(digits):
    urls = digits["urls"]
    bad = {"rows": [{**digits["rows"][0], "pixel_3": "x"}]}
    answers = [http.post(f"{urls[r]}/predict", json=bad, timeout=30) for r in ("torch", "onnxruntime")]
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json() == answers[1].json()
    assert "rows.0.pixel_3" in answers[1].json()["error"]


def test_a_promoted_version_runs_on_onnxruntime_too(digits):
    from rayline.serve import promote

    switched = promote(digits["root"], NAME, "v1")
    assert sorted(switched) == ["onnxruntime", "torch"]
    assert Registry(digits["root"]).model(NAME).serving_version() == "v1"
    urls, rows = digits["urls"], digits["rows"]
    by_onnx = predict(urls["onnxruntime"], rows)
    assert by_onnx["model_version"] == "v1"
    assert_same_answers(predict(urls["torch"], rows), by_onnx)
