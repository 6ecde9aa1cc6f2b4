"""Faults in serving, over real HTTP on the session cluster: hostile requests, a replica SIGKILLed under
steady load, and a replica whose model calls never return."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from faults import (
    BackgroundLoad,
    block_model_calls,
    kill_serve_replica,
    register_tiny_model,
    serve_replicas,
    sigkill,
    wait_until,
)
from http_client import http
from rayline.checkpoint import file_sha256
from rayline.config import ServeConfig
from rayline.registry import Registry

pytestmark = pytest.mark.slow

PORT = 8127
APP = "faults"
BLOCKED_APP = "faults-blocked"
ROW = {"rows": [[0.1, 0.2, 0.3, 0.4]]}
REQUEST_TIMEOUT_S = 10.0
BLOCKED_TIMEOUT_S = 2.0


def deploy(root: Path, app: str, **serve) -> str:
    from rayline.serve import deploy

    cfg = ServeConfig(port=PORT, route_prefix=f"/{app}", app_name=app, **serve)
    return deploy(str(root), serve_cfg=cfg)


def replica_pids(app: str) -> set[int]:
    return {r.pid for r in serve_replicas(app)}


def registry_digests(root: Path) -> dict[Path, str]:
    registry = Registry(root).path
    return {p.relative_to(registry): file_sha256(p) for p in registry.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """Two replicas of a tiny registered model behind the default ingress (HAProxy)."""
    from rayline.serve import shutdown

    root = tmp_path_factory.mktemp("serve-faults")
    register_tiny_model(root)
    url = deploy(root, APP, num_replicas=2, request_timeout_s=REQUEST_TIMEOUT_S)
    yield root, url
    shutdown()


# ---------------------------------------------------------------- 8. hostile requests


def deeply_nested(depth: int) -> bytes:
    return b'{"rows": ' + b"[" * depth + b"]" * depth + b"}"


def wide_rows(rows: int) -> bytes:
    return json.dumps({"rows": [[1.0, 2.0, 3.0, 4.0]] * rows}).encode()


HOSTILE = {
    # name: (body, statuses that are a clear answer, words the error must hold: never "", which every error holds)
    "10 MB body": (b'{"rows": [[1, 2, 3, "' + b"9" * (10 << 20) + b'"]]}', {413}, "larger than the limit"),
    "100k-row batch": (wide_rows(100_000), {413}, "larger than the limit"),
    "2,000-row batch": (wide_rows(2_000), {422}, "limit of 1024"),
    "JSON nested 50,000 deep": (deeply_nested(50_000), {400}, "not valid JSON"),
    "non-numeric strings": (json.dumps({"rows": [["a", "b", "c", "d"]]}).encode(), {422}, "expected a number"),
    "NaN and Infinity": (b'{"rows": [[NaN, Infinity, -Infinity, 1]]}', {422}, "finite"),
    "a number beyond float64": (b'{"rows": [[1e999, 1, 2, 3]]}', {422}, "finite"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_hostile_request_gets_a_clear_error_and_the_replicas_survive(served, case):
    root, url = served
    body, statuses, words = HOSTILE[case]
    assert words.strip(), "an empty expected text matches every error message"
    before, registry_before = replica_pids(APP), registry_digests(root)

    began = time.monotonic()
    r = http.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=60)
    took = time.monotonic() - began

    assert r.status_code in statuses, r.text[:500]
    assert words in r.json()["error"], r.json()
    assert took < REQUEST_TIMEOUT_S, f"answered in {took:.1f} s"
    good = http.post(f"{url}/predict", json=ROW, timeout=30)
    assert good.status_code == 200, good.text
    assert replica_pids(APP) == before, "no replica died or was restarted"
    assert registry_digests(root) == registry_before, "the registry is untouched"


# ---------------------------------------------------------------- 5. a replica killed under load


def test_a_replica_killed_under_load_is_replaced_and_clients_barely_notice(served):
    _, url = served
    assert len(replica_pids(APP)) == 2
    concurrency = 4
    with BackgroundLoad(f"{url}/predict", ROW, concurrency=concurrency, timeout_s=REQUEST_TIMEOUT_S, retries=3) as load:
        load.wait_for(100)
        assert load.report.retried == 0, f"retries before the fault: {load.report.summary()}"
        killed = kill_serve_replica(APP)
        began = time.monotonic()
        wait_until(lambda: killed not in (p := replica_pids(APP)) and len(p) == 2, 180, "a replacement replica")
        recovery_s = time.monotonic() - began
        load.wait_for(load.report.requests + 100)
    report = load.report
    print(f"replica {killed} killed; replaced in {recovery_s:.1f} s; {report.summary()}")

    # Retries would hide dropped requests, so they are counted: SIGKILL loses only the requests that were
    # inside the killed replica at that moment, and a closed-loop client has at most one request in flight,
    # so at most `concurrency` attempts fail (each retried once, onto the surviving replica). More means
    # Serve kept routing to the dead replica, or the replacement dropped requests too.
    assert report.retried <= concurrency, report.summary()
    assert report.failed == 0, report.summary()
    assert all(
        e.startswith(("HTTP 5", "RemoteProtocolError", "ReadError", "ConnectError")) for e in report.retry_errors
    ), report.summary()
    assert report.timeouts == 0, "no request hung until the client gave up"
    assert report.slowest_s < REQUEST_TIMEOUT_S, report.summary()


# ---------------------------------------------------------------- 6. a replica that blocks


@pytest.fixture(scope="module")
def blocked(served):
    """One replica of its own app, whose model calls never return from the moment it is blocked."""
    from ray import serve

    root, _ = served
    url = deploy(root, BLOCKED_APP, num_replicas=1, request_timeout_s=BLOCKED_TIMEOUT_S)
    pid = block_model_calls(BLOCKED_APP)
    yield url, pid
    sigkill([pid])  # its blocked thread would hold up a graceful shutdown
    serve.delete(BLOCKED_APP)


def test_requests_to_a_blocked_replica_get_a_timely_error_not_a_hang(blocked):
    url, _ = blocked
    with BackgroundLoad(f"{url}/predict", ROW, concurrency=4, timeout_s=BLOCKED_TIMEOUT_S + 20, retries=0) as load:
        load.wait_for(12, timeout_s=60)
    report = load.report
    print(f"blocked replica: {report.summary()}")
    assert report.timeouts == 0, report.summary()
    assert set(report.statuses) == {504}, report.summary()
    limit = f"took longer than the {BLOCKED_TIMEOUT_S:g} s limit"
    assert all(limit in e for e in report.errors), report.summary()
    assert report.slowest_s < BLOCKED_TIMEOUT_S + 3, report.summary()


def test_a_blocked_replica_is_detected_and_replaced(blocked):
    url, pid = blocked
    wait_until(lambda: pid not in (p := replica_pids(BLOCKED_APP)) and len(p) == 1, 45, "a replacement replica")
    r = http.post(f"{url}/predict", json=ROW, timeout=30)
    assert r.status_code == 200, r.text
