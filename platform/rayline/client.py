"""A client for a running rayline endpoint, over HTTP (the standard library's urllib) or gRPC (grpcio): the same
calls, the same answers (the HTTP routes' JSON, as dicts), the same errors.

    from rayline.client import connect
    with connect("grpc://127.0.0.1:9000", token=None) as client:  # grpc://host:port/APP picks one Serve app
        client.predict([{"pixel_0": 0.0, ...}])  # {"model_name", "model_version", "predictions": [...]}

`rayline predict --endpoint URL` is built on it. Imports nothing of the serving side but the gRPC stubs.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from rayline.errors import RaylineError

TOKEN_ENV = "RAYLINE_API_TOKEN"
"""The bearer token a client sends when none is given (the one a deployment checks, see serve/http.py)."""
Row = dict[str, Any] | list[Any]


class EndpointError(RaylineError, RuntimeError):
    """The endpoint refused a call or could not be reached: its status and its message (which names the row and
    feature of a bad value)."""

    def __init__(self, status: str, message: str, detail: list[dict[str, str]] | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        """The HTTP status ("422") or the gRPC status code's name ("INVALID_ARGUMENT")."""
        self.message = message
        self.detail = detail or []


def connect(endpoint: str, *, token: str | None = None, timeout_s: float = 30.0) -> HttpClient | GrpcClient:
    """A client for `endpoint`: http://host:port[/prefix], https://..., or grpc://host:port. The token defaults to
    RAYLINE_API_TOKEN."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    parts = urlsplit(endpoint)
    if parts.scheme in ("http", "https") and parts.hostname:
        return HttpClient(endpoint, token=token, timeout_s=timeout_s)
    if parts.scheme == "grpc" and parts.hostname and parts.port:
        application = parts.path.strip("/") or None
        return GrpcClient(parts.netloc, token=token, timeout_s=timeout_s, application=application)
    raise EndpointError(
        "bad endpoint",
        f"{endpoint!r}: expected http://host:port[/prefix] or grpc://host:port[/application] (with its port)",
    )


CHUNK_ROWS = 1024
"""Rows per request when a table is sent: the server's limit per request (serve/schema.py's MAX_ROWS)."""


def predict_frame(
    client: HttpClient | GrpcClient, frame: Any, model_name: str | None, model_version: str | None
) -> dict:
    """Predictions for every row of a pandas DataFrame, sent CHUNK_ROWS at a time; columns the served model does
    not take (the label, ids) are left out. One answer: the model that answered and every row's prediction."""
    features = [f["name"] for f in client.model_info()["features"]]
    missing = [name for name in features if name not in frame.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise EndpointError("bad input", f"the input has no column for the model's feature(s) {shown}")
    rows = frame[features].astype(object).to_dict(orient="records")
    answer: dict[str, Any] = {"predictions": []}
    for start in range(0, len(rows), CHUNK_ROWS):
        part = client.predict(rows[start : start + CHUNK_ROWS], model_name, model_version)
        answer.update(model_name=part["model_name"], model_version=part["model_version"])
        answer["predictions"] += part["predictions"]
    return answer


class HttpClient:
    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def predict(self, rows: list[Row], model_name: str | None = None, model_version: str | None = None) -> dict:
        if model_name is not None and model_version is None:
            raise EndpointError("bad request", "over HTTP, a model name needs a version too (NAME/vN)")
        path = "/predict"
        if model_version is not None:
            path = (
                f"/v1/models/{model_name}/{model_version}/predict"
                if model_name
                else f"/v1/models/{model_version}/predict"
            )
        return self._call("POST", path, {"rows": [json_row(r) for r in rows]})

    def model_info(self) -> dict:
        return self._call("GET", "/v1/model")

    def list_models(self) -> dict:
        return self._call("GET", "/v1/models")

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        data = None if body is None else json.dumps(body, allow_nan=False, default=plain).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise http_error(err) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise EndpointError("unreachable", f"{self.url}: {reason}") from None

    def close(self) -> None:
        pass

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def http_error(err: urllib.error.HTTPError) -> EndpointError:
    try:
        body = json.loads(err.read())
        return EndpointError(str(err.code), body.get("error", err.reason), body.get("detail"))
    except (ValueError, AttributeError):
        return EndpointError(str(err.code), str(err.reason))


def json_row(row: Row) -> Row:
    """NaN (pandas' missing value) as null."""
    if isinstance(row, dict):
        return {k: None if is_nan(v) else v for k, v in row.items()}
    return [None if is_nan(v) else v for v in row]


def is_nan(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


def plain(value: Any) -> Any:
    """json.dumps' fallback: numpy's scalars as Python's."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"a value of type {type(value).__name__} cannot be sent as JSON: {value!r}")


class GrpcClient:
    def __init__(
        self, address: str, *, token: str | None = None, timeout_s: float = 30.0, application: str | None = None
    ):
        """application: the Serve app (serve.app_name) to call, where one gRPC port serves several."""
        import grpc

        from rayline.serve import rayline_pb2_grpc

        self.address = address
        self.timeout_s = timeout_s
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        if application:
            self.metadata.append(("application", application))
        self.channel = grpc.insecure_channel(address)
        self.stub = rayline_pb2_grpc.RaylineStub(self.channel)
        self._features: list[str] | None = None

    def predict(self, rows: list[Row], model_name: str | None = None, model_version: str | None = None) -> dict:
        from rayline.serve import rayline_pb2 as pb

        named = [self._named(r) for r in rows]
        request = pb.PredictRequest(
            rows=[pb.Row(values={k: proto_value(v) for k, v in r.items()}) for r in named],
            model_name=model_name or "",
            model_version=model_version or "",
        )
        reply = self._call(self.stub.Predict, request)
        return {
            "model_name": reply.model_name,
            "model_version": reply.model_version,
            "predictions": [prediction_dict(p) for p in reply.predictions],
        }

    def model_info(self) -> dict:
        from rayline.serve import rayline_pb2 as pb

        return json.loads(self._call(self.stub.ModelInfo, pb.ModelInfoRequest()).details_json)

    def list_models(self) -> dict:
        from rayline.serve import rayline_pb2 as pb

        reply = self._call(self.stub.ListModels, pb.ListModelsRequest())
        models = [
            {
                "model_name": m.model_name,
                "model_version": m.model_version,
                "registry_serving": m.registry_serving,
                "default_here": m.default_here,
                **json.loads(m.metrics_json),
            }
            for m in reply.models
        ]
        return {"default_model": reply.default_model, "default_version": reply.default_version, "models": models}

    def health(self) -> dict:
        from rayline.serve import rayline_pb2 as pb

        reply = self._call(self.stub.Health, pb.HealthRequest())
        return {"status": reply.status, "model_name": reply.model_name, "model_version": reply.model_version}

    def _named(self, row: Row) -> dict[str, Any]:
        """gRPC rows are maps: a list row takes the served model's feature names, in order."""
        if isinstance(row, dict):
            return row
        if self._features is None:
            self._features = [f["name"] for f in self.model_info()["features"]]
        if len(row) != len(self._features):
            raise EndpointError("bad request", f"a row of {len(row)} values; the model has {len(self._features)}")
        return dict(zip(self._features, row, strict=True))

    def _call(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return method(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as err:
            raise grpc_error(err, self.address) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def proto_value(value: Any) -> Any:
    from rayline.serve import rayline_pb2 as pb

    # numbers.Real takes numpy's numbers too (a DataFrame's values); NaN is pandas' missing value.
    if value is None or is_nan(value):
        return pb.Value(null=True)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return pb.Value(text=str(value))
    return pb.Value(number=float(value))


def prediction_dict(p: Any) -> dict[str, Any]:
    if p.HasField("value"):
        return {"value": p.value}
    return {"label": p.label, "probabilities": dict(p.probabilities)}


def grpc_error(err: Any, address: str) -> EndpointError:
    code = err.code()
    detail = []
    for key, value in err.trailing_metadata() or ():
        if key == "rayline-detail":
            detail = json.loads(value)
    message = err.details() or code.name
    if code.name == "UNAVAILABLE" and not detail:
        message = f"{address}: {message}"
    return EndpointError(code.name, message, detail)
