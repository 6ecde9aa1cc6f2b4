"""The documented HTTP surface of a replica: FastAPI routes, response models and JSON error handlers.

Routes: `POST /predict`, `POST /v1/models/{version}/predict`, `POST /v1/models/{name}/{version}/predict`,
`GET /healthz`, `GET /v1/model`, `GET /v1/models`, plus FastAPI's `/docs` and `/openapi.json`. The predict
routes are answered
by the front door (http.py) before FastAPI sees them; they are declared here too so the OpenAPI
document describes them, with the served model's features as the body schema, and so this app
works on its own. Every error, ours or the framework's (404, 405), is JSON: `{"error", "detail"}`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from fastapi import FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayline.registry_layout import NAME, VERSION
from rayline.serve.http import error_body, header

VERSION_PATTERN = f"^{VERSION.pattern}$"
NAME_PATTERN = f"^{NAME.pattern}$"
PREDICT_PATHS = ("/predict", "/v1/models/{version}/predict", "/v1/models/{name}/{version}/predict")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[dict[str, Any]]
    """Classification: {"label", "probabilities": {class: p}}; regression: {"value"}. One per row."""


class ErrorResponse(BaseModel):
    error: str
    detail: list[dict[str, str]]
    """One {"loc": "rows.3.pixel_7", "msg": ...} per problem."""


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503, 504)}


class Replica(Protocol):
    """What the routes need from the replica (replica.py's ModelServer)."""

    @property
    def primary(self) -> Any:
        """The served model (model.py's ServedModel): name, version, schema."""
        ...

    async def answer(
        self, name: str | None, version: str | None, body: bytes, content_type: str | None
    ) -> tuple[int, Any, Any]: ...

    def describe(self) -> dict[str, Any]: ...

    def list_models(self) -> dict[str, Any]: ...


def create_api(server: Replica) -> FastAPI:
    """The FastAPI app of one replica; routes are thin and call into the server."""
    api = FastAPI(
        title="rayline model server",
        description="Predictions from registered rayline model versions. Send JSON to POST /predict.",
    )
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(Exception, internal_error)

    @api.post(
        "/predict",
        summary="Predict with the served model version",
        responses={200: {"model": PredictResponse}, **ERRORS},
    )
    async def predict(request: Request) -> JSONResponse:
        return await answer(server, request, None, None)

    @api.post(
        "/v1/models/{version}/predict",
        summary="Predict with another version of the served model's name, loaded on demand (its features may differ)",
        responses={200: {"model": PredictResponse}, **ERRORS},
    )
    async def predict_version(
        request: Request, version: str = Path(pattern=VERSION_PATTERN, examples=["v1"])
    ) -> JSONResponse:
        return await answer(server, request, None, version)

    @api.post(
        "/v1/models/{name}/{version}/predict",
        summary="Predict with a version of any model name in the registry, loaded on demand",
        responses={200: {"model": PredictResponse}, **ERRORS},
    )
    async def predict_named(
        request: Request,
        name: str = Path(pattern=NAME_PATTERN, examples=["digits"]),
        version: str = Path(pattern=VERSION_PATTERN, examples=["v1"]),
    ) -> JSONResponse:
        return await answer(server, request, name, version)

    @api.get("/healthz", summary="Liveness and the served model's name and version (no token needed)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_name": server.primary.name, "model_version": server.primary.version}

    @api.get("/v1/model", summary="The served model: name, version, task, every metric, features, replica settings")
    async def model_info() -> dict[str, Any]:
        return finite_or_none(server.describe())

    @api.get("/v1/models", summary="Every version of every model name in the registry, with its metrics")
    async def models() -> dict[str, Any]:
        return finite_or_none(server.list_models())

    api.openapi = lambda: openapi_for(api, server)
    return api


async def answer(server: Replica, request: Request, name: str | None, version: str | None) -> JSONResponse:
    content_type = header(request.scope, b"content-type")
    body = await request.body()
    status, payload, _ = await server.answer(name, version, body, content_type and content_type.decode())
    return JSONResponse(payload, status_code=status)


def openapi_for(api: FastAPI, server: Replica) -> dict[str, Any]:
    """The OpenAPI document, rebuilt when the served version changes (its features may differ)."""
    primary = server.primary
    cached = getattr(api, "_rayline_openapi", None)
    if cached is not None and cached[0] is primary:
        return cached[1]
    spec = get_openapi(
        title=f"{api.title}: {primary.name} {primary.version}",
        version=primary.version,
        description=api.description,
        routes=api.routes,
    )
    for path in PREDICT_PATHS:
        spec["paths"][path]["post"]["requestBody"] = primary.schema.openapi_body()
    api._rayline_openapi = (primary, spec)
    return spec


async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(err.detail)), status_code=err.status_code, headers=err.headers)


async def internal_error(_: Request, err: Exception) -> JSONResponse:
    return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}"), status_code=500)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity (a diverged run's metrics may hold them): send null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value
