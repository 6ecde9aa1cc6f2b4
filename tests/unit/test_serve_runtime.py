"""serve.runtime onnxruntime answers every request as torch does: same classes, probabilities within 1e-5, the same
errors, through the fast path and the validating one (nulls, categories as integers, unseen categories)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayline.registry import Registry
from rayline.serve.model import ServedModel
from rayline.serve.schema import RequestError
from serve_models import COLORS, make_registry, row


def both(root: str) -> tuple[ServedModel, ServedModel]:
    return ServedModel.load(root), ServedModel.load(root, runtime="onnxruntime")


def answer(served: ServedModel, payload: dict) -> list[dict]:
    inputs = served.inputs(json.dumps(payload).encode(), "application/json")
    return served.predictions(served.forward(inputs))


def assert_same(torch_answers: list[dict], onnx_answers: list[dict]) -> None:
    assert len(torch_answers) == len(onnx_answers)
    for t, o in zip(torch_answers, onnx_answers, strict=True):
        if "value" in t:
            assert o["value"] == pytest.approx(t["value"], abs=1e-4)
            continue
        assert o["label"] == t["label"]
        assert o["probabilities"].keys() == t["probabilities"].keys()
        diff = max(abs(o["probabilities"][c] - t["probabilities"][c]) for c in t["probabilities"])
        assert diff <= 1e-5


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_onnx_runtime_answers_as_torch(tmp_path, task):
    torch_model, onnx_model = both(make_registry(tmp_path, task))
    assert (torch_model.runtime.name, onnx_model.runtime.name) == ("torch", "onnxruntime")
    rows = [row(i) for i in range(40)]
    assert_same(answer(torch_model, {"rows": rows}), answer(onnx_model, {"rows": rows}))
    # The validating path: lists, integer-looking categories refused the same way, an unseen category.
    odd = [[0.1, 2.0, 1.0, "purple"], {"x1": 1e3, "x2": -5, "pixel_7": 0.0, "color": COLORS[1]}]
    assert_same(answer(torch_model, {"rows": odd}), answer(onnx_model, {"rows": odd}))


def test_onnx_runtime_joins_requests_into_one_batch_as_torch(tmp_path):
    torch_model, onnx_model = both(make_registry(tmp_path))
    parts = [onnx_model.inputs(json.dumps({"rows": [row(i)]}).encode(), None) for i in range(5)]
    joined = onnx_model.forward(onnx_model.concat(parts))
    alone = np.concatenate([onnx_model.forward(p) for p in parts])
    np.testing.assert_allclose(joined, alone, atol=1e-6)
    assert len(onnx_model.concat(parts)[1:3]) == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"rows": [{"x1": "a", "x2": 1, "pixel_7": 1, "color": "red"}]},
        {"rows": [{"x1": 1, "x2": 1, "pixel_7": 1e38, "color": "red"}]},  # overflows float32 once scaled
        {"rows": []},
        {"rows": [[1, 2, 3]]},
    ],
)
def test_onnx_runtime_refuses_what_torch_refuses_with_the_same_message(tmp_path, payload):
    torch_model, onnx_model = both(make_registry(tmp_path))
    errors = []
    for served in (torch_model, onnx_model):
        with pytest.raises(RequestError) as caught:
            answer(served, payload)
        errors.append((caught.value.status, caught.value.to_json()))
    assert errors[0] == errors[1]


def test_a_recorded_export_with_its_hash_is_what_the_replica_runs(tmp_path):
    from rayline.export import export_version

    root = make_registry(tmp_path / "store")
    ref = Registry(root).resolve()
    export_version(root, str(ref), tmp_path / "out", log=lambda _: None)
    served = ServedModel.load(root, runtime="onnxruntime")
    assert served.runtime.source == str(tmp_path / "out" / f"{ref.name}-{ref.version}.onnx")
    (tmp_path / "out" / f"{ref.name}-{ref.version}.onnx").write_bytes(b"changed")  # its hash no longer matches
    assert ServedModel.load(root, runtime="onnxruntime").runtime.source == "exported in memory"
