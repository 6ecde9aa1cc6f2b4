"""A real DDP run over 2 Ray Train workers on the digits data, then resume by run name."""

import pytest

from rayline.config import validate_config
from rayline.data import write_digits
from rayline.pipeline import train_and_register
from rayline.registry import Registry

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
            "model": {"kind": "mlp", "hidden_sizes": [128, 64]},
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


def test_ddp_training_learns_digits_and_registers(ray_cluster, tmp_path):
    cfg = digits_config(tmp_path)
    epochs = []
    report = train_and_register(cfg, on_epoch=epochs.append, log=lambda _: None)

    assert [m["epoch"] for m in epochs] == list(range(12)), "one progress report per epoch, in order"
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert all(m["samples_per_s"] > 0 for m in epochs)
    assert report.test_metrics["test_accuracy"] >= 0.95
    record = Registry(cfg.storage.root).record(report.version)
    assert record["data_fingerprint"].startswith("sha256:")
    assert len(record["history"]) == record["epoch"] + 1
    assert Registry(cfg.storage.root).serving_version() == report.version


def test_rerunning_a_run_name_resumes_the_epoch_count(ray_cluster, tmp_path):
    first = digits_config(tmp_path, epochs=2)
    seen = []
    train_and_register(first, on_epoch=seen.append, log=lambda _: None)
    resumed = digits_config(tmp_path, epochs=4)
    train_and_register(resumed, on_epoch=seen.append, log=lambda _: None)
    assert [m["epoch"] for m in seen] == [0, 1, 2, 3], "the second run continues at epoch 2"
    latest = Registry(resumed.storage.root).load()
    assert [m["epoch"] for m in Registry(resumed.storage.root).record(latest.version)["history"]][:2] == [0, 1]
