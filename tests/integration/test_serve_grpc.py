"""The gRPC endpoint (serve.grpc) beside HTTP, behind HAProxy (the default ingress), with a real grpcio client:
the same answers as HTTP, errors as gRPC status codes, the bearer token in metadata, version routing, overload,
and a version swap under gRPC load with no failed call."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from rayline.client import EndpointError, connect
from rayline.config import ServeConfig
from rayline.registry import Registry
from rayline.runtime import free_port
from rayline.serve import rayline_pb2 as pb
from rayline.serve import rayline_pb2_grpc
from serve_models import deploy_apps, flood, make_registry, model_name, row

TOKEN = "grpc-test-token"
NAME = model_name("classification")
HTTP_PORT, GRPC_PORT = free_port(), free_port()
COMMON = {"port": HTTP_PORT, "grpc": {"port": GRPC_PORT}, "cpus_per_replica": 0.25}
APPS = {
    "main": ServeConfig(app_name="main", route_prefix="/main", **COMMON),
    "tiny": ServeConfig(
        app_name="tiny",
        route_prefix="/tiny",
        max_ongoing_requests=1,
        max_queued_requests=1,
        batch_wait_timeout_s=0.3,
        **COMMON,
    ),
    "slow": ServeConfig(
        app_name="slow",
        route_prefix="/slow",
        request_timeout_s=0.0001,  # shorter than any request's trip through the replica
        **COMMON,
    ),
}


@pytest.fixture(scope="module")
def apps(ray_cluster, tmp_path_factory):
    from rayline.serve import shutdown

    roots = {name: make_registry(tmp_path_factory.mktemp(name), versions=2 if name == "main" else 1) for name in APPS}
    urls = deploy_apps(APPS, roots, secured="main", token=TOKEN)
    wait_for_grpc("main")
    yield {"urls": urls, "roots": roots}
    shutdown()


def grpc_url(app: str) -> str:
    return f"grpc://127.0.0.1:{GRPC_PORT}/{app}"


def wait_for_grpc(app: str, timeout_s: float = 60) -> None:
    """HAProxy learns the replicas' gRPC ports a moment after the app is RUNNING."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with connect(grpc_url(app), token=TOKEN, timeout_s=5) as client:
                client.health()
                return
        except EndpointError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_grpc_answers_as_http(apps):
    rows = [row(i) for i in range(5)]
    with connect(grpc_url("main"), token=TOKEN) as over_grpc, connect(apps["urls"]["main"], token=TOKEN) as http:
        by_grpc, by_http = over_grpc.predict(rows), http.predict(rows)
        assert by_grpc["model_version"] == by_http["model_version"] == "v2"
        for g, h in zip(by_grpc["predictions"], by_http["predictions"], strict=True):
            assert g["label"] == h["label"]
            assert g["probabilities"] == pytest.approx(h["probabilities"], abs=1e-12)
        assert over_grpc.model_info()["model_version"] == "v2"
        listed = {(m["model_name"], m["model_version"]) for m in over_grpc.list_models()["models"]}
        assert listed == {(NAME, "v1"), (NAME, "v2")}


def test_grpc_routes_by_model_name_and_version(apps):
    with connect(grpc_url("main"), token=TOKEN) as client:
        assert client.predict([row()], model_version="v1")["model_version"] == "v1"
        assert client.predict([row()], model_name=NAME, model_version="v1")["model_version"] == "v1"
        with pytest.raises(EndpointError) as missing:
            client.predict([row()], model_version="v9")
        assert missing.value.status == "NOT_FOUND" and "v9" in missing.value.message


def test_a_bad_value_is_invalid_argument_naming_the_row_and_feature(apps):
    stub = rayline_pb2_grpc.RaylineStub(grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}"))
    values = {"x1": pb.Value(text="oops"), "x2": pb.Value(number=1), "pixel_7": pb.Value(number=1)}
    values["color"] = pb.Value(text="red")
    request = pb.PredictRequest(rows=[pb.Row(values={**values, "x1": pb.Value(number=0)}), pb.Row(values=values)])
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, metadata=[("authorization", f"Bearer {TOKEN}"), ("application", "main")], timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows.1.x1" in refused.value.details() and "expected a number" in refused.value.details()


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_missing_or_wrong_token_is_unauthenticated(apps, token):
    with connect(grpc_url("main"), token=token or "") as client:
        assert client.health()["status"] == "ok"  # as GET /healthz, no token needed
        for call in (lambda: client.predict([row()]), client.model_info, client.list_models):
            with pytest.raises(EndpointError) as refused:
                call()
            assert refused.value.status == "UNAUTHENTICATED"


def test_a_request_past_request_timeout_s_is_deadline_exceeded(apps):
    with connect(grpc_url("slow")) as client, pytest.raises(EndpointError) as late:
        client.predict([row()])
    assert late.value.status == "DEADLINE_EXCEEDED" and "0.0001 s limit" in late.value.message


def test_overload_is_resource_exhausted_and_nothing_hangs(apps):
    """An HTTP request whose body trickles in holds the tiny app's one slot; gRPC calls beyond its one queued
    place are refused at once."""
    results: list[str] = []

    def call() -> None:
        with connect(grpc_url("tiny"), timeout_s=20) as client:
            try:
                client.predict([row()])
                results.append("OK")
            except EndpointError as err:
                results.append(err.status)

    holder = threading.Thread(target=lambda: asyncio.run(flood(apps["urls"]["tiny"], burst=0)))
    holder.start()
    time.sleep(0.4)
    began = time.monotonic()
    callers = [threading.Thread(target=call) for _ in range(12)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    holder.join(30)
    assert time.monotonic() - began < 20
    assert "RESOURCE_EXHAUSTED" in results and set(results) <= {"OK", "RESOURCE_EXHAUSTED"}, results
    with connect(grpc_url("tiny")) as client:
        assert client.predict([row()])["predictions"]


def test_promoting_a_version_under_grpc_load_fails_no_call(apps):
    from rayline.serve import promote

    root = apps["roots"]["main"]
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with connect(grpc_url("main"), token=TOKEN) as client:
            while not stop.is_set():
                try:
                    seen.append(client.predict([row(len(seen))])["model_version"])
                except EndpointError as err:
                    failures.append(str(err))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        assert promote(root, NAME, "v1") == ["main"]
        deadline = time.monotonic() + 60
        while (not seen or seen[-1] != "v1") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert not failures, failures[:5]
    assert seen[0] == "v2" and seen[-1] == "v1", (seen[:3], seen[-3:])
    assert Registry(root).model(NAME).serving_version() == "v1"


def test_rayline_predict_sends_a_files_rows_to_the_endpoint(apps, tmp_path, capsys, monkeypatch):
    import json

    import pandas as pd

    from rayline.cli import main

    source = tmp_path / "rows.csv"
    pd.DataFrame([{**row(i), "animal": "cat"} for i in range(3)]).to_csv(source, index=False)  # a label column too
    monkeypatch.setenv("RAYLINE_API_TOKEN", TOKEN)
    answers = {}
    for endpoint in (grpc_url("main"), apps["urls"]["main"]):
        out = tmp_path / f"{endpoint.split(':')[0]}.jsonl"
        assert main(["predict", "--endpoint", endpoint, "--input", str(source), "--output", str(out)]) == 0
        assert f"predicted 3 rows with model {NAME}/" in capsys.readouterr().out
        answers[endpoint] = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert len(set(map(tuple, answers.values()))) == 1 and len(answers[grpc_url("main")]) == 3
    monkeypatch.delenv("RAYLINE_API_TOKEN")
    assert main(["predict", "--endpoint", grpc_url("main"), "--input", str(source)]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
