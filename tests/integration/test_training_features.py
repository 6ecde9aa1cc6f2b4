"""Early stopping, class weights, learning-rate schedules and the metrics a practitioner reads, through real
Ray Train runs on small synthetic tables (a few epochs each)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayline.config import validate_config
from rayline.pipeline import CONFUSION_PNG, train_and_register
from rayline.registry import Registry
from rayline.train.schedule import lr_factor

pytestmark = pytest.mark.slow

FEATURES = ["a", "b", "c", "d"]


def imbalanced_table(rows=700, seed=0) -> pd.DataFrame:
    """Two classes, 1 in 8 rows the minority, which sits shifted on two of four features."""
    rng = np.random.default_rng(seed)
    minority = rng.random(rows) < 0.125
    x = rng.normal(size=(rows, 4))
    x[minority, :2] += 1.5
    df = pd.DataFrame(x, columns=FEATURES)
    df["label"] = np.where(minority, "rare", "common")
    return df


def regression_table(rows=500, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    df = pd.DataFrame(x, columns=FEATURES)
    df["target"] = 30 * x[:, 0] - 10 * x[:, 1] + rng.normal(scale=5, size=rows) + 100
    return df


def pipeline(source: Path, root: Path, name: str, task="classification", label="label", **train):
    return validate_config(
        {
            "name": name,
            "data": {"source": str(source), "task": task, "label": label, "features": FEATURES},
            "model": {"hidden_sizes": [32], "dropout": 0.0},
            "train": {"num_workers": 2, "batch_size": 32, "optimizer": {"lr": 0.01}, **train},
            "storage": {"root": str(root)},
        }
    )


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory):
    """Two runs on one imbalanced table, alike but for train.class_weight; early stopping with a min_delta no
    epoch can meet stops both after epoch 3 of 30."""
    tmp = tmp_path_factory.mktemp("features")
    source = tmp / "imbalanced.parquet"
    imbalanced_table().to_parquet(source)
    stop = {"metric": "val_loss", "patience": 2, "min_delta": 10.0}
    out = {}
    for weighting in ("balanced", "none"):
        cfg = pipeline(source, tmp / "store", f"cw-{weighting}", epochs=30, early_stopping=stop, class_weight=weighting)
        epochs, lines = [], []
        report = train_and_register(cfg, on_epoch=epochs.append, log=lines.append)
        out[weighting] = cfg, report, epochs, lines
    return out


def test_early_stopping_stops_and_registers_the_best_checkpoint(runs):
    cfg, report, epochs, lines = runs["balanced"]
    assert [m["epoch"] for m in epochs] == [0, 1, 2], "stops after patience epochs without a big enough gain"
    assert epochs[-1]["stopped_early"] == 1 and epochs[-1]["best_epoch"] == 0
    assert any(
        line.startswith("early stopping: val_loss did not improve by 10 for 2 epochs; best epoch 1") for line in lines
    )
    record = Registry(cfg.storage.root).record(report.version)
    best = min(epochs, key=lambda m: m["val_loss"])
    assert record["epoch"] == best["epoch"], "the registered version is the best checkpoint by val_loss"
    assert record["evaluation"]["early_stopping"]["stopped_early"] is True
    assert record["evaluation"]["early_stopping"]["epochs_run"] == 3


def test_class_weights_change_the_loss_and_favour_the_rare_class(runs):
    weighted, plain = runs["balanced"], runs["none"]
    assert weighted[2][0]["train_loss"] != pytest.approx(plain[2][0]["train_loss"], rel=1e-3)
    weights = weighted[1].evaluation["class_weights"]
    assert weights["rare"] > 1 > weights["common"]

    def rare_recall(run):
        ev = run[1].evaluation["confusion_matrix"]
        rare = ev["labels"].index("rare")
        counts = np.array(ev["counts"])
        return counts[rare, rare] / counts[rare].sum()

    assert rare_recall(weighted) >= rare_recall(plain)


def test_metrics_and_confusion_matrix_are_in_the_record(runs):
    cfg, report, epochs, lines = runs["balanced"]
    assert {"val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc", "lr"} <= set(epochs[0])
    assert {"test_loss", "test_accuracy", "test_f1_macro", "test_roc_auc"} <= set(report.test_metrics)
    registry = Registry(cfg.storage.root)
    record = registry.record(report.version)
    assert record["test_metrics"] == pytest.approx(report.test_metrics)
    evaluation = record["evaluation"]
    counts = np.array(evaluation["confusion_matrix"]["counts"])
    assert counts.sum() == report.num_rows["test"]
    assert counts.trace() / counts.sum() == pytest.approx(report.test_metrics["test_accuracy"])
    png = registry.checkpoint_dir(report.version).parent / CONFUSION_PNG
    assert png.read_bytes().startswith(b"\x89PNG")
    baseline = evaluation["baseline"]
    assert baseline["split"] == "test" and "test_accuracy" in baseline["metrics"]
    assert evaluation["comparison"]["metric"] == "test_accuracy"
    comparison = evaluation["comparison"]
    assert comparison["model"] == pytest.approx(report.test_metrics["test_accuracy"])
    assert comparison["baseline"] == pytest.approx(baseline["metrics"]["test_accuracy"])
    assert evaluation["worse_than_baseline"] == (comparison["model"] < comparison["baseline"])
    assert any(line.startswith("model vs baseline: test_accuracy") for line in lines)
    assert any(line.startswith("WARNING: the model is worse") for line in lines) == evaluation["worse_than_baseline"]


def test_regression_reports_r2_and_follows_the_lr_schedule(ray_cluster, tmp_path):
    source = tmp_path / "regression.parquet"
    regression_table().to_parquet(source)
    schedule = {"kind": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.1}
    cfg = pipeline(source, tmp_path / "store", "reg", task="regression", label="target", epochs=4, lr_schedule=schedule)
    epochs, lines = [], []
    report = train_and_register(cfg, on_epoch=epochs.append, log=lines.append)
    for m in epochs[1:]:
        expected = 0.01 * lr_factor(cfg.train.lr_schedule, epochs=4, epoch=int(m["epoch"]))
        assert m["lr"] == pytest.approx(expected)
    assert 0.005 < epochs[0]["lr"] < 0.01, "warm-up: rising towards optimizer.lr during the first epoch"
    assert {"val_r2", "val_rmse", "val_mae"} <= set(epochs[-1])
    assert {"test_r2", "test_rmse", "test_mae"} <= set(report.test_metrics)
    record = Registry(cfg.storage.root).record(report.version)
    assert record["evaluation"]["comparison"]["metric"] == "test_rmse"
    assert "confusion_matrix" not in record["evaluation"]
    assert any(line.startswith("model vs baseline: test_rmse") for line in lines)


def test_rerunning_a_run_that_stopped_early_trains_no_further(runs):
    """Last of the shared-run tests: it registers the same best checkpoint again as a new version."""
    cfg, report, epochs, _ = runs["balanced"]
    seen, lines = [], []
    again = train_and_register(cfg, on_epoch=seen.append, log=lines.append)
    assert seen == [], "early stopping had ended the run; the rerun decides the same from its history"
    registry = Registry(cfg.storage.root)
    assert registry.record(again.version)["epoch"] == registry.record(report.version)["epoch"]
    assert any(line.startswith("early stopping: val_loss") for line in lines)
