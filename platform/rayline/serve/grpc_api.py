"""The replica's gRPC methods (service rayline.Rayline, rayline.proto), beside the HTTP front door (http.py).

Serve's gRPC listener (its proxy, or with HAProxy each replica's own) calls the deployment method named like the
RPC (`Predict`, `ModelInfo`, `ListModels`, `Health`) with the request message and a `grpc_context`. The contract
is HTTP's: a request's rows become the JSON body's `{"rows": [{feature: value}]}` and take the same validation,
batching and model routing (replica.py's `answer_payload`); each HTTP status maps to a gRPC status code, with the
HTTP body's error message as the details (it names the row and feature) and its problem list as JSON in the
trailing metadata `rayline-detail`. Metrics are the HTTP routes', under routes `grpc:<method>` and the HTTP status
the answer would have had.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from rayline.serve import rayline_pb2 as pb
from rayline.serve.http import bearer_matches, error_body

logger = logging.getLogger(__name__)

SERVICER = "rayline.serve.rayline_pb2_grpc.add_RaylineServicer_to_server"
"""What Serve's gRPCOptions.grpc_servicer_functions lists to open the gRPC endpoint."""
DETAIL_KEY = "rayline-detail"
"""Trailing metadata: the HTTP error body's detail list as JSON ([{"loc", "msg"}, ...])."""
UNAUTHENTICATED = error_body("missing or wrong bearer token in the metadata 'authorization: Bearer <token>'")
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(http_status: int) -> grpc.StatusCode:
    return STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)


def value_of(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number":
        return value.number
    if kind == "text":
        return value.text
    return None  # null, or nothing set


def rows_payload(request: pb.PredictRequest) -> dict[str, Any]:
    """The rows as the HTTP body carries them, for the same validation."""
    return {"rows": [{name: value_of(v) for name, v in row.values.items()} for row in request.rows]}


def predict_response(payload: dict[str, Any]) -> pb.PredictResponse:
    predictions = []
    for answer in payload["predictions"]:
        if "value" in answer:
            predictions.append(pb.Prediction(value=answer["value"]))
        else:
            predictions.append(pb.Prediction(label=answer["label"], probabilities=answer["probabilities"]))
    return pb.PredictResponse(
        model_name=payload["model_name"], model_version=payload["model_version"], predictions=predictions
    )


class GrpcMethods:
    """Mixed into replica.py's ModelServer: its answer_payload, observe, limits, token and metadata do the work."""

    token_sha256: str | None
    limits: Any
    primary: Any
    answer_payload: Callable
    observe: Callable
    describe: Callable
    list_models: Callable

    async def Predict(self, request: pb.PredictRequest, grpc_context: Any) -> pb.PredictResponse:  # noqa: N802
        started = time.perf_counter()
        status, payload, label = await self._grpc_answer(request, grpc_context)
        self.observe("grpc:Predict", label, status, time.perf_counter() - started)
        if status != 200:
            return refuse(grpc_context, status, payload)
        return predict_response(payload)

    async def _grpc_answer(self, request: pb.PredictRequest, grpc_context: Any) -> tuple[int, dict[str, Any], Any]:
        if not self._grpc_authorized(grpc_context):
            return 401, UNAUTHENTICATED, None
        limits = self.limits
        if request.ByteSize() > limits.max_body_bytes:
            msg = f"the request is larger than the limit of {limits.max_body_bytes} bytes; send fewer rows per request"
            return 413, error_body(msg, [{"loc": "body", "msg": msg}]), None
        name, version = request.model_name or None, request.model_version or None
        if name is not None and version is None and name != self.primary.name:
            msg = f"model_name {name!r} needs a model_version (only the served model {self.primary.name} needs none)"
            return 400, error_body(msg, [{"loc": "model_version", "msg": msg}]), None
        payload = rows_payload(request)
        try:
            return await asyncio.wait_for(
                self.answer_payload(name, version, lambda served: served.inputs_of(payload)), limits.request_timeout_s
            )
        except asyncio.TimeoutError:
            msg = f"the request took longer than the {limits.request_timeout_s:g} s limit; retry later"
            return 504, error_body(msg), None
        except Exception as err:
            logger.exception("gRPC predict failed")
            return 500, error_body(f"internal error: {type(err).__name__}: {err}"), None

    async def ModelInfo(self, request: pb.ModelInfoRequest, grpc_context: Any) -> pb.ModelInfoResponse:  # noqa: N802
        if not self._grpc_authorized(grpc_context):
            return refuse(grpc_context, 401, UNAUTHENTICATED, pb.ModelInfoResponse)
        info = json_safe(self.describe())
        return pb.ModelInfoResponse(
            model_name=info["model_name"],
            model_version=info["model_version"],
            task=info["task"],
            label=info["label"],
            classes=info["classes"] or [],
            features=[f["name"] for f in info["features"]],
            runtime=info["runtime"],
            details_json=json.dumps(info),
        )

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context: Any) -> pb.ListModelsResponse:  # noqa: N802
        if not self._grpc_authorized(grpc_context):
            return refuse(grpc_context, 401, UNAUTHENTICATED, pb.ListModelsResponse)
        listing = json_safe(self.list_models())
        entries = []
        for m in listing["models"]:
            metrics = {key: m[key] for key in ("metrics", "test_metrics", "evaluation")}
            entries.append(
                pb.ModelEntry(
                    model_name=m["model_name"],
                    model_version=m["model_version"],
                    registry_serving=m["registry_serving"],
                    default_here=m["default_here"],
                    metrics_json=json.dumps(metrics),
                )
            )
        return pb.ListModelsResponse(
            default_model=listing["default_model"], default_version=listing["default_version"], models=entries
        )

    async def Health(self, request: pb.HealthRequest, grpc_context: Any) -> pb.HealthResponse:  # noqa: N802
        primary = self.primary
        return pb.HealthResponse(status="ok", model_name=primary.name, model_version=primary.version)

    def _grpc_authorized(self, grpc_context: Any) -> bool:
        if not self.token_sha256:
            return True
        values = [v for k, v in grpc_context.invocation_metadata() if k.lower() == "authorization"]
        presented = values[0] if values else ""
        presented = presented.encode() if isinstance(presented, str) else presented
        return bearer_matches(presented, self.token_sha256.encode())


def refuse(grpc_context: Any, status: int, payload: dict[str, Any] | None, response: type = pb.PredictResponse) -> Any:
    """Set the gRPC status for an HTTP status and error body; the (empty) `response` message to return with it."""
    grpc_context.set_code(status_code(status))
    grpc_context.set_details((payload or {}).get("error") or f"HTTP status {status}")
    detail = (payload or {}).get("detail")
    if detail:
        grpc_context.set_trailing_metadata([(DETAIL_KEY, json.dumps(detail))])
    return response()


def json_safe(value: Any) -> Any:
    from rayline.serve.api import finite_or_none

    return finite_or_none(value)
