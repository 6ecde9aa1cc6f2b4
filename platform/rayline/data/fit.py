"""Fit the preprocessor on the training split: each block's statistics (rayline.data.stats), merged on the
driver as the blocks stream by, in one pass. Means, standard deviations and category counts are exact; the
median is exact on small data and within a tracked rank error on large data (see rayline.data.stats).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from rayline.config import ConstantImputation, DataConfig, FeatureConfig
from rayline.data.errors import DataError
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.data.stats import ColumnStats, column_stats
from rayline.data.values import numeric_column, order_keys, value_key


def missing_rule(f: FeatureConfig, data_cfg: DataConfig) -> tuple[str, float | None]:
    """(rule, constant) for a feature: its own `missing`, else data.missing's rule for its kind."""
    rule = f.missing
    if rule is None:
        rule = data_cfg.missing.numeric if f.kind == "numeric" else data_cfg.missing.categorical
    if isinstance(rule, ConstantImputation):
        return "constant", rule.constant
    return rule, None


def drop_row_columns(data_cfg: DataConfig) -> dict[str, bool]:
    """{column: is numeric} of the features whose missing cells leave their row out."""
    return {f.name: f.kind == "numeric" for f in data_cfg.features if missing_rule(f, data_cfg)[0] == "drop_row"}


def fit_block(train_rows: pd.DataFrame, data_cfg: DataConfig) -> ColumnStats:
    """The statistics of one block's training rows (rows missing the label are already out); RefusedValue for
    a numeric cell that is text or infinity."""
    numeric, categorical = fitted_columns(data_cfg)
    numbers = {name: numeric_column(train_rows[name], "feature") for name in numeric}
    counted = {name: key_counts(train_rows[name]) for name in categorical}
    return column_stats(len(train_rows), numbers, medians(data_cfg), counted)


def key_counts(values: pd.Series) -> Counter:
    """Rows per non-missing key, counted per distinct value (value_key runs once per value, not per row)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    found = np.bincount(codes[codes >= 0], minlength=len(uniques))
    counts: Counter = Counter()
    for value, n in zip(uniques, found, strict=True):
        key = value_key(value)
        if key is not None and n:
            counts[key] += int(n)
    return counts


def preprocessor_from_stats(stats: ColumnStats, data_cfg: DataConfig) -> Preprocessor:
    """The fitted preprocessor, from the merged statistics of every training row."""
    where = data_cfg.source
    features = [fit_feature(f, data_cfg, stats, where) for f in data_cfg.features]
    if data_cfg.task == "regression":
        mean, std = moments(stats, data_cfg.label, where)
        return Preprocessor("regression", data_cfg.label, features, None, mean, std)
    classes = order_keys(stats.counts.get(data_cfg.label, {}))
    if len(classes) < 2:
        raise DataError(
            f"{where}: label column {data_cfg.label!r} holds only {classes} in the training split; "
            "classification needs at least two classes"
        )
    return Preprocessor("classification", data_cfg.label, features, classes, None, None)


def fitted_columns(data_cfg: DataConfig) -> tuple[list[str], list[str]]:
    numeric = [f.name for f in data_cfg.features if f.kind == "numeric"]
    categorical = [f.name for f in data_cfg.features if f.kind == "categorical"]
    (numeric if data_cfg.task == "regression" else categorical).append(data_cfg.label)
    return numeric, categorical


def medians(data_cfg: DataConfig) -> list[str]:
    return [f.name for f in data_cfg.features if f.kind == "numeric" and missing_rule(f, data_cfg)[0] == "median"]


def fit_feature(f: FeatureConfig, data_cfg: DataConfig, stats: ColumnStats, where: str):
    rule, constant = missing_rule(f, data_cfg)
    if f.kind == "numeric":
        mean, std = moments(stats, f.name, where)
        fill = {"median": lambda: stats.summaries[f.name].median(), "mean": lambda: mean, "constant": lambda: constant}
        indicator = f.indicator if f.indicator is not None else data_cfg.missing.indicator
        return NumericStat(f.name, mean, std, rule, fill[rule]() if rule in fill else None, indicator)
    found = stats.counts.get(f.name, {})
    if not found:
        raise DataError(f"{where}: column {f.name!r} has no values in the training split (all missing)")
    limit = f.max_categories or data_cfg.max_categories
    # Most frequent first, ties broken by the key; the kept ones then take the usual (numeric-aware) order.
    kept = order_keys(sorted(found, key=lambda k: (-found[k], k))[:limit])
    missing_count = stats.rows - sum(found.values())
    embed = f.encoding == "embedding" or (f.encoding == "auto" and len(kept) > data_cfg.embedding_threshold)
    missing_slot = rule == "category" and missing_count > 0
    slots = len(kept) + (len(found) > limit) + missing_slot
    dim = (data_cfg.embedding_dim or embedding_width(slots)) if embed else None
    return CategoricalStat(f.name, kept, rule, len(found) > limit, missing_slot, dim)


def embedding_width(categories: int) -> int:
    """The default embedding width (fastai's rule of thumb, capped at 16)."""
    return max(1, min(16, round(1.6 * categories**0.56)))


def moments(stats: ColumnStats, name: str, where: str) -> tuple[float, float]:
    found = stats.moments.get(name)
    if found is None or found.count == 0:
        raise DataError(f"{where}: column {name!r} has no values in the training split (all missing)")
    mean, std = found.mean, found.std()
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DataError(f"{where}: column {name!r} holds values too large to average in the training split")
    return float(mean), float(std)
