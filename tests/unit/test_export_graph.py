"""The exported graph does what the preprocessor does, value for value: fills, standardisation, indicators,
one-hot blocks with their "other" and "missing" slots, embedding ids, and decode. No Ray."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from rayline.config import ModelConfig
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.edge.contract import describe, raw_inputs
from rayline.edge.graph import InputLayout, RawFeatureModel
from rayline.edge.onnx import export_onnx, metadata_for
from rayline.models import build_model

FEATURES = [
    NumericStat("age", 41.5, 12.25, "median", 40.0, indicator=True),
    CategoricalStat("colour", ["blue", "green", "red"], "category", other=True, missing_slot=True),
    NumericStat("height", 170.2, 9.5, "constant", -1.0),
    CategoricalStat("city", [str(i) for i in range(20)], "category", other=True, embedding_dim=4),
    CategoricalStat("size", ["S", "M"], "category"),  # neither an other nor a missing slot
    NumericStat("weight", 70.0, 0.0, "mean", 70.0),  # constant in training: scale 1
]
ROWS = pd.DataFrame(
    {
        "age": [30.0, None, 55.5, 41.0, 95.0],
        "colour": ["red", None, "purple", "blue", "green"],
        "height": [160.0, 181.5, None, 170.0, 150.0],
        "city": ["3", "19", "unknown-city", None, 7],  # an integer value is keyed by its text, as in serving
        "size": ["M", "XL", None, "S", "S"],
        "weight": [71.5, None, 68.0, 70.0, 90.0],
    }
)


def preprocessor(task: str = "classification") -> Preprocessor:
    if task == "classification":
        return Preprocessor("classification", "y", FEATURES, ["no", "yes", "maybe"], None, None)
    return Preprocessor("regression", "y", FEATURES, None, 152.13, 77.09)


def mlp(pre: Preprocessor) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="mlp", hidden_sizes=[16]), **pre.model_shape()).eval()


def slots(pre: Preprocessor, rows: pd.DataFrame) -> torch.Tensor:
    layout = InputLayout.of(pre)
    return torch.from_numpy(np.stack([f.slots_of(rows[f.name])[0] for f in layout.categorical], axis=1))


def test_torch_part_builds_the_preprocessors_inputs_bit_for_bit():
    pre = preprocessor()
    core = RawFeatureModel(pre, mlp(pre))
    numeric = torch.from_numpy(raw_inputs(ROWS, InputLayout.of(pre))["numeric"])
    x_graph = core.model_inputs(numeric, slots(pre, ROWS)).numpy()
    x_rayline = pre.transform_features(ROWS)
    assert x_graph.dtype == np.float32
    np.testing.assert_array_equal(x_graph, x_rayline)


@pytest.mark.parametrize(
    ("task", "exporter"), [("classification", "dynamo"), ("regression", "dynamo"), ("classification", "torchscript")]
)
def test_onnx_graph_answers_as_rayline_with_missing_unseen_and_other_values(tmp_path, task, exporter):
    """The torchscript case is the fallback exporter's graph, used where dynamo fails."""
    pre = preprocessor(task)
    model = mlp(pre)
    used = export_onnx(pre, model, tmp_path / "m.onnx", metadata_for(pre, "handmade/v1"), exporters=(exporter,))
    assert used == exporter

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, raw_inputs(ROWS, InputLayout.of(pre)))
    answers = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    with torch.inference_mode():
        decoded = pre.decode(model(torch.from_numpy(pre.transform_features(ROWS))).numpy())
    if task == "regression":
        # A float32 model's error is relative to its output: compared in units of the label's std, as parity does.
        difference = np.abs(answers["value"] - [d["value"] for d in decoded]) / pre.target_std
        assert difference.max() <= 1e-5
        return
    expected = np.array([[d["probabilities"][c] for c in pre.classes] for d in decoded])
    np.testing.assert_allclose(answers["probabilities"], expected, rtol=0, atol=1e-6)
    assert answers["label"].tolist() == [d["label"] for d in decoded]
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(metadata["rayline.classes"]) == ["no", "yes", "maybe"]
    assert json.loads(metadata["rayline.inputs"]) == {
        "numeric": ["age", "height", "weight"],
        "categorical": ["colour", "city", "size"],
    }
    assert metadata["rayline.exporter"] == exporter


def test_contract_lists_inputs_in_model_order_with_their_missing_values():
    contract = describe(preprocessor(), model="handmade/v1", files={"fp32": "m.onnx"})
    numeric, categorical = contract["inputs"]
    assert (numeric["name"], numeric["dtype"]) == ("numeric", "float64")
    assert [f["name"] for f in numeric["features"]] == ["age", "height", "weight"]
    assert (categorical["name"], categorical["dtype"]) == ("categorical", "string")
    assert [f["name"] for f in categorical["features"]] == ["colour", "city", "size"]
    assert categorical["features"][0]["categories"] == ["blue", "green", "red"]
    assert contract["missing_values"] == {
        "numeric": "NaN",
        "categorical": '"" (empty string)',
        "not nullable": contract["missing_values"]["not nullable"],
    }
    assert [o["name"] for o in contract["outputs"]] == ["label", "label_index", "probabilities"]
    assert contract["classes"] == ["no", "yes", "maybe"]
