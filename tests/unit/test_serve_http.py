"""The replica's front door without Ray: bearer token, body cap, timeout, routing, metrics hook."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI

from rayline.serve.http import FrontDoor, Limits, token_digest

TOKEN = "s3cret-token"


class FakeServer:
    """Echoes what the front door passed on; sleeps when asked to, raises when asked to."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.observed: list[tuple[str, str | None, int]] = []

    async def answer(self, name, version, body, content_type):
        if body == b"sleep":
            await asyncio.sleep(10)
        if body == b"boom":
            raise RuntimeError("kaput")
        payload = {"name": name, "version": version, "size": len(body), "content_type": content_type}
        return 200, payload, f"{name or 'm'}/{version or 'v1'}"

    def observe(self, route, model, status, seconds):
        assert seconds >= 0
        self.observed.append((route, model, status))


def docs_app() -> FastAPI:
    api = FastAPI()

    @api.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @api.get("/v1/model")
    async def model():
        return {"model_version": "v1"}

    return api


def door(token: str | None = None, **limits) -> tuple[FrontDoor, FakeServer]:
    server = FakeServer(Limits(**{"max_body_bytes": 1000, "request_timeout_s": 5.0, **limits}))
    return FrontDoor(server, docs_app(), token_sha256=token_digest(token)), server


def client(app: FrontDoor, root_path: str = "") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, root_path=root_path), base_url="http://t")


async def call(app: FrontDoor, method: str, path: str, root_path: str = "", **kwargs) -> httpx.Response:
    async with client(app, root_path) as c:
        return await c.request(method, root_path + path, **kwargs)


def test_predict_routes_reach_the_server_and_are_observed():
    app, server = door()
    r = asyncio.run(
        call(app, "POST", "/predict", content=b'{"rows": []}', headers={"content-type": "application/json"})
    )
    assert r.status_code == 200
    assert r.json() == {"name": None, "version": None, "size": 12, "content_type": "application/json"}
    r = asyncio.run(call(app, "POST", "/v1/models/v7/predict", content=b"{}"))
    assert (r.json()["name"], r.json()["version"]) == (None, "v7")
    r = asyncio.run(call(app, "POST", "/v1/models/housing/v2/predict", content=b"{}"))
    assert (r.json()["name"], r.json()["version"]) == ("housing", "v2")
    assert server.observed == [
        ("/predict", "m/v1", 200),
        ("/v1/models/{version}/predict", "m/v7", 200),
        ("/v1/models/{name}/{version}/predict", "housing/v2", 200),
    ]
    assert asyncio.run(call(app, "POST", "/v1/models/a/b/c/predict", content=b"{}")).status_code == 404
    # Everything else goes on to FastAPI.
    assert asyncio.run(call(app, "GET", "/v1/model")).json() == {"model_version": "v1"}
    assert asyncio.run(call(app, "GET", "/predict")).status_code == 404  # the fake FastAPI app has no such route


def test_route_prefix_is_stripped():
    app, _ = door()
    r = asyncio.run(call(app, "POST", "/v1/models/v2/predict", root_path="/clf", content=b"{}"))
    assert r.status_code == 200 and r.json()["version"] == "v2"
    r = asyncio.run(call(app, "POST", "/v1/models/reg/v2/predict", root_path="/clf", content=b"{}"))
    assert r.status_code == 200 and (r.json()["name"], r.json()["version"]) == ("reg", "v2")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"authorization": f"Basic {TOKEN}"}, 401),
        ({"authorization": TOKEN}, 401),
        ({"authorization": f"Bearer {TOKEN}"}, 200),
        ({"authorization": f"bearer {TOKEN}"}, 200),
    ],
    ids=["none", "wrong", "other scheme", "no scheme", "right", "lowercase scheme"],
)
def test_bearer_token(headers, status):
    app, server = door(TOKEN)
    for method, path in (("POST", "/predict"), ("GET", "/v1/model"), ("GET", "/openapi.json")):
        r = asyncio.run(call(app, method, path, content=b"{}" if method == "POST" else None, headers=headers))
        assert r.status_code == status, (path, r.text)
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "token" in r.json()["error"]
    assert all(status == 200 for *_, status in server.observed)  # refused requests never reach the model


def test_healthz_needs_no_token():
    app, _ = door(TOKEN)
    assert asyncio.run(call(app, "GET", "/healthz")).status_code == 200


def test_no_token_configured_means_open():
    app, _ = door(None)
    assert asyncio.run(call(app, "GET", "/v1/model")).status_code == 200


def test_declared_body_over_the_cap_is_refused_unread():
    app, server = door(max_body_bytes=100)
    for path in ("/predict", "/v1/models/v1/predict", "/v1/model"):
        r = asyncio.run(call(app, "POST", path, content=b"x" * 101))
        assert r.status_code == 413, path
        assert "limit of 100 bytes" in r.json()["error"]
    assert asyncio.run(call(app, "POST", "/predict", content=b"x" * 100)).status_code == 200
    assert [status for *_, status in server.observed] == [413, 413, 200]


def test_streamed_body_over_the_cap_is_refused():
    # Chunked uploads declare no length: the cap applies to what actually arrives.
    app, _ = door(max_body_bytes=100)
    chunks = [b"x" * 60, b"x" * 60, b"never read"]
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "", "headers": []}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert chunks == [b"never read"]
    assert json.loads(sent[1]["body"])["detail"][0]["loc"] == "body"


def test_slow_request_times_out_with_504():
    app, server = door(request_timeout_s=0.05)
    r = asyncio.run(call(app, "POST", "/predict", content=b"sleep"))
    assert r.status_code == 504
    assert "0.05 s limit" in r.json()["error"]
    assert server.observed == [("/predict", None, 504)]  # no model answered


def test_unexpected_error_is_a_json_500():
    app, _ = door()
    r = asyncio.run(call(app, "POST", "/predict", content=b"boom"))
    assert r.status_code == 500
    assert r.json()["error"] == "internal error: RuntimeError: kaput"
