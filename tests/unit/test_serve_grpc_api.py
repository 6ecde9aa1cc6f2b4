"""The gRPC methods' contract without Ray: rows become the HTTP body's rows, answers become messages, and every
HTTP status becomes its gRPC status code with the message naming what was wrong (the endpoint itself:
tests/integration/test_serve_grpc.py)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from rayline.serve import rayline_pb2 as pb
from rayline.serve.grpc_api import DETAIL_KEY, GrpcMethods, predict_response, rows_payload, status_code
from rayline.serve.http import Limits, token_digest
from rayline.serve.model import ServedModel
from serve_models import make_registry, row


class Context:
    """What Serve hands a method as grpc_context (ray.serve.grpc_util.RayServegRPCContext), as far as used."""

    def __init__(self, metadata=()):
        self.metadata = list(metadata)
        self.code = self.details = None
        self.trailing = []

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, trailing):
        self.trailing = trailing


class Server(GrpcMethods):
    """The replica's side the methods use, answering with a real ServedModel (no batching)."""

    def __init__(self, root: str, token: str | None = None, timeout_s: float = 5.0, delay_s: float = 0.0):
        self.primary = ServedModel.load(root)
        self.token_sha256 = token_digest(token)
        self.limits = Limits(max_body_bytes=1 << 20, request_timeout_s=timeout_s)
        self.delay_s = delay_s
        self.observed = []

    async def answer_payload(self, name, version, inputs_of):
        from rayline.serve.schema import RequestError

        await asyncio.sleep(self.delay_s)
        served = self.primary
        try:
            outputs = served.forward(inputs_of(served))
        except RequestError as err:
            return err.status, err.to_json(), served.ref
        return 200, {"model_name": "m", "model_version": "v1", "predictions": served.predictions(outputs)}, served.ref

    def observe(self, route, model, status, seconds):
        self.observed.append((route, status))


def request(*rows: dict) -> pb.PredictRequest:
    def value(v):
        if v is None:
            return pb.Value(null=True)
        return pb.Value(text=v) if isinstance(v, str) else pb.Value(number=v)

    return pb.PredictRequest(rows=[pb.Row(values={k: value(v) for k, v in r.items()}) for r in rows])


def test_rows_and_answers_convert_as_the_http_body():
    payload = rows_payload(request({"a": 1.5, "b": "red", "c": None}))
    assert payload == {"rows": [{"a": 1.5, "b": "red", "c": None}]}
    assert rows_payload(pb.PredictRequest(rows=[pb.Row(values={"a": pb.Value()})])) == {"rows": [{"a": None}]}
    answer = {"label": "cat", "probabilities": {"cat": 0.75, "dog": 0.25}}
    message = predict_response({"model_name": "m", "model_version": "v2", "predictions": [answer, {"value": 3.5}]})
    assert (
        message.predictions[0].label == "cat" and dict(message.predictions[0].probabilities) == answer["probabilities"]
    )
    assert message.predictions[1].HasField("value") and message.predictions[1].value == 3.5
    assert not message.predictions[0].HasField("value")


@pytest.mark.parametrize(
    ("http", "code"),
    [(422, "INVALID_ARGUMENT"), (400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (404, "NOT_FOUND")]
    + [(503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL")],
)
def test_http_statuses_map_to_grpc_codes(http, code):
    assert status_code(http) == getattr(grpc.StatusCode, code)


def test_predict_answers_and_a_bad_value_is_invalid_argument_naming_row_and_feature(tmp_path):
    server = Server(make_registry(tmp_path))
    context = Context()
    reply = asyncio.run(server.Predict(request(row(0), row(1)), context))
    assert context.code is None and len(reply.predictions) == 2
    bad = {**row(1), "x2": "oops"}
    asyncio.run(server.Predict(request(row(0), bad), context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details.startswith("invalid request: rows.1.x2: expected a number")
    (key, detail), *_ = context.trailing
    assert key == DETAIL_KEY and json.loads(detail)[0]["loc"] == "rows.1.x2"
    assert server.observed == [("grpc:Predict", 200), ("grpc:Predict", 422)]


def test_a_slow_answer_is_deadline_exceeded(tmp_path):
    server = Server(make_registry(tmp_path), timeout_s=0.05, delay_s=1.0)
    context = Context()
    asyncio.run(server.Predict(request(row(0)), context))
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED and "0.05 s limit" in context.details


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer wrong")], [("authorization", "secret")]])
def test_the_token_is_checked_on_every_method_but_health(tmp_path, metadata):
    server = Server(make_registry(tmp_path), token="secret")
    for method, message in ((server.Predict, request(row(0))), (server.ListModels, pb.ListModelsRequest())):
        context = Context(metadata)
        asyncio.run(method(message, context))
        assert context.code == grpc.StatusCode.UNAUTHENTICATED
    context = Context(metadata)
    assert asyncio.run(server.Health(pb.HealthRequest(), context)).status == "ok" and context.code is None
    context = Context([("authorization", "Bearer secret")])
    assert len(asyncio.run(server.Predict(request(row(0)), context)).predictions) == 1 and context.code is None


def test_another_model_name_without_a_version_is_refused(tmp_path):
    server = Server(make_registry(tmp_path))
    context = Context()
    asyncio.run(server.Predict(pb.PredictRequest(rows=request(row(0)).rows, model_name="other"), context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "needs a model_version" in context.details


def test_grpc_stubs_match_the_proto():
    """The committed stubs were generated from the committed rayline.proto (regenerate both together)."""
    from pathlib import Path

    proto = (Path(pb.__file__).parent / "rayline.proto").read_text()
    for rpc in ("Predict", "ModelInfo", "ListModels", "Health"):
        assert f"rpc {rpc}(" in proto
        assert rpc in pb.DESCRIPTOR.services_by_name["Rayline"].methods_by_name
