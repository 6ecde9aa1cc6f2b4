"""Production serving over real HTTP with the default ingress: HAProxy in front of the replicas.

Zero-downtime swaps, several versions side by side, bearer token, body cap, timeout, overload,
refused checkpoints, the metrics export, and every serving listener on loopback. test_serve_app.py
covers the same app behind Serve's own proxy (ingress: proxy).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import Counter

import httpx
import pytest

from http_client import http
from rayline.config import ServeConfig
from rayline.registry import ModelVersion, Registry, RegistryError
from serve_models import deploy_apps, flood, make_registry, model_name, row, tamper

PORT = 8127
NAME = model_name("classification")
TOKEN = "integration-test-token"
COMMON = {"port": PORT, "cpus_per_replica": 0.25}  # the default ingress: haproxy
APPS = {
    "swap": ServeConfig(route_prefix="/swap", app_name="swap", max_models_per_replica=1, **COMMON),
    "secure": ServeConfig(route_prefix="/secure", app_name="secure", max_body_bytes=4096, **COMMON),
    "slow": ServeConfig(
        route_prefix="/slow",
        app_name="slow",
        request_timeout_s=0.0001,  # shorter than any request's trip through the replica
        autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
        **COMMON,
    ),
    "tiny": ServeConfig(
        route_prefix="/tiny",
        app_name="tiny",
        max_ongoing_requests=1,
        max_queued_requests=1,
        retry_after_s=2,
        batch_wait_timeout_s=0.3,
        **COMMON,
    ),
}


@pytest.fixture(scope="module")
def apps(ray_cluster, tmp_path_factory):
    from rayline.serve import shutdown

    roots = {name: make_registry(tmp_path_factory.mktemp(name), versions=3 if name == "swap" else 1) for name in APPS}
    Registry(roots["swap"]).model(NAME).set_serving("v1")
    urls = deploy_apps(APPS, roots, secured="secure", token=TOKEN)
    yield {"urls": urls, "roots": roots}
    shutdown()


def predict(url: str, path: str = "/predict", **kwargs) -> httpx.Response:
    return http.post(f"{url}{path}", json={"rows": [row(1)]}, timeout=30, **kwargs)


def deployment_details(app: str) -> dict:
    from ray import serve

    return serve.context._get_global_client().get_serve_details()["applications"][app]["deployments"]["ModelServer"]


def replica_pids(app: str) -> set[int]:
    return {r["pid"] for r in deployment_details(app)["replicas"]}


class Stream:
    """Requests back to back from a few threads until stopped; records (status or error, version)."""

    def __init__(self, url: str, clients: int = 3):
        self.url = url
        self.results: list[tuple[object, str | None]] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stopped.is_set():
                try:
                    r = client.post("/predict", json={"rows": [row(2)]})
                    self.results.append((r.status_code, r.json().get("model_version")))
                except Exception as err:  # a dropped connection is exactly what this test looks for
                    self.results.append((repr(err), None))

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join()


def test_promote_and_rollback_drop_no_request(apps):
    from rayline.serve import promote, rollback

    url, root = apps["urls"]["swap"], apps["roots"]["swap"]
    assert http.get(f"{url}/v1/model").json()["model_version"] == "v1"
    pids = replica_pids("swap")
    with Stream(url) as stream:
        time.sleep(1)
        assert promote(root, NAME, "v2") == ["swap"]
        time.sleep(1)
        assert rollback(root, NAME) == (ModelVersion(NAME, "v1"), ["swap"])
        time.sleep(1)
        assert promote(root, NAME, "v3") == ["swap"]
        time.sleep(1)
    seen = Counter(stream.results)
    assert {status for status, _ in seen} == {200}, seen
    assert {version for _, version in seen} == {"v1", "v2", "v3"}, seen
    assert http.get(f"{url}/v1/model").json()["model_version"] == "v3"
    assert Registry(root).model(NAME).serving_version() == "v3"
    assert replica_pids("swap") == pids, "the replica was reconfigured in place, not replaced"


def test_versions_side_by_side(apps):
    url = apps["urls"]["swap"]
    answers = {}
    # max_models_per_replica is 1, so alternating versions evicts and reloads; answers stay right.
    for version in ("v1", "v2", "v1", "v3", "v2"):
        r = predict(url, f"/v1/models/{version}/predict")
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == version
        answers.setdefault(version, r.json()["predictions"])
        assert r.json()["predictions"] == answers[version]
    assert answers["v1"] != answers["v2"] != answers["v3"]  # each version has its own weights
    for bad in ("v9", "latest", "v1x"):
        r = predict(url, f"/v1/models/{bad}/predict")
        assert r.status_code == 404, r.text
        assert r.json()["detail"][0]["loc"] == "path.version"
    listed = http.get(f"{url}/v1/models").json()
    assert [m["model_version"] for m in listed["models"]] == ["v1", "v2", "v3"]
    assert {m["model_name"] for m in listed["models"]} == {NAME}


def test_bearer_token(apps):
    url = apps["urls"]["secure"]
    assert predict(url).status_code == 401
    assert predict(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get(f"{url}/v1/model").status_code == 401
    assert predict(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert http.get(f"{url}/healthz").status_code == 200
    assert predict(apps["urls"]["tiny"]).status_code == 200  # apps deployed without a token stay open


def test_body_cap(apps):
    url, auth = apps["urls"]["secure"], {"Authorization": f"Bearer {TOKEN}"}
    big = b'{"rows": [' + b",".join([b'{"x1": 1, "x2": 2, "pixel_7": 3, "color": "red"}'] * 200) + b"]}"
    assert len(big) > 4096
    r = http.post(f"{url}/predict", content=big, headers={**auth, "content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert "limit of 4096 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the cap applies to what arrives
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = http.post(f"{url}/predict", content=chunks(), headers={**auth, "content-type": "application/json"})
    assert r.status_code == 413
    assert predict(url, headers=auth).status_code == 200


def test_replica_and_queue_settings_reach_serve(apps):
    autoscaled = deployment_details("slow")["deployment_config"]
    assert autoscaled["autoscaling_config"]["min_replicas"] == 1
    assert autoscaled["autoscaling_config"]["max_replicas"] == 2
    assert autoscaled["autoscaling_config"]["target_ongoing_requests"] == 4
    tiny = deployment_details("tiny")["deployment_config"]
    assert (tiny["max_ongoing_requests"], tiny["max_queued_requests"]) == (1, 1)
    assert tiny["backpressure_config"] == {"status_code": 503, "retry_after_s": 2.0}
    assert tiny["user_config"]["batch_wait_timeout_s"] == 0.3


def test_request_over_the_time_limit_gets_504(apps):
    r = predict(apps["urls"]["slow"])
    assert r.status_code == 504
    assert "0.0001 s limit" in r.json()["error"]
    assert http.get(f"{apps['urls']['slow']}/healthz").status_code == 200  # only predict has the limit


def test_overload_is_refused_with_retry_after(apps):
    url = apps["urls"]["tiny"]

    began = time.monotonic()
    responses = asyncio.run(flood(url))
    assert time.monotonic() - began < 15
    codes = Counter(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "2" for r in refused)
    # Refused by HAProxy, which holds the replica to one request at a time and one waiting (ingress.py): the
    # replica's Python never saw them.
    assert {r.json()["error"] for r in refused} == {
        "overloaded: 1 requests already wait for each replica; retry in 2 s"
    }
    assert predict(url).status_code == 200


def test_bad_checkpoints_are_refused_before_anything_changes(apps, tmp_path):
    from rayline.serve import deploy, promote

    root = make_registry(tmp_path, versions=1)
    tamper(root, "v1")
    with pytest.raises(RegistryError, match="model.pt: contents do not match the checkpoint manifest"):
        deploy(root, serve_cfg=ServeConfig(app_name="broken", route_prefix="/broken", **COMMON))
    swap_root = apps["roots"]["swap"]
    tamper(swap_root, "v2", "preprocessor.json")
    with pytest.raises(RegistryError, match="preprocessor.json: contents do not match"):
        promote(swap_root, NAME, "v2")
    assert Registry(swap_root).model(NAME).serving_version() == "v3"
    assert predict(apps["urls"]["swap"]).json()["model_version"] == "v3"
    # Asking for it by name is a clear 503, and the replica keeps serving.
    r = predict(apps["urls"]["swap"], "/v1/models/v2/predict")
    assert r.status_code == 503 and "contents do not match" in r.json()["error"]
    assert predict(apps["urls"]["swap"]).status_code == 200


def test_metrics_reach_the_export_endpoint(apps):
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    swap = apps["urls"]["swap"]
    for _ in range(3):
        predict(swap)
    predict(swap, "/v1/models/v9/predict")
    # One sample per line; the route label itself holds braces ("/v1/models/{version}/predict").
    wanted = {
        "requests": r'ray_rayline_requests_total\{.*application="swap".*model_version="v3".*status="200"',
        "errors": r'ray_rayline_request_errors_total\{.*application="swap".*status="404"',
        "latency": r'ray_rayline_request_latency_ms_bucket\{.*application="swap".*model_version="v3"',
        "batch size": r'ray_rayline_batch_size_bucket\{.*application="swap".*model_version="v1"',
    }
    deadline = time.monotonic() + 60  # Ray exports custom metrics every few seconds
    while True:
        text = http.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        missing = [name for name, pattern in wanted.items() if not re.search(pattern, text)]
        if not missing:
            break
        assert time.monotonic() < deadline, f"not exported after 60 s: {missing}"
        time.sleep(2)


# ---------------------------------------------------------------- what listens where

SERVE_ACTORS = ("ray::ServeController", "ray::HAProxyManager", "ray::ProxyActor", "ray::ServeReplica:")
"""Process titles of Serve's actors (the fallback proxy is a ProxyActor)."""


def serving_processes() -> tuple[list, list]:
    """(HAProxy processes, Serve actor processes) of this session's cluster: this process started it, so all of
    them descend from it, and no other Ray on the machine is looked at."""
    import psutil  # Ray ships it

    haproxy, actors = [], []
    for process in psutil.Process().children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if command and command[0].rpartition("/")[2] == "haproxy":
            haproxy.append(process)
        elif command and command[0].startswith(SERVE_ACTORS):
            actors.append(process)
    return haproxy, actors


def listening(process) -> set[tuple[str, int]]:
    import psutil

    try:
        found = process.net_connections("tcp")
    except psutil.Error:  # gone since it was listed: a draining HAProxy, a replaced replica
        return set()
    return {(c.laddr.ip, c.laddr.port) for c in found if c.status == psutil.CONN_LISTEN}


def answers_http1(ip: str, port: int) -> bool:
    """Whether the listener is an HTTP/1 server; Ray's RPC servers (gRPC) speak HTTP/2 only and hang up."""
    host = "127.0.0.1" if ip in ("0.0.0.0", "::") else ip
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        try:
            return conn.recv(16).startswith(b"HTTP/1.")
        except (ConnectionResetError, TimeoutError):
            return False


def test_every_serving_listener_is_on_loopback(apps):
    """serve.host is 127.0.0.1: the endpoint, HAProxy's stats and metrics pages, every replica's own HTTP port and
    Serve's fallback proxy listen there and nowhere else. Ray's own RPC servers (each worker's core-worker port,
    each replica's inter-deployment gRPC) bind every interface in every Ray process, and are the cluster's
    (rayline.serve.ingress says why); they are told apart by not speaking HTTP/1."""
    for app, url in apps["urls"].items():
        assert http.get(f"{url}/healthz", timeout=30).status_code == 200, app
    haproxy, actors = serving_processes()

    haproxy_listens = set().union(*map(listening, haproxy))
    assert {ip for ip, _ in haproxy_listens} == {"127.0.0.1"}, haproxy_listens
    assert ("127.0.0.1", PORT) in haproxy_listens and len(haproxy_listens) >= 3, "endpoint, stats, metrics"

    listens = {(process.cmdline()[0].split(".")[0], process.pid): listening(process) for process in actors}
    replicas = [key for key in listens if key[0].startswith("ray::ServeReplica:")]
    assert len(replicas) >= len(APPS), listens
    for key in [*replicas, *(key for key in listens if key[0] == "ray::ProxyActor")]:
        assert any(ip == "127.0.0.1" for ip, _ in listens[key]), f"{key} serves HTTP on 127.0.0.1: {listens}"
    wide = {(key, address) for key, found in listens.items() for address in found if address[0] != "127.0.0.1"}
    exposed = {(key, address) for key, address in wide if answers_http1(*address)}
    assert not exposed, f"HTTP listeners beyond 127.0.0.1: {exposed}"
    print(f"Ray RPC listeners on every interface (not HTTP): {sorted(wide)}")
