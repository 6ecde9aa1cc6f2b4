"""A real DDP run over 2 Ray Train workers on the digits data, then resume by run name."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayline.config import validate_config
from rayline.data import DataError, write_digits
from rayline.pipeline import train_and_register
from rayline.predict import predict_files
from rayline.registry import STATE_FILE, Registry, last_complete_checkpoint, read_json

pytestmark = pytest.mark.slow


def digits_config(tmp_path, **train):
    source = tmp_path / "digits.parquet"
    if not source.exists():
        write_digits(str(source))
    return validate_config(
        {
            "name": "digits-test",
            "data": {
                "source": str(source),
                "task": "classification",
                "label": "label",
                "features": [f"pixel_{i}" for i in range(64)],
            },
            "model": {"kind": "cnn", "image_shape": [1, 8, 8], "channels": [32, 64], "hidden_sizes": [128]},
            "train": {
                "num_workers": 2,
                "epochs": 12,
                "batch_size": 32,
                "optimizer": {"name": "adamw", "lr": 0.003},
                **train,
            },
            "storage": {"root": str(tmp_path / "store")},
        }
    )


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """One full training run shared by the tests that need a registered digits model."""
    tmp_path = tmp_path_factory.mktemp("trained")
    cfg = digits_config(tmp_path)
    epochs = []
    report = train_and_register(cfg, on_epoch=epochs.append, log=lambda _: None)
    return cfg, report, epochs


def test_ddp_training_learns_digits_and_registers(trained):
    cfg, report, epochs = trained

    assert [m["epoch"] for m in epochs] == list(range(12)), "one progress report per epoch, in order"
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert all(m["samples_per_s"] > 0 for m in epochs)
    assert report.test_metrics["test_accuracy"] >= 0.95
    record = Registry(cfg.storage.root).record(report.version)
    assert record["data_fingerprint"].startswith("sha256:")
    assert len(record["history"]) == record["epoch"] + 1
    assert Registry(cfg.storage.root).model(report.version.name).serving_version() == report.version.version


def test_batch_prediction_over_a_file(trained, tmp_path):
    cfg, report, _ = trained
    version, rows = predict_files(cfg.storage.root, None, cfg.data.source, str(tmp_path / "out.parquet"))
    assert (version, rows) == (report.version, 1797)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert {"prediction", "probability_0", "probability_9", "label"} <= set(out.columns)
    probabilities = out[[f"probability_{d}" for d in range(10)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (out["prediction"].astype(int) == out["label"]).mean() >= 0.95


def test_batch_prediction_rejects_an_unknown_output_format(trained, tmp_path):
    cfg, _, _ = trained
    with pytest.raises(DataError, match="cannot tell the format"):
        predict_files(cfg.storage.root, None, cfg.data.source, str(tmp_path / "out.xlsx"))


def test_batch_prediction_over_a_corrupt_file_names_it_and_writes_nothing(trained, tmp_path):
    cfg, _, _ = trained
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + b"not parquet at all" * 100 + b"PAR1")
    with pytest.raises(DataError, match=f"{corrupt}: could not read it"):
        predict_files(cfg.storage.root, None, str(corrupt), str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()


def test_rerunning_a_run_name_resumes_the_epoch_count(trained):
    """Last in this file: it adds an epoch to the shared run and registers (and serves) another version."""
    cfg, _, first_run = trained
    seen = []
    resumed = digits_config(Path(cfg.data.source).parent, epochs=13)
    train_and_register(resumed, on_epoch=seen.append, log=lambda _: None)
    assert [m["epoch"] for m in seen] == [12], "the re-run continues at epoch 12"
    assert seen[0]["train_loss"] < 0.5 * first_run[0]["train_loss"], "from the saved weights, not from scratch"
    run = Path(cfg.storage.root) / "runs" / cfg.run_name
    history = read_json(last_complete_checkpoint(run) / STATE_FILE)["history"]
    assert [m["epoch"] for m in history] == list(range(13)), "the learning curve spans both runs"
