"""rayline.client over real gRPC, without Ray: a grpcio server on 127.0.0.1 hosts the replica's gRPC methods
(grpc_api.GrpcMethods with a real ServedModel) behind Serve's own context wrapper, as a replica does."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import pytest
from ray.serve.grpc_util import RayServegRPCContext

from rayline.client import EndpointError, connect
from rayline.runtime import free_port
from rayline.serve import rayline_pb2_grpc
from rayline.serve.grpc_api import GrpcMethods
from rayline.serve.http import Limits, token_digest
from rayline.serve.model import ServedModel
from rayline.serve.schema import RequestError
from serve_models import make_registry, row

TOKEN = "client-test-token"


class Methods(GrpcMethods):
    """The replica's side of the gRPC methods, with one real model and no batching."""

    def __init__(self, root: str):
        self.primary = ServedModel.load(root)
        self.token_sha256 = token_digest(TOKEN)
        self.limits = Limits(max_body_bytes=1 << 20, request_timeout_s=10.0)

    async def answer_payload(self, name, version, inputs_of):
        served = self.primary
        if version not in (None, served.version):
            return 404, {"error": f"model {served.name} has no version {version}", "detail": []}, None
        try:
            outputs = served.forward(inputs_of(served))
        except RequestError as err:
            return err.status, err.to_json(), served.ref
        payload = {"model_name": served.name, "model_version": served.version}
        return 200, {**payload, "predictions": served.predictions(outputs)}, served.ref

    def observe(self, *_):
        pass

    def describe(self):
        return {**self.primary.describe(), "serving": {}}

    def list_models(self):
        return {"default_model": self.primary.name, "default_version": self.primary.version, "models": []}


class Servicer(rayline_pb2_grpc.RaylineServicer):
    """Calls a method as Serve does: with its context wrapper, whose code and details go out after the call."""

    def __init__(self, methods: Methods):
        self.methods = methods

    def call(self, name: str, request, context):
        context.set_trailing_metadata(())  # the wrapper reads it; grpc.aio's starts empty, the sync one at None
        wrapped = RayServegRPCContext(context)
        reply = asyncio.run(getattr(self.methods, name)(request, grpc_context=wrapped))
        wrapped._set_on_grpc_context(context)
        return reply

    def Predict(self, request, context):  # noqa: N802
        return self.call("Predict", request, context)

    def ModelInfo(self, request, context):  # noqa: N802
        return self.call("ModelInfo", request, context)

    def ListModels(self, request, context):  # noqa: N802
        return self.call("ListModels", request, context)

    def Health(self, request, context):  # noqa: N802
        return self.call("Health", request, context)


@pytest.fixture
def endpoint(tmp_path):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rayline_pb2_grpc.add_RaylineServicer_to_server(Servicer(Methods(make_registry(tmp_path))), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    server.stop(0)


def test_client_predicts_over_grpc_as_the_model_answers(endpoint, tmp_path):
    served = ServedModel.load(make_registry(tmp_path / "same"))  # the same seed: the same weights
    expected = served.predictions(served.forward(served.inputs_of({"rows": [row(0), row(1)]})))
    with connect(endpoint, token=TOKEN) as client:
        answer = client.predict([row(0), list(row(1).values())])  # a list row takes the features' order
        assert answer["model_version"] == "v1"
        for got, want in zip(answer["predictions"], expected, strict=True):
            assert got["label"] == want["label"] and got["probabilities"] == pytest.approx(want["probabilities"])
        assert client.health() == {"status": "ok", "model_name": served.name, "model_version": "v1"}
        assert client.model_info()["features"][0]["name"] == "x1"


def test_client_errors_carry_the_status_and_the_problem(endpoint):
    with connect(endpoint, token=TOKEN) as client:
        with pytest.raises(EndpointError) as bad:
            client.predict([row(0), {**row(1), "pixel_7": "x"}])
        assert bad.value.status == "INVALID_ARGUMENT"
        assert bad.value.detail[0]["loc"] == "rows.1.pixel_7" and "rows.1.pixel_7" in str(bad.value)
        with pytest.raises(EndpointError) as unknown:
            client.predict([row(0)], model_version="v7")
        assert unknown.value.status == "NOT_FOUND"
    with connect(endpoint, token="wrong") as client, pytest.raises(EndpointError) as refused:
        client.predict([row(0)])
    assert refused.value.status == "UNAUTHENTICATED"


def test_an_unreachable_or_malformed_endpoint_is_one_clear_error():
    with connect(f"grpc://127.0.0.1:{free_port()}", timeout_s=2) as client, pytest.raises(EndpointError) as down:
        client.health()
    assert down.value.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    with pytest.raises(EndpointError, match="expected http://host:port"):
        connect("grpc://no-port")
    with connect(f"http://127.0.0.1:{free_port()}", timeout_s=2) as client, pytest.raises(EndpointError) as http:
        client.health()
    assert http.value.status == "unreachable"
