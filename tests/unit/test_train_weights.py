"""Balanced class weights and the checks of metric names and class weights on the driver."""

import numpy as np
import pytest
import torch

from rayline.config import ConfigError, validate_config
from rayline.data.preprocess import Preprocessor
from rayline.train.driver import check_metric_names
from rayline.train.step import make_loss_fn
from rayline.train.weights import balanced_weights, check_class_weight


def test_balanced_weights_match_the_formula_and_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    counts = np.array([90, 9, 1])
    y = np.repeat([0, 1, 2], counts)
    assert balanced_weights(counts) == pytest.approx([100 / (3 * 90), 100 / (3 * 9), 100 / (3 * 1)])
    assert balanced_weights(counts) == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=y))


def test_weighted_loss_is_the_weighted_mean_of_the_rows_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    weights = torch.tensor([0.25, 3.0])
    per_row = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    expected = (per_row * weights[y]).sum() / weights[y].sum()
    assert make_loss_fn(True, weights)(logits, y).item() == pytest.approx(expected.item())
    assert make_loss_fn(True)(logits, y).item() == pytest.approx(per_row.mean().item())


def config(task="classification", **train):
    return validate_config(
        {"name": "t", "data": {"source": "x.csv", "task": task, "label": "y", "features": ["a"]}, "train": train}
    )


def preprocessor(task, classes):
    return Preprocessor(task=task, label="y", features=[], classes=classes, target_mean=None, target_std=None)


def test_class_weight_balanced_is_refused_for_regression():
    with pytest.raises(ConfigError, match="train.class_weight"):
        check_class_weight(config("regression", class_weight="balanced"))


def test_early_stopping_metric_must_be_reported():
    cfg = config("regression", early_stopping={"metric": "val_accuracy"})
    with pytest.raises(ConfigError, match=r"train.early_stopping.metric='val_accuracy'.*val_r2"):
        check_metric_names(cfg, preprocessor("regression", None))


def test_roc_auc_needs_two_classes():
    cfg = config(early_stopping={"metric": "val_roc_auc"})
    check_metric_names(cfg, preprocessor("classification", ["a", "b"]))
    with pytest.raises(ConfigError, match="two classes"):
        check_metric_names(cfg, preprocessor("classification", ["a", "b", "c"]))


def test_checkpoint_metric_must_be_reported():
    cfg = config(checkpoint={"metric": "val_acuracy", "mode": "max"})
    with pytest.raises(ConfigError, match="train.checkpoint.metric"):
        check_metric_names(cfg, preprocessor("classification", ["a", "b"]))
