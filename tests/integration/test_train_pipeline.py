"""A real DDP run over 2 Ray Train workers on the digits data, then resume by run name."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import digits_config as digits_pipeline_config
from rayline.checkpoint import MODEL_FILE, STATE_FILE, last_complete_checkpoint
from rayline.config import ConfigError
from rayline.data import DataError
from rayline.data.split import TEST, assign_splits
from rayline.pipeline import train_and_register
from rayline.predict import predict_files
from rayline.registry import Registry
from rayline.registry_layout import read_json
from rayline.train.resources import PlanError

pytestmark = pytest.mark.slow


def digits_config(tmp_path, **train):
    return digits_pipeline_config(
        tmp_path,
        model={"kind": "cnn", "image_shape": [1, 8, 8], "channels": [32, 64], "hidden_sizes": [128]},
        train={"epochs": 12, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.003}, **train},
    )


def held_out(frame: pd.DataFrame, cfg) -> pd.DataFrame:
    """The rows the run's test split held (a row's split is a hash of its source values): never trained on."""
    columns = list(pd.read_parquet(cfg.data.source).columns)
    return frame[assign_splits(frame[columns], cfg.data.split) == TEST]


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """One full training run shared by the tests that need a registered digits model."""
    tmp_path = tmp_path_factory.mktemp("trained")
    cfg = digits_config(tmp_path)
    epochs, lines = [], []
    report = train_and_register(cfg, on_epoch=epochs.append, log=lines.append)
    assert sum(line.startswith("data: prepared in") for line in lines) == 1, lines
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
    weights = torch.load(Registry(cfg.storage.root).checkpoint_dir(report.version) / MODEL_FILE, weights_only=True)
    fp32_bytes = 4 * sum(t.numel() for t in weights.values())
    sent = {(m["grad_bytes_per_step"], m["compression_ratio"]) for m in epochs}
    assert sent == {(fp32_bytes, 1.0)}, "train.compression none: DDP all-reduces every gradient as fp32"


def test_batch_prediction_over_a_file(trained, tmp_path):
    cfg, report, _ = trained
    version, rows = predict_files(cfg.storage.root, None, cfg.data.source, str(tmp_path / "out.parquet"))
    assert (version, rows) == (report.version, 1797)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert {"prediction", "probability_0", "probability_9", "label"} <= set(out.columns)
    probabilities = out[[f"probability_{d}" for d in range(10)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    test_rows = held_out(out, cfg)
    assert len(test_rows) == report.num_rows["test"], "the same rows the run held out"
    assert (test_rows["prediction"].astype(int) == test_rows["label"]).mean() >= 0.95


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
    seen, lines = [], []
    resumed = digits_config(Path(cfg.data.source).parent, epochs=13)
    train_and_register(resumed, on_epoch=seen.append, log=lines.append)
    assert any(line.startswith("data: reused the data prepared") for line in lines), "the data is not prepared again"
    assert [m["epoch"] for m in seen] == [12], "the re-run continues at epoch 12"
    assert seen[0]["train_loss"] < 0.5 * first_run[0]["train_loss"], "from the saved weights, not from scratch"
    run = Path(cfg.storage.root) / "runs" / cfg.run_name
    history = read_json(last_complete_checkpoint(run) / STATE_FILE)["history"]
    assert [m["epoch"] for m in history] == list(range(13)), "the learning curve spans both runs"


@pytest.fixture
def no_data_preparation(monkeypatch):
    """Any data preparation fails the test: what it guards must be refused before the data is read."""

    def prepare(*args, **kwargs):
        raise AssertionError("the data was prepared before the refusal")

    monkeypatch.setattr("rayline.pipeline.prepare_datasets", prepare)


def test_a_gpu_run_on_a_cpu_only_cluster_fails_at_once_saying_what_it_needs(ray_cluster, tmp_path, no_data_preparation):
    lines: list[str] = []
    with pytest.raises(PlanError) as err:
        train_and_register(digits_config(tmp_path, use_gpu=True), log=lines.append)
    message = str(err.value)
    assert "the run needs 2 workers x 1 CPUs and 1 GPUs (2 CPUs and 2 GPUs in all)" in message
    assert "0 GPUs" in message and "does not autoscale" in message
    assert not any(line.startswith("data:") for line in lines), "refused before any data was prepared"


def test_a_model_that_does_not_fit_auto_features_is_refused_before_the_data_is_prepared(
    ray_cluster, tmp_path, no_data_preparation
):
    cfg = digits_pipeline_config(
        tmp_path, data={"features": "auto"}, model={"kind": "transformer", "token_size": 7, "d_model": 16}
    )
    lines: list[str] = []
    with pytest.raises(ConfigError, match="model.token_size 7 .* the 64 features give .* sizes that fit: 1, 2, 4, 8"):
        train_and_register(cfg, log=lines.append)
    assert not any(line.startswith("data:") for line in lines)
