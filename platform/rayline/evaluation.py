"""Metric math shared by the training workers, the test-split scoring and the linear baseline.

Everything here works on sums that add up across data-parallel replicas (a confusion matrix, squared errors,
sums of y and y²), so a metric computed from all-reduced sums equals the metric over the whole split. ROC-AUC
is the exception: it needs every score, which the workers gather (validation splits are small). numpy and
matplotlib only; no Ray, no torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

CLASSIFICATION_METRICS = ("loss", "accuracy", "f1_macro", "roc_auc")
"""Metrics a classification split reports (roc_auc with two classes only), as val_* and test_*."""
REGRESSION_METRICS = ("loss", "rmse", "mae", "r2")
"""Metrics a regression split reports, as val_* and test_*; rmse and mae in the target's own units."""
HIGHER_IS_BETTER = ("accuracy", "f1_macro", "roc_auc", "r2")


def metric_mode(name: str) -> str:
    """ "max" for a reported metric where higher is better (val_accuracy, test_r2, ...), else "min"."""
    return "max" if name.split("_", 1)[-1] in HIGHER_IS_BETTER else "min"


def validation_metric_names(task: str, num_classes: int | None) -> list[str]:
    """The val_* metrics every epoch of a run on this task reports."""
    if task == "classification":
        names = [n for n in CLASSIFICATION_METRICS if n != "roc_auc" or num_classes == 2]
    else:
        names = list(REGRESSION_METRICS)
    return [f"val_{n}" for n in names]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] (int64 [num_classes, num_classes])."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def f1_macro(counts: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur as truth or prediction (as
    sklearn.metrics.f1_score(average="macro") counts them; a class never predicted scores 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diag(counts)
    actual, predicted = counts.sum(axis=1), counts.sum(axis=0)
    present = (actual + predicted) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp[present] / (actual[present] + predicted[present])
    return float(f1.mean())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores for the positive class (label 1): the chance that a random positive
    scores above a random negative, ties counting half (the Mann-Whitney U statistic). NaN without both."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    positives = int((labels == 1).sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = average_ranks(scores)
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def classification_metrics(
    loss_sum: float, counts: np.ndarray, positive_scores: np.ndarray | None = None, labels: np.ndarray | None = None
) -> dict[str, float]:
    """loss (mean cross-entropy), accuracy and macro F1 from summed loss and the confusion matrix; roc_auc from
    the positive-class scores when given (two classes)."""
    counts = np.asarray(counts)
    rows = max(float(counts.sum()), 1.0)
    metrics = {
        "loss": float(loss_sum) / rows,
        "accuracy": float(np.trace(counts)) / rows,
        "f1_macro": f1_macro(counts),
    }
    if positive_scores is not None:
        metrics["roc_auc"] = roc_auc(positive_scores, labels)
    return metrics


def regression_sums(error: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[squared error, absolute error, rows, sum y, sum y²]: what regression metrics need, additive over rows."""
    error, y = np.asarray(error, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return np.array([np.square(error).sum(), np.abs(error).sum(), len(y), y.sum(), np.square(y).sum()])


def regression_metrics(sums: Sequence[float], target_std: float | None) -> dict[str, float]:
    """loss (mean squared error in standardised units), rmse and mae in the target's units, and R² (unitless)
    from regression_sums."""
    squared, absolute, rows, sum_y, sum_y2 = (float(v) for v in sums)
    rows = max(rows, 1.0)
    scale = target_std or 1.0
    total = sum_y2 - sum_y * sum_y / rows  # sum of squares around the split's own mean
    return {
        "loss": squared / rows,
        "rmse": math.sqrt(squared / rows) * scale,
        "mae": absolute / rows * scale,
        "r2": 1.0 - squared / total if total > 0 else math.nan,
    }


def prefixed(metrics: dict[str, float], split: str) -> dict[str, float]:
    return {f"{split}_{name}": value for name, value in metrics.items()}


def confusion_matrix_png(counts: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """The confusion matrix as a PNG: rows are the true class, columns the predicted one, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts)
    n = len(class_names)
    size = min(3.0 + 0.6 * n, 14.0)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(counts, cmap="Blues")
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
        ax.set_title(title, fontsize="small", wrap=True)
        ax.set_xticklabels(class_names, rotation=45, ha="right")
        ax.set_yticklabels(class_names)
        threshold = counts.max() / 2 if counts.size else 0
        if n <= 30:
            for (i, j), value in np.ndenumerate(counts):
                colour = "white" if value > threshold else "black"
                ax.text(j, i, str(int(value)), ha="center", va="center", color=colour, fontsize=8)
        return png_bytes(fig)
    finally:
        plt.close(fig)


def learning_curves_png(history: Sequence[dict[str, float]], title: str) -> bytes:
    """Training loss and each validation metric by epoch (one panel each), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["train_loss", *sorted({k for h in history for k in h if k.startswith("val_")})]
    epochs = [int(h["epoch"]) + 1 for h in history]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    try:
        for ax, name in zip(axes[0], names, strict=True):
            ax.plot(epochs, [h.get(name, np.nan) for h in history], marker="o")
            ax.set(xlabel="epoch", title=name)
        fig.suptitle(title, fontsize="small")
        return png_bytes(fig)
    finally:
        plt.close(fig)


def png_bytes(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
