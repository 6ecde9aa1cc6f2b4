"""The Serve endpoint over real HTTP behind Serve's Python proxy (serve.ingress: proxy): a tiny registered model,
deployed once per module. test_serve_production.py covers the default ingress, HAProxy."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from http_client import http
from rayline.config import ServeConfig
from rayline.serve.control import wait_until_serving
from serve_models import CLASSES, COLORS, FEATURES, flood, make_registry, row

PORT = 8126
MAX_BATCH_SIZE = 32
BATCH_WAIT_S = 0.25
"""The classification and regression apps' batching: a long wait makes concurrent requests share a batch
(the batcher only waits after a pass of several rows, so the one-request tests do not pay it)."""
TINY = ServeConfig(
    port=PORT,
    route_prefix="/tiny",
    app_name="tiny",
    max_ongoing_requests=1,
    max_queued_requests=1,
    retry_after_s=2,
    cpus_per_replica=0.25,
    ingress="proxy",
)


@pytest.fixture(scope="module")
def endpoints(ray_cluster, tmp_path_factory):
    from rayline.serve import deploy, shutdown

    urls = {}
    for task, prefix in (("classification", "/clf"), ("regression", "/reg")):
        root = make_registry(tmp_path_factory.mktemp(task), task)
        cfg = ServeConfig(
            port=PORT,
            route_prefix=prefix,
            app_name=task,
            max_batch_size=MAX_BATCH_SIZE,
            batch_wait_timeout_s=BATCH_WAIT_S,
            cpus_per_replica=0.25,
            ingress="proxy",
        )
        urls[task] = deploy(root, serve_cfg=cfg, wait=False)
    urls["tiny"] = deploy(make_registry(tmp_path_factory.mktemp("tiny")), serve_cfg=TINY, wait=False)
    for app in ("classification", "regression", "tiny"):  # their replicas start side by side
        wait_until_serving(app, urls[app], 180)
    yield urls
    shutdown()


@pytest.fixture(scope="module")
def clf(endpoints):
    with httpx.Client(base_url=endpoints["classification"], timeout=30) as client:
        yield client


def test_predict_one_row(clf):
    r = clf.post("/predict", json={"rows": [row()]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "v1"
    [pred] = body["predictions"]
    assert pred["label"] in CLASSES
    assert set(pred["probabilities"]) == set(CLASSES)
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0)


def test_predict_many_rows_as_objects_and_lists(clf):
    # 70 rows is more than max_batch_size (32): the request is cut into pieces and put back together.
    dict_rows = [row(i) for i in range(70)]
    list_rows = [[r[name] for name in FEATURES] for r in dict_rows]
    by_dict = clf.post("/predict", json={"rows": dict_rows}).json()["predictions"]
    by_list = clf.post("/predict", json={"rows": list_rows}).json()["predictions"]
    assert len(by_dict) == 70
    assert by_dict == by_list
    for pred in by_dict:
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0)
    # Each row is answered for itself, not mixed with its neighbours.
    [alone] = clf.post("/predict", json={"rows": [dict_rows[41]]}).json()["predictions"]
    assert alone["probabilities"] == pytest.approx(by_dict[41]["probabilities"])


def test_healthz(clf):
    r = clf.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model_name": "tiny-classification", "model_version": "v1"}


def test_model_info(clf):
    info = clf.get("/v1/model").json()
    assert (info["model_name"], info["model_version"]) == ("tiny-classification", "v1")
    assert info["pipeline"] == "tiny-classification"
    assert info["task"] == "classification"
    assert info["classes"] == CLASSES
    assert info["metrics"] == {"val_loss": 1.25, "val_accuracy": None}  # NaN is not JSON
    assert info["test_metrics"] == {"loss": 1.5}
    assert info["evaluation"] == {}
    assert [f["name"] for f in info["features"]] == FEATURES
    color = {"name": "color", "kind": "categorical", "categories": COLORS}
    assert info["features"][3] == {
        **color,
        "other": False,
        "encoding": "onehot",
        "missing": "category",
        "nullable": True,
    }
    assert info["created_at"]
    assert info["serving"]["max_batch_size"] == MAX_BATCH_SIZE
    assert info["serving"]["max_body_bytes"] == 1 << 20


def test_openapi_documents_the_features(clf):
    spec = clf.get("/openapi.json").json()
    routes = {"/predict", "/v1/models/{version}/predict", "/v1/models/{name}/{version}/predict", "/v1/model"}
    assert routes | {"/healthz", "/v1/models"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    object_row = body["schema"]["properties"]["rows"]["items"]["anyOf"][0]
    assert object_row["required"] == ["x1", "x2", "pixel_7"]  # color may be absent: missing is its own category
    assert clf.post("/predict", json=body["example"]).status_code == 200
    docs = clf.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/clf/openapi.json" in docs.text  # the page finds the spec behind the route prefix


JSON = {"content-type": "application/json"}
BAD_REQUESTS = {
    "missing feature": ({"rows": [{"x1": 1, "x2": 2, "color": "red"}]}, 422, "rows.0.pixel_7", "missing"),
    "unknown feature": ({"rows": [{**row(), "x9": 1}]}, 422, "rows.0.x9", "unknown feature"),
    "string for number": ({"rows": [row(), {**row(), "x2": "abc"}]}, 422, "rows.1.x2", "expected a number"),
    "bool for number": ({"rows": [{**row(), "x1": True}]}, 422, "rows.0.x1", "expected a number"),
    "number for category": ({"rows": [{**row(), "color": 1.5}]}, 422, "rows.0.color", "expected a string"),
    "wrong length": ({"rows": [[1, 2, "red"]]}, 422, "rows.0", "expected 4 values"),
    "row not a row": ({"rows": ["x1"]}, 422, "rows.0", "expected an object"),
    "empty rows": ({"rows": []}, 422, "rows", "empty"),
    "no rows key": ({"data": [row()]}, 422, "data", "unknown key"),
    "not an object": ([row()], 422, "body", "JSON object"),
    "too many rows": ({"rows": [row()] * 1025}, 422, "rows", "limit of 1024"),
    "NaN": (b'{"rows": [[NaN, 1, 2, "red"]]}', 422, "rows.0.x1", "finite"),
    "Infinity": (
        b'{"rows": [{"x1": 1, "x2": -Infinity, "pixel_7": 1, "color": "red"}]}',
        422,
        "rows.0.x2",
        "finite",
    ),
    "beyond float32": ({"rows": [row(), {**row(), "x2": -1e300}]}, 422, "rows.1.x2", "float32 can hold"),
    "overflows once scaled": ({"rows": [{**row(), "pixel_7": 3e38}]}, 422, "rows.0.pixel_7", "once scaled"),
    "invalid JSON": (b'{"rows": [', 400, "body", "not valid JSON"),
    "empty body": (b"", 400, "body", "empty"),
    "not UTF-8": (b"\xff\xfe{", 400, "body", "not valid JSON"),
    "form data": (b"rows=1", 415, "content-type", "application/json"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_is_a_4xx_that_names_the_problem(clf, case):
    payload, status, loc, words = BAD_REQUESTS[case]
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"} if case == "form data" else JSON
    r = clf.post("/predict", content=content, headers=headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["error"]
    assert any(d["loc"].endswith(loc) and words in d["msg"] for d in body["detail"]), body
    # The replica keeps serving.
    assert clf.post("/predict", json={"rows": [row()]}).status_code == 200


def test_wrong_method_and_path_are_json_errors(clf):
    assert clf.get("/predict").status_code == 405
    r = clf.get("/nope")
    assert r.status_code == 404 and r.json()["error"]


ARRIVAL_SPREAD_S = 1.0
"""How long a burst of MAX_BATCH_SIZE requests on open connections may take to reach the replica through
Serve's proxy on two busy cores. Measured with three CPU hogs beside the cluster: 3-5 passes at a 0.1 s
wait, so about 0.2-0.4 s; on an idle machine all 32 share one pass."""


def test_concurrent_requests_share_batches(endpoints):
    n = MAX_BATCH_SIZE
    # The most forward passes batching allows, from the batcher's rules (rayline/serve/batching.py) and the
    # app's config: a pass holds at most max_batch_size rows, so ceil(n / max_batch_size) passes had all n
    # arrived at once; a pass that follows a one-row pass does not wait (a lone request should not pay for
    # the wait), which lets up to 2 passes go out with whatever has arrived; every other pass waits
    # batch_wait_timeout_s for more rows, so a burst that reaches the replica over ARRIVAL_SPREAD_S needs at
    # most ceil(ARRIVAL_SPREAD_S / batch_wait_timeout_s) more. That is 1 + 2 + 4 = 7 passes for 32 requests,
    # at least 4.5 rows a pass; without batching they take 32, and with max_batch_size=1 as well.
    max_passes = math.ceil(n / MAX_BATCH_SIZE) + 2 + math.ceil(ARRIVAL_SPREAD_S / BATCH_WAIT_S)

    async def fire() -> tuple[dict, list[httpx.Response], dict]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=endpoints["classification"], timeout=30, limits=limits) as client:
            # Open the n connections first: connecting is the client's delay, not the server's.
            await asyncio.gather(*(client.post("/predict", json={"rows": [row(i)]}) for i in range(n)))
            before = (await client.get("/v1/model")).json()["serving"]
            responses = await asyncio.gather(*(client.post("/predict", json={"rows": [row(i)]}) for i in range(n)))
            after = (await client.get("/v1/model")).json()["serving"]
            return before, responses, after

    before, responses, after = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * n
    counts = {key: after[key] - before[key] for key in ("requests_served", "rows_served", "batches_served")}
    print(f"{n} concurrent requests: {counts}")
    assert counts["requests_served"] == n and counts["rows_served"] == n, counts
    assert counts["batches_served"] <= max_passes, f"{counts}: at most {max_passes} forward passes expected"


def test_fuzzed_requests_never_get_a_server_error(endpoints, tmp_path):
    """Schemathesis fuzzes the OpenAPI document: no 5xx, invalid bodies get a 4xx, responses match it.

    Not checked: that every schema-valid body succeeds. Values near the float32 limit are valid JSON
    numbers yet overflow inside the model, and those rightly get a 422.
    """
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("schemathesis (the dev extra) is not installed")
    url = endpoints["classification"]
    command = [str(cli), "run", f"{url}/openapi.json", "--url", url, "--checks", "all"]
    command += ["--exclude-checks", "positive_data_acceptance"]
    command += ["--max-examples", "15", "--seed", "1", "--generation-deterministic"]
    # In tmp_path: schemathesis and hypothesis keep caches in the working directory.
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]


def test_regression_round_trip(endpoints):
    rows = [row(i) for i in range(3)]
    r = http.post(f"{endpoints['regression']}/predict", json={"rows": rows}, timeout=30)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 3
    assert all(set(p) == {"value"} and np.isfinite(p["value"]) for p in predictions)


def test_overload_is_refused_with_retry_after_and_nothing_hangs(endpoints):
    """One request runs, one waits; the rest of a burst is refused at once with 503 and Retry-After."""
    began = time.monotonic()
    responses = asyncio.run(flood(endpoints["tiny"]))
    assert time.monotonic() - began < 15
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 2
    assert all(r.headers["retry-after"] == "2" for r in responses if r.status_code == 503)
    # Once the burst is over, the app answers again.
    assert http.post(f"{endpoints['tiny']}/predict", json={"rows": [row()]}, timeout=20).status_code == 200
