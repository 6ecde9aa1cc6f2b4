"""The Serve deployment: one registry version behind a FastAPI app (api.py), with batched inference.

Each replica loads its checkpoint once, in `__init__`. A request is validated and preprocessed on
its own (so one bad request never fails its neighbours), then its rows join a `@serve.batch`
queue; the model runs once per batch and each request gets its own rows back.

`build_app`, `build` (for `serve run` / `serve deploy`) and `deploy` turn a registry version into
a running application.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from rayline.config import ServeConfig
from rayline.data.errors import DataError
from rayline.registry import Registry
from rayline.serve.api import create_api, error_response
from rayline.serve.schema import MAX_ROWS, RequestError, RequestSchema, invalid, problem

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


def input_columns(features: list[dict[str, Any]]) -> list[str]:
    """The feature behind each model input column: one per numeric feature, one per category."""
    widths = [len(f["categories"]) if f["kind"] == "categorical" else 1 for f in features]
    return [f["name"] for f, width in zip(features, widths, strict=True) for _ in range(width)]


def require_finite_outputs(outputs: np.ndarray) -> None:
    # The weights are checked when the app is built, so non-finite outputs come from the inputs.
    bad = np.flatnonzero(~np.isfinite(outputs).all(axis=tuple(range(1, outputs.ndim))))
    if len(bad):
        msg = "the model's output for this row is not finite; its values lie far outside the training data"
        raise invalid(422, [problem(f"rows.{r}", msg) for r in bad])


def require_finite_weights(model: torch.nn.Module, version: str) -> None:
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
    if bad:
        raise ValueError(f"model version {version} holds NaN or infinite weights in {bad[:5]}; it cannot be served")


@serve.deployment
@serve.ingress()
class ModelServer:
    """One replica: the model, its preprocessor and request schema, loaded once from the registry."""

    def __init__(self, storage_root: str, version: str, max_rows: int = MAX_ROWS):
        # Replicas share the node's cores with the proxy and each other: scale out with
        # num_replicas, not with intra-op threads that would fight over the same cores.
        torch.set_num_threads(1)
        registry = Registry(storage_root)
        loaded = registry.load(version)
        self.version = loaded.version
        self.model = loaded.model
        self.preprocessor = loaded.preprocessor
        self.record = registry.record(self.version)
        self.schema = RequestSchema(self.preprocessor.feature_schema(), max_rows=max_rows)
        self.input_columns = input_columns(self.schema.features)
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
            x_bf = self._inputs(await request.body(), request.headers.get("content-type"))
            outputs = await self._infer(x_bf)
            require_finite_outputs(outputs)
            predictions = self.preprocessor.decode(outputs)
        except RequestError as err:
            return JSONResponse(err.to_json(), status_code=err.status)
        except Exception as err:
            logger.exception("inference failed")
            return error_response(500, f"inference failed: {type(err).__name__}: {err}")
        self.counters["requests_served"] += 1
        return JSONResponse({"model_version": self.version, "predictions": predictions})

    def _inputs(self, body: bytes, content_type: str | None) -> np.ndarray:
        frame = self.schema.parse(body, content_type)
        try:
            with np.errstate(over="ignore"):  # overflow is reported per row and feature just below
                x_bf = self.preprocessor.transform_features(frame)
        except DataError as err:
            raise RequestError(422, str(err), [problem("rows", str(err))]) from None
        # Numbers within float32 range can still overflow it once scaled by a small std.
        rows, columns = np.nonzero(~np.isfinite(x_bf))
        if len(rows):
            msg = "is too large in magnitude for the model (it overflows float32 once scaled)"
            problems = []
            for r, c in zip(rows, columns, strict=True):
                name = self.input_columns[c]
                problems.append(problem(f"rows.{r}.{name}", f"{float(frame[name].iloc[r]):g} {msg}"))
            raise invalid(422, problems)
        return x_bf

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
        return {
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

    The host and port only apply when this starts Serve; a Serve instance already running on the
    cluster keeps its own. With blocking=True this returns only after Ctrl-C, so callers that
    want to print the URL first should deploy with blocking=False and wait themselves.
    """
    app, cfg = _bind(storage_root, version, serve_cfg)
    quiet = {"log_level": "WARNING"}
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=quiet)
    url = endpoint_url(cfg)
    serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, logging_config=quiet, blocking=blocking)
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
    require_finite_weights(loaded.model, loaded.version)
    cfg = serve_cfg or loaded.config.serve
    batching = BatchConfig(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
    deployment = ModelServer.options(
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica},
        user_config=batching.model_dump(),
    )
    return deployment.bind(root, loaded.version), cfg
