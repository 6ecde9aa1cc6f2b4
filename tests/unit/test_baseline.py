"""The linear baseline on small numpy problems, and how it is compared with the model."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score

from rayline.baseline import compare, describe, fit_baseline, warning
from rayline.data.preprocess import Preprocessor


def preprocessor(task, classes=None, target_std=None):
    return Preprocessor(task=task, label="y", features=[], classes=classes, target_mean=0.0, target_std=target_std)


def blobs(seed, rows=400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=rows)
    x = rng.normal(size=(rows, 3)).astype(np.float32) + y[:, None] * 1.5
    return x, y


def test_logistic_baseline_scores_like_sklearn():
    train, test = blobs(0), blobs(1)
    fitted = fit_baseline(train, test, preprocessor("classification", ["a", "b"]), split="test")
    reference = LogisticRegression(max_iter=1000).fit(*train)
    assert fitted.metrics["test_accuracy"] == pytest.approx(accuracy_score(test[1], reference.predict(test[0])))
    assert set(fitted.metrics) == {"test_loss", "test_accuracy", "test_f1_macro", "test_roc_auc"}
    assert fitted.train_rows == 400 and fitted.seconds > 0


def test_ridge_baseline_reports_rmse_in_target_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.3, size=300)).astype(np.float32)
    train, test = (x[:200], y[:200]), (x[200:], y[200:])
    fitted = fit_baseline(train, test, preprocessor("regression", target_std=10.0), split="validation")
    prediction = Ridge().fit(*train).predict(test[0])
    assert fitted.metrics["validation_rmse"] == pytest.approx(np.sqrt(mean_squared_error(test[1], prediction)) * 10)
    assert fitted.metrics["validation_r2"] == pytest.approx(r2_score(test[1], prediction), rel=1e-5)


def test_comparison_flags_a_model_worse_than_its_baseline():
    fitted = fit_baseline(blobs(0), blobs(1), preprocessor("classification", ["a", "b"]), split="test")
    theirs = fitted.metrics["test_accuracy"]
    better = compare({"test_accuracy": theirs + 0.011}, fitted, "classification")
    worse = compare({"test_accuracy": theirs - 0.05}, fitted, "classification")
    assert not better["worse_than_baseline"] and worse["worse_than_baseline"]
    assert describe(better).startswith("model vs baseline: test_accuracy") and "(+1.1 pt)" in describe(better)
    assert warning(worse, fitted).startswith("WARNING: the model is worse than a linear baseline on the test split")


def test_regression_comparison_is_on_rmse_lower_is_better():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 2)).astype(np.float32)
    y = x[:, 0].astype(np.float32)
    fitted = fit_baseline((x, y), (x, y), preprocessor("regression", target_std=1.0), split="test")
    result = compare({"test_rmse": fitted.metrics["test_rmse"] * 2 + 1}, fitted, "regression")
    assert result["worse_than_baseline"] and result["metric"] == "test_rmse"
    assert "%" in describe(result)
