"""The Serve deployment: one registry version behind a FastAPI app, with batched inference.

Each replica loads its checkpoint once, in `__init__`. A request is validated and preprocessed on
its own (so one bad request never fails its neighbours), then its rows join a `@serve.batch`
queue; the model runs once per batch and each request gets its own rows back.

Routes: `POST /predict`, `GET /healthz`, `GET /v1/model`, plus FastAPI's `/docs` and
`/openapi.json`, whose `/predict` body schema lists this model's features.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayline.config import ServeConfig
from rayline.data.errors import DataError
from rayline.registry import Registry
from rayline.serve.schema import MAX_ROWS, RequestError, RequestSchema

logger = logging.getLogger(__name__)


class BatchConfig(BaseModel):
    """The deployment's `user_config`: `serve deploy` can change it without restarting replicas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(default=ServeConfig().max_batch_size, gt=0)
    """Most rows in one forward pass; larger requests are cut into pieces of this size."""
    batch_wait_timeout_s: float = Field(default=ServeConfig().batch_wait_timeout_s, ge=0.0)
    """How long a batch waits to fill before it runs."""


def count_rows(inputs: list[np.ndarray]) -> int:
    return sum(len(x) for x in inputs)


def error_response(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": []}, status_code=status)


@serve.deployment
@serve.ingress()
class ModelServer:
    """One replica: the model, its preprocessor and request schema, loaded once from the registry."""

    def __init__(self, storage_root: str, version: str, max_rows: int = MAX_ROWS):
        # Replicas share 2 cores with the proxy; intra-op threads would only fight over them.
        torch.set_num_threads(1)
        registry = Registry(storage_root)
        loaded = registry.load(version)
        self.version = loaded.version
        self.model = loaded.model
        self.preprocessor = loaded.preprocessor
        self.record = registry.record(self.version)
        self.schema = RequestSchema(self.preprocessor.feature_schema(), max_rows=max_rows)
        self.batching = BatchConfig()
        self.counters = {"requests_served": 0, "rows_served": 0, "batches_served": 0}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batching = BatchConfig.model_validate(user_config or {})
        self._run_batch.set_max_batch_size(self.batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, after __init__, so the OpenAPI body schema is this model's features.
        return create_api(self)

    # -------------------------------------------------------- request path

    async def predict(self, request: Request) -> JSONResponse:
        try:
            frame = self.schema.parse(await request.body(), request.headers.get("content-type"))
            x_bf = self.preprocessor.transform_features(frame)
        except RequestError as err:
            return JSONResponse(err.to_json(), status_code=err.status)
        except DataError as err:
            return error_response(422, str(err))
        try:
            outputs = await self._infer(x_bf)
            if not np.isfinite(outputs).all():
                return error_response(500, "the model produced non-finite outputs for this request")
            predictions = self.preprocessor.decode(outputs)
        except Exception as err:
            logger.exception("inference failed for a request of %d row(s)", len(x_bf))
            return error_response(500, f"inference failed: {type(err).__name__}: {err}")
        self.counters["requests_served"] += 1
        return JSONResponse({"model_version": self.version, "predictions": predictions})

    async def _infer(self, x_bf: np.ndarray) -> np.ndarray:
        # Cut big requests so that no forward pass holds more than max_batch_size rows.
        n = self.batching.max_batch_size
        pieces = [x_bf[i : i + n] for i in range(0, len(x_bf), n)]
        outputs = await asyncio.gather(*(self._run_batch(piece) for piece in pieces))
        return np.concatenate(outputs)

    @serve.batch(
        max_batch_size=BatchConfig().max_batch_size,
        batch_wait_timeout_s=BatchConfig().batch_wait_timeout_s,
        batch_size_fn=count_rows,
    )
    async def _run_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x_bf = np.concatenate(inputs)
        # In a thread: torch releases the GIL, so the next requests are parsed while the model runs.
        out_bo = await asyncio.to_thread(self._forward, x_bf)
        self.counters["batches_served"] += 1
        self.counters["rows_served"] += len(x_bf)
        return np.split(out_bo, np.cumsum([len(x) for x in inputs])[:-1])

    def _forward(self, x_bf: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x_bf)).numpy()

    # -------------------------------------------------------- metadata

    def describe(self) -> dict[str, Any]:
        record = self.record
        return finite_or_none(
            {
                "model_version": self.version,
                "pipeline": record.get("pipeline"),
                "run_name": record.get("run_name"),
                "task": self.preprocessor.task,
                "label": self.preprocessor.label,
                "classes": self.preprocessor.classes,
                "features": self.schema.features,
                "metrics": record.get("metrics", {}),
                "test_metrics": record.get("test_metrics", {}),
                "created_at": record.get("created_at"),
                "data_fingerprint": record.get("data_fingerprint"),
                "code_version": record.get("code_version"),
                "serving": {
                    "max_rows_per_request": self.schema.max_rows,
                    **self.batching.model_dump(),
                    **self.counters,  # this replica's counts since it started
                },
            }
        )


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
        summary="Predict for 1 to max_rows rows",
        openapi_extra={"requestBody": server.schema.openapi_body()},
        responses={
            200: {"model": PredictResponse},
            **{code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 500)},
        },
    )
    async def predict(request: Request) -> JSONResponse:
        return await server.predict(request)

    @api.get("/healthz", summary="Liveness and the served model version")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_version": server.version}

    @api.get("/v1/model", summary="The served model: version, task, metrics, features, replica counters")
    async def model_info() -> dict[str, Any]:
        return server.describe()

    return api


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[dict[str, Any]]
    """Classification: {"label", "probabilities": {class: p}}; regression: {"value"}. One per row."""


class ErrorResponse(BaseModel):
    error: str
    detail: list[dict[str, str]]
    """One {"loc": "rows.3.pixel_7", "msg": ...} per problem."""


async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail), "detail": []}, status_code=err.status_code)


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


# ---------------------------------------------------------------- building and deploying


def build_app(storage_root: str, version: str | None = None, serve_cfg: ServeConfig | None = None) -> Application:
    """The bound deployment for one registry version (default: the serving one).

    `serve_cfg` defaults to the `serve` section of the config the model was trained with.
    """
    app, _ = _bind(storage_root, version, serve_cfg)
    return app


class BuildArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage_root: str
    """The pipeline's storage.root (the registry is under it)."""
    version: str | None = None
    """Registry version such as "v3"; the serving version when omitted."""


def build(args: dict[str, Any]) -> Application:
    """App builder for `serve run` / `serve deploy`: `import_path: rayline.serve.app:build`."""
    parsed = BuildArgs.model_validate(args)
    return build_app(parsed.storage_root, parsed.version)


def deploy(
    storage_root: str,
    version: str | None = None,
    serve_cfg: ServeConfig | None = None,
    *,
    blocking: bool = False,
) -> str:
    """Start Serve's HTTP proxy, run the app, and return the endpoint's base URL.

    With blocking=True this returns only after Ctrl-C; callers that want to print the URL first
    should deploy with blocking=False and wait themselves.
    """
    app, cfg = _bind(storage_root, version, serve_cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    url = endpoint_url(cfg)
    serve.run(
        app,
        name=cfg.app_name,
        route_prefix=cfg.route_prefix,
        logging_config={"log_level": "WARNING"},
        blocking=blocking,
    )
    return url


def shutdown() -> None:
    """Stop every Serve application and the proxy; the Ray cluster keeps running."""
    serve.shutdown()


def endpoint_url(cfg: ServeConfig) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def _bind(storage_root: str, version: str | None, serve_cfg: ServeConfig | None) -> tuple[Application, ServeConfig]:
    # Replicas run elsewhere: give them an absolute root and a pinned version, so a later change of
    # the serving version never mixes two models in one deployment.
    root = str(Path(storage_root).expanduser().resolve())
    # Loading here checks the checkpoint (manifest and weights) before any replica is started.
    loaded = Registry(root).load(version)
    cfg = serve_cfg or loaded.config.serve
    batching = BatchConfig(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
    deployment = ModelServer.options(
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica},
        user_config=batching.model_dump(),
    )
    return deployment.bind(root, loaded.version), cfg
