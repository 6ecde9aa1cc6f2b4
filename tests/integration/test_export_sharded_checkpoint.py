"""A checkpoint written by a sharded strategy (FSDP2 over 2 Ray Train workers) exports like any other: its
consolidated model.pt goes into the graph, and the graph answers as rayline does on the test split."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import digits_source, quiet
from rayline.checkpoint import SHARDED_DIR
from rayline.config import load_config
from rayline.export import export_version
from rayline.pipeline import train_and_register
from rayline.registry import Registry

REPO = Path(__file__).resolve().parents[2]


def test_fsdp_checkpoint_exports_and_matches_rayline(ray_cluster, tmp_path):
    digits_source(tmp_path)
    cfg = load_config(
        REPO / "pipelines" / "digits_transformer_fsdp.yaml",
        [
            f"data.source={tmp_path / 'digits.parquet'}",
            f"storage.root={tmp_path / 'store'}",
            "train.epochs=1",
            "train.cpus_per_worker=0.5",
            "train.baseline=false",
        ],
    )
    report = train_and_register(cfg, log=quiet)
    registry = Registry(cfg.storage.uri)
    assert (registry.checkpoint_dir(report.version) / SHARDED_DIR).is_dir()  # written by the sharded strategy

    exported = export_version(cfg.storage.uri, str(report.version), tmp_path / "out", log=quiet)

    (onnx_file,) = exported.files
    parity = onnx_file.entry["parity"]
    assert parity["rows_description"].split(" rows of ")[1].startswith("the test split, found again in")
    assert "the source changed" not in parity["rows_description"]
    assert parity["max_abs_diff"] <= 1e-5 and parity["different_labels"] == 0
    assert (
        parity["onnx_metric"] == parity["torch_metric"] == pytest.approx(report.test_metrics["test_accuracy"], abs=1e-9)
    )
    assert registry.record(report.version)["exports"][0]["sha256"] == onnx_file.entry["sha256"]
