"""The replica's HTTP front door: a raw ASGI app in front of the FastAPI app (api.py). No Ray here.

Every request passes the bearer-token check (when a token is set) and the body cap. The predict
routes are answered right here: FastAPI's routing, dependency and response layers cost more CPU
than the rest of a small request, and on a busy replica that CPU is taken from the model. Every
other route (`/healthz`, `/v1/model`, `/v1/models`, `/docs`, `/openapi.json`, 404s) goes on to
FastAPI, which also documents the predict routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/healthz"})
"""Paths that need no token: load balancers and Serve's health checks probe them."""
PREDICT_PATH = "/predict"
VERSION_PREDICT = re.compile(r"/v1/models/([^/]+)/predict")
NAMED_PREDICT = re.compile(r"/v1/models/([^/]+)/([^/]+)/predict")
NAMED_ROUTE = "/v1/models/{name}/{version}/predict"
TOKEN_ENV = "RAYLINE_API_TOKEN"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    """Largest request body accepted; larger ones get 413 before they are read in full."""
    request_timeout_s: float
    """Longest a predict request may take, queueing included; slower ones get 504."""


class Predictor(Protocol):
    """What the front door needs from the replica (replica.py's ModelServer)."""

    limits: Limits

    async def answer(
        self, name: str | None, version: str | None, body: bytes, content_type: str | None
    ) -> tuple[int, Any, Any]:
        """(HTTP status, JSON body, the model that answered, for `observe`) for one predict request."""
        ...

    def observe(self, route: str, model: Any, status: int, seconds: float) -> None: ...


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def token_digest(token: str | None) -> str | None:
    """The SHA-256 of a bearer token: what travels to replicas and is compared, never the token itself."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_matches(authorization: bytes, token_sha256: bytes) -> bool:
    """Whether an Authorization value ("Bearer <token>") carries the token whose hex SHA-256 is `token_sha256`."""
    scheme, _, token = authorization.partition(b" ")
    presented = hashlib.sha256(token.strip()).hexdigest().encode()  # an empty token too: equal lengths
    # Compare digests in constant time: equal length always, and no early exit on the first wrong byte.
    return hmac.compare_digest(presented, token_sha256) and scheme.lower() == b"bearer"


def env_token_digest() -> str | None:
    """The digest of RAYLINE_API_TOKEN in this process's environment; None when it is not set."""
    return token_digest(os.environ.get(TOKEN_ENV))


class FrontDoor:
    """Raw ASGI app: auth and body cap for every route, the predict routes handled directly."""

    def __init__(self, server: Predictor, docs_app: ASGIApp, *, token_sha256: str | None):
        self.server = server
        self.docs_app = docs_app
        self.token_sha256 = token_sha256.encode() if token_sha256 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            return await self.docs_app(scope, receive, send)
        path = route_path(scope)
        if self.token_sha256 is not None and path not in PUBLIC_PATHS and not self.authorized(scope):
            challenge = [(b"www-authenticate", b'Bearer realm="rayline"')]
            return await send_json(send, 401, error_body("missing or wrong bearer token"), challenge)
        if scope["method"] == "POST":
            if path == PREDICT_PATH:
                return await self.predict(scope, receive, send, (None, None), PREDICT_PATH)
            match = VERSION_PREDICT.fullmatch(path)
            if match:
                return await self.predict(scope, receive, send, (None, match[1]), "/v1/models/{version}/predict")
            match = NAMED_PREDICT.fullmatch(path)
            if match:
                return await self.predict(scope, receive, send, (match[1], match[2]), NAMED_ROUTE)
        if declared_length(scope) > self.server.limits.max_body_bytes:
            return await send_json(send, 413, too_large(self.server.limits.max_body_bytes))
        await self.docs_app(scope, receive, send)

    def authorized(self, scope: Scope) -> bool:
        return bearer_matches(header(scope, b"authorization") or b"", self.token_sha256)

    async def predict(
        self, scope: Scope, receive: Receive, send: Send, model: tuple[str | None, str | None], route: str
    ) -> None:
        """Answer one predict request for `model`: (name, version), either None for the served one's."""
        started = time.perf_counter()
        limits = self.server.limits
        label = None
        try:
            status, payload, label = await asyncio.wait_for(
                self._answer(scope, receive, model, limits.max_body_bytes), limits.request_timeout_s
            )
        except BodyTooLarge:
            status, payload = 413, too_large(limits.max_body_bytes)
        except asyncio.TimeoutError:
            status = 504
            payload = error_body(f"the request took longer than the {limits.request_timeout_s:g} s limit; retry later")
        except ClientGone:
            status, payload = 499, None
        except Exception as err:
            logger.exception("predict failed")
            status, payload = 500, error_body(f"internal error: {type(err).__name__}: {err}")
        if payload is not None:
            await send_json(send, status, payload)
        self.server.observe(route, label, status, time.perf_counter() - started)

    async def _answer(
        self, scope: Scope, receive: Receive, model: tuple[str | None, str | None], cap: int
    ) -> tuple[int, Any, Any]:
        if declared_length(scope) > cap:
            raise BodyTooLarge
        body = await read_body(receive, cap)
        content_type = header(scope, b"content-type")
        return await self.server.answer(*model, body, content_type.decode("latin-1") if content_type else None)


# ---------------------------------------------------------------- ASGI helpers


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as root_path)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def declared_length(scope: Scope) -> int:
    value = header(scope, b"content-length")
    try:
        return int(value) if value else 0
    except ValueError:
        return 0  # the server rejects malformed lengths before we see them; count what arrives instead


async def read_body(receive: Receive, cap: int) -> bytes:
    """The whole body, refusing it as soon as it grows past cap (chunked uploads declare no length)."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def error_body(error: str, detail: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"error": error, "detail": detail or []}


def too_large(cap: int) -> dict[str, Any]:
    msg = f"the request body is larger than the limit of {cap} bytes; send fewer rows per request"
    return error_body(msg, [{"loc": "body", "msg": msg}])


async def send_json(send: Send, status: int, payload: Any, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
    await send({"type": "http.response.body", "body": body})
