"""The linear baseline every run is compared with: logistic regression (classification) or ridge regression
(regression), fitted with scikit-learn's default settings on the driver, on the same preprocessed training
split the model trained on, and scored on the same held-out split with the same metric functions.

It is fitted on at most MAX_ROWS training rows (a seeded uniform sample above that), which keeps it to
seconds on tabular data; the record says how many rows it saw.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rayline.data.prepared import SplitFiles
from rayline.data.preprocess import Preprocessor
from rayline.evaluation import (
    classification_metrics,
    confusion_matrix,
    metric_mode,
    prefixed,
    regression_metrics,
    regression_sums,
)

MAX_ROWS = 200_000
"""Most training rows the baseline is fitted on."""
HEADLINE = {"classification": "accuracy", "regression": "rmse"}
"""The metric "model vs baseline" compares."""


@dataclass(frozen=True)
class Baseline:
    model: str
    """What was fitted, with its settings."""
    split: str
    """The split it was scored on: test, or validation when data.split.test is 0."""
    metrics: dict[str, float]
    """Named like the model's: test_accuracy, test_f1_macro, ... or test_rmse, test_r2, ..."""
    train_rows: int
    """Training rows it was fitted on (at most MAX_ROWS)."""
    seconds: float
    """Fit and scoring time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_arrays(split: SplitFiles, *, max_rows: int = MAX_ROWS, seed: int = 0):
    """(x, y) numpy arrays of a prepared split; a seeded uniform sample of about max_rows rows when larger."""
    keep = min(1.0, max_rows / max(split.rows, 1))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for x, y in split.iter_arrays():
        if keep < 1.0:
            mask = rng.random(len(y)) < keep
            x, y = x[mask], y[mask]
        xs.append(x.reshape(len(y), -1))
        ys.append(y)
    if not ys:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def fit_baseline(
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    preprocessor: Preprocessor,
    *,
    split: str,
    class_weights: list[float] | None = None,
) -> Baseline:
    """Fit the task's linear model on `train` and score it on `held_out` (both (x, y) in model units)."""
    started = time.perf_counter()
    # A linear model cannot learn an embedding: embedded category ids go back to one-hot columns.
    train = (preprocessor.one_hot_inputs(train[0]), train[1])
    held_out = (preprocessor.one_hot_inputs(held_out[0]), held_out[1])
    if preprocessor.task == "classification":
        name, metrics = fit_logistic(train, held_out, len(preprocessor.classes), class_weights)
    else:
        name, metrics = fit_ridge(train, held_out, preprocessor.target_std)
    return Baseline(name, split, prefixed(metrics, split), len(train[1]), time.perf_counter() - started)


def fit_logistic(train, held_out, num_classes: int, class_weights: list[float] | None):
    from sklearn.linear_model import LogisticRegression

    x, y = train
    weights = None if class_weights is None else dict(enumerate(class_weights))
    model = LogisticRegression(max_iter=1000, class_weight=weights).fit(x, y.astype(np.int64))
    x_out, y_out = held_out[0], held_out[1].astype(np.int64)
    probabilities = np.zeros((len(y_out), num_classes))
    probabilities[:, model.classes_.astype(np.int64)] = model.predict_proba(x_out)  # classes absent from the fit: 0
    loss_sum = -np.log(np.clip(probabilities[np.arange(len(y_out)), y_out], 1e-15, None)).sum()
    counts = confusion_matrix(y_out, probabilities.argmax(axis=1), num_classes)
    scores = probabilities[:, 1] if num_classes == 2 else None
    described = "logistic regression (scikit-learn defaults: C=1.0, lbfgs" + (
        ", balanced class weights)" if weights else ")"
    )
    return described, classification_metrics(loss_sum, counts, scores, y_out)


def fit_ridge(train, held_out, target_std: float | None):
    from sklearn.linear_model import Ridge

    x, y = train
    model = Ridge().fit(x, y.astype(np.float64))
    x_out, y_out = held_out
    error = model.predict(x_out) - y_out.astype(np.float64)
    return "ridge regression (scikit-learn defaults: alpha=1.0)", regression_metrics(
        regression_sums(error, y_out), target_std
    )


def compare(model_metrics: dict[str, float], baseline: Baseline, task: str) -> dict[str, Any]:
    """The headline comparison on the baseline's split: which metric, both values, and whether the model is
    worse (strictly: a tie is not flagged)."""
    name = HEADLINE[task]
    mode = metric_mode(name)
    key = f"{baseline.split}_{name}"
    ours, theirs = float(model_metrics[key]), float(baseline.metrics[key])
    worse = ours < theirs if mode == "max" else ours > theirs
    return {"metric": key, "mode": mode, "model": ours, "baseline": theirs, "worse_than_baseline": bool(worse)}


def describe(comparison: dict[str, Any]) -> str:
    """ "model vs baseline: test_accuracy 0.962 vs 0.951 (+1.1 pt)" or "... test_rmse 52.1 vs 53.4 (-2.4%)"."""
    key, ours, theirs = comparison["metric"], comparison["model"], comparison["baseline"]
    if comparison["mode"] == "max":
        change = f"{(ours - theirs) * 100:+.1f} pt"
    else:
        change = f"{(ours - theirs) / theirs * 100:+.2f}%" if theirs else f"{ours - theirs:+.4g}"
    return f"model vs baseline: {key} {ours:.4g} vs {theirs:.4g} ({change})"


def warning(comparison: dict[str, Any], baseline: Baseline) -> str:
    return (
        f"WARNING: the model is worse than a linear baseline on the {baseline.split} split "
        f"({comparison['metric']} {comparison['model']:.4g} vs {comparison['baseline']:.4g} for {baseline.model}); "
        "try more epochs with early stopping, weight decay, or a smaller model"
    )
