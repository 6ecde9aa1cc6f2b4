"""Class weights for train.class_weight: balanced, from the training split's label counts."""

from __future__ import annotations

import numpy as np

from rayline.config import ConfigError, PipelineConfig


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


def class_weights_for(cfg: PipelineConfig, label_counts: list[int] | None) -> list[float] | None:
    """The loss weights train.class_weight asks for (None: unweighted), from the training rows per class id
    counted while the data was prepared."""
    check_class_weight(cfg)
    if cfg.train.class_weight != "balanced":
        return None
    assert label_counts is not None, "a classification split's label counts are recorded when it is prepared"
    return balanced_weights(np.asarray(label_counts))
