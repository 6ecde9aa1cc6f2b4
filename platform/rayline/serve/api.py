"""The HTTP surface of one replica: FastAPI routes, response models and JSON error handlers.

Routes: `POST /predict`, `GET /healthz`, `GET /v1/model`, plus FastAPI's `/docs` and
`/openapi.json`, whose `/predict` body schema lists the served model's features.
Every error, ours or the framework's (404, 405), is JSON: `{"error": ..., "detail": [...]}`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from rayline.serve.app import ModelServer


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[dict[str, Any]]
    """Classification: {"label", "probabilities": {class: p}}; regression: {"value"}. One per row."""


class ErrorResponse(BaseModel):
    error: str
    detail: list[dict[str, str]]
    """One {"loc": "rows.3.pixel_7", "msg": ...} per problem."""


def create_api(server: ModelServer) -> FastAPI:
    """The FastAPI app of one replica; routes are thin and call into the server."""
    api = FastAPI(
        title=f"rayline model {server.record.get('pipeline', '')}".strip(),
        version=server.version,
        description="Predictions from one registered rayline model version. Send JSON to POST /predict.",
    )
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(Exception, internal_error)

    @api.post(
        "/predict",
        summary=f"Predict for 1 to {server.schema.max_rows} rows",
        openapi_extra={"requestBody": server.schema.openapi_body()},
        responses={
            200: {"model": PredictResponse},
            **{code: {"model": ErrorResponse} for code in (400, 415, 422, 500)},
        },
    )
    async def predict(request: Request) -> JSONResponse:
        return await server.predict(request)

    @api.get("/healthz", summary="Liveness and the served model version")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_version": server.version}

    @api.get("/v1/model", summary="The served model: version, task, metrics, features, replica counters")
    async def model_info() -> dict[str, Any]:
        return finite_or_none(server.describe())

    return api


def error_response(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": []}, status_code=status)


async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    body = {"error": str(err.detail), "detail": []}
    return JSONResponse(body, status_code=err.status_code, headers=err.headers)


async def internal_error(_: Request, err: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(err).__name__}: {err}")


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity (a diverged run's metrics may hold them): send null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value
