"""Class weights for train.class_weight: balanced, from the training split's label counts."""

from __future__ import annotations

import numpy as np

from rayline.config import ConfigError, PipelineConfig


def label_counts(dataset, num_classes: int) -> np.ndarray:
    """Rows per class id in a prepared split's "y" column, counted by streaming it through Ray Data."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for batch in dataset.select_columns(["y"]).iter_batches(batch_size=65536, batch_format="numpy"):
        counts += np.bincount(np.asarray(batch["y"], dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts


def balanced_weights(counts: np.ndarray) -> list[float]:
    """n_rows / (n_classes * rows of the class), as scikit-learn's class_weight="balanced"; a class without
    training rows (none: the classes come from the training split) would get weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (len(counts) * counts[present])
    return weights.tolist()


def check_class_weight(cfg: PipelineConfig) -> None:
    if cfg.train.class_weight == "balanced" and cfg.data.task != "classification":
        raise ConfigError(
            f"train.class_weight 'balanced' weights classes, but data.task is {cfg.data.task!r}; "
            "drop train.class_weight (or set it to none) for regression"
        )


def class_weights_for(cfg: PipelineConfig, train_split, classes: list[str] | None) -> list[float] | None:
    """The loss weights train.class_weight asks for (None: unweighted); counts the split once."""
    check_class_weight(cfg)
    if cfg.train.class_weight != "balanced":
        return None
    return balanced_weights(label_counts(train_split, len(classes)))
