"""Every model kind exports with its preprocessing and answers as rayline does on its test split, and the registry
record carries the export. Models are trained briefly without Ray (tests/export_models.py)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from export_models import register_trained
from pipelines import digits_pipeline
from rayline.checkpoint import file_sha256
from rayline.data.examples import write_example
from rayline.export import export_version
from rayline.registry import Registry

KINDS = {
    "mlp": {"kind": "mlp", "hidden_sizes": [32]},
    "cnn": {"kind": "cnn", "image_shape": [1, 8, 8], "channels": [4, 8], "hidden_sizes": [16]},
    "transformer": {"kind": "transformer", "token_size": 8, "d_model": 16, "n_heads": 2, "n_layers": 1, "ffn_size": 32},
}


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("kind", KINDS)
def test_digits_model_exports_and_matches_rayline_on_the_test_split(tmp_path, kind):
    root = tmp_path / "store"
    version = register_trained(root, digits_pipeline(tmp_path, name=f"digits-{kind}", model=KINDS[kind]), epochs=3)

    report = export_version(str(root), version.name, tmp_path / "out", log=quiet)

    (exported,) = report.files
    parity = exported.entry["parity"]
    held_out = re.match(r"(\d+) rows of the test split, found again in ", parity["rows_description"])
    assert held_out and int(held_out[1]) > 200, parity["rows_description"]
    assert "the source changed" not in parity["rows_description"]  # the record's confusion matrix counts as many
    assert parity["max_abs_diff"] <= 1e-5
    assert parity["different_labels"] == 0
    assert parity["onnx_metric"] == parity["torch_metric"]
    assert exported.entry["exporter"] == "dynamo"
    assert exported.path == tmp_path / "out" / f"{version.name}-v1.onnx"


def test_record_carries_the_export_with_hash_opset_and_exporter(tmp_path):
    root = tmp_path / "store"
    version = register_trained(root, digits_pipeline(tmp_path, model=KINDS["mlp"]), epochs=2)

    export_version(str(root), f"{version.name}/v1", tmp_path / "out", log=quiet)

    (entry,) = Registry(root).record(version)["exports"]
    path = Path(entry["file"])
    assert entry["format"] == "onnx" and entry["quantization"] is None
    assert entry["sha256"] == file_sha256(path)
    assert entry["bytes"] == path.stat().st_size
    assert entry["opset"] == next(o.version for o in onnx.load(str(path)).opset_import if o.domain == "")
    assert entry["exporter"] in ("dynamo", "torchscript")
    assert (tmp_path / "out" / f"{version.name}-v1.json").is_file()


def test_embeddings_and_missing_cells_export_with_the_categorical_lookup_in_the_graph(tmp_path):
    source = tmp_path / "breast_cancer.csv"
    write_example("breast_cancer", source)
    pipeline = {
        "name": "cancer",
        "data": {
            "source": str(source),
            "task": "classification",
            "label": "diagnosis",
            "exclude": ["patient_id"],
            "missing": {"numeric": "median", "indicator": True},
            "embedding_threshold": 1,  # size_band's few categories get a learned embedding
        },
        "model": {"kind": "mlp", "hidden_sizes": [16]},
        "storage": {"root": str(tmp_path / "store")},
    }
    version = register_trained(tmp_path / "store", pipeline, epochs=10)
    loaded = Registry(tmp_path / "store").load(version)
    assert loaded.preprocessor.model_shape()["embeddings"], "the test needs an embedded categorical feature"

    report = export_version(str(tmp_path / "store"), "cancer", tmp_path / "out", log=quiet)

    parity = report.files[0].entry["parity"]
    assert "copies of the first rows with missing and unseen values" in parity["rows_description"]
    assert parity["max_abs_diff"] <= 1e-5 and parity["different_labels"] == 0


def test_regression_exports_values_in_the_labels_units(tmp_path):
    source = tmp_path / "diabetes.csv"
    write_example("diabetes", source)
    pipeline = {
        "name": "diabetes",
        "data": {"source": str(source), "task": "regression", "label": "progression"},
        "model": {"kind": "mlp", "hidden_sizes": [16]},
        "storage": {"root": str(tmp_path / "store")},
    }
    register_trained(tmp_path / "store", pipeline, epochs=10)

    report = export_version(str(tmp_path / "store"), "diabetes", tmp_path / "out", log=quiet)

    parity = report.files[0].entry["parity"]
    assert parity["metric"] == "rmse" and parity["onnx_metric"] == pytest.approx(parity["torch_metric"], abs=1e-4)
    assert parity["max_abs_diff"] <= 1e-5
    assert parity["max_abs_diff_label_units"] < 1e-3
