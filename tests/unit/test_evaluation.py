"""Metric math against scikit-learn's own implementations."""

import io
import math

import numpy as np
import pytest
from sklearn import metrics as sk

from rayline.evaluation import (
    classification_metrics,
    confusion_matrix,
    confusion_matrix_png,
    f1_macro,
    regression_metrics,
    regression_sums,
    roc_auc,
    validation_metric_names,
)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, size=300))
    return y_true, y_pred


def test_confusion_matrix_matches_sklearn(predictions):
    y_true, y_pred = predictions
    assert (confusion_matrix(y_true, y_pred, 4) == sk.confusion_matrix(y_true, y_pred, labels=range(4))).all()


def test_f1_macro_matches_sklearn(predictions):
    y_true, y_pred = predictions
    assert f1_macro(confusion_matrix(y_true, y_pred, 4)) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))


def test_f1_macro_counts_a_never_predicted_class_as_zero_and_skips_absent_ones():
    y_true, y_pred = np.array([0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 1])  # class 2 never predicted; 3 absent
    expected = sk.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert f1_macro(confusion_matrix(y_true, y_pred, 4)) == pytest.approx(expected)


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=500)
    scores = np.round(labels * 0.3 + rng.random(500), 1)  # rounded: many ties
    assert roc_auc(scores, labels) == pytest.approx(sk.roc_auc_score(labels, scores))


def test_roc_auc_is_nan_with_one_class():
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([1, 1])))


def test_classification_metrics_from_sums():
    y_true, y_pred = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])
    scores = np.array([0.2, 0.9, 0.4, 0.1, 0.8])
    m = classification_metrics(2.5, confusion_matrix(y_true, y_pred, 2), scores, y_true)
    assert m == pytest.approx(
        {
            "loss": 0.5,
            "accuracy": sk.accuracy_score(y_true, y_pred),
            "f1_macro": sk.f1_score(y_true, y_pred, average="macro"),
            "roc_auc": sk.roc_auc_score(y_true, scores),
        }
    )


def test_regression_metrics_in_target_units_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.normal(size=200)
    prediction = y + rng.normal(scale=0.5, size=200)
    std = 12.5  # y and predictions are standardised; rmse and mae come back in the target's units
    half_a, half_b = (
        regression_sums(prediction[:80] - y[:80], y[:80]),
        regression_sums(prediction[80:] - y[80:], y[80:]),
    )
    m = regression_metrics(half_a + half_b, std)  # sums from two replicas add up
    assert m["rmse"] == pytest.approx(math.sqrt(sk.mean_squared_error(y, prediction)) * std)
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(y, prediction) * std)
    assert m["r2"] == pytest.approx(sk.r2_score(y, prediction))


def test_validation_metric_names_per_task():
    assert validation_metric_names("classification", 2) == ["val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc"]
    assert "val_roc_auc" not in validation_metric_names("classification", 3)
    assert validation_metric_names("regression", None) == ["val_loss", "val_rmse", "val_mae", "val_r2"]


def test_confusion_matrix_png_is_a_png():
    from PIL import Image

    png = confusion_matrix_png(np.array([[5, 1], [2, 7]]), ["benign", "malignant"], "test split")
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size[0] > 100
