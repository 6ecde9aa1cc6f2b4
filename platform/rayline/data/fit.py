"""Fit the preprocessor on the training split with Ray Data aggregates (one pass, no to_pandas).

The median is exact: Ray Data's Quantile aggregate gathers the column's non-missing training values (8 bytes
each) and takes their median as numpy.median does (the mean of the two middle values for an even count).
Category frequencies come from ValueCounter over the cells' keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from rayline.config import ConstantImputation, DataConfig, FeatureConfig
from rayline.data.errors import DataError
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.data.values import keys_of, numeric_column, order_keys

if TYPE_CHECKING:
    import ray.data


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


def fit_preprocessor(train_ds: ray.data.Dataset, data_cfg: DataConfig) -> Preprocessor:
    """Statistics of every feature and the label, from train_ds only (rows missing the label are already out)."""
    numeric, categorical = fitted_columns(data_cfg)
    prepared = train_ds.select_columns(numeric + categorical).map_batches(
        fit_columns, fn_kwargs={"numeric": numeric, "categorical": categorical}, batch_format="pandas"
    )
    with task_based_shuffle(prepared):
        result = prepared.aggregate(*aggregates(numeric, categorical, medians(data_cfg)))
    where = data_cfg.source
    features = [fit_feature(f, data_cfg, result, where) for f in data_cfg.features]
    if data_cfg.task == "regression":
        mean, std = moments(result, data_cfg.label, where)
        return Preprocessor("regression", data_cfg.label, features, None, mean, std)
    classes = order_keys(counts(result, data_cfg.label))  # rows missing the label were left out before
    if len(classes) < 2:
        raise DataError(
            f"{where}: label column {data_cfg.label!r} holds only {classes} in the training split; "
            "classification needs at least two classes"
        )
    return Preprocessor("classification", data_cfg.label, features, classes, None, None)


@contextmanager
def task_based_shuffle(ds: ray.data.Dataset) -> Iterator[None]:
    """Ray Data's default shuffle runs an aggregate through hash-shuffle operators, about 2 s before the
    first row even on a few thousand rows on 2 cores; a global aggregate (no key) needs no hash partitioning,
    and the pull-based sort shuffle runs it as plain map and reduce tasks. A dataset plans with the
    DataContext it was created with (`ds.context`), so that is the one to set."""
    from ray.data.context import ShuffleStrategy

    context = ds.context
    before = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = before


def fitted_columns(data_cfg: DataConfig) -> tuple[list[str], list[str]]:
    numeric = [f.name for f in data_cfg.features if f.kind == "numeric"]
    categorical = [f.name for f in data_cfg.features if f.kind == "categorical"]
    (numeric if data_cfg.task == "regression" else categorical).append(data_cfg.label)
    return numeric, categorical


def medians(data_cfg: DataConfig) -> list[str]:
    return [f.name for f in data_cfg.features if f.kind == "numeric" and missing_rule(f, data_cfg)[0] == "median"]


def fit_columns(batch: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pa.Table:
    """Numeric columns as float64 (null where missing; RefusedValue for text or infinity), categorical ones
    as their keys (null where missing), so the aggregates count what the preprocessor will see."""
    columns = {name: pa.array(numeric_column(batch[name], "feature"), from_pandas=True) for name in numeric}
    columns.update({name: pa.array(keys_of(batch[name]), pa.string()) for name in categorical})
    return pa.table(columns)


def aggregates(numeric: list[str], categorical: list[str], median: list[str]) -> list[Any]:
    from ray.data.aggregate import Count, Mean, Quantile, Std, ValueCounter

    aggs: list[Any] = [Count(alias_name="rows")]
    for name in numeric:
        aggs += [Mean(name, alias_name=f"mean({name})"), Std(name, ddof=0, alias_name=f"std({name})")]
    aggs += [Quantile(name, q=0.5, alias_name=f"median({name})") for name in median]
    aggs += [ValueCounter(name, alias_name=f"counts({name})") for name in categorical]
    return aggs


def fit_feature(f: FeatureConfig, data_cfg: DataConfig, result: dict[str, Any], where: str):
    rule, constant = missing_rule(f, data_cfg)
    if f.kind == "numeric":
        mean, std = moments(result, f.name, where)
        fill = {"median": lambda: median_of(result, f.name), "mean": lambda: mean, "constant": lambda: constant}
        indicator = f.indicator if f.indicator is not None else data_cfg.missing.indicator
        return NumericStat(f.name, mean, std, rule, fill[rule]() if rule in fill else None, indicator)
    found = counts(result, f.name)
    if not found:
        raise DataError(f"{where}: column {f.name!r} has no values in the training split (all missing)")
    limit = f.max_categories or data_cfg.max_categories
    # Most frequent first, ties broken by the key; the kept ones then take the usual (numeric-aware) order.
    kept = order_keys(sorted(found, key=lambda k: (-found[k], k))[:limit])
    missing_count = result["rows"] - sum(found.values())
    embed = f.encoding == "embedding" or (f.encoding == "auto" and len(kept) > data_cfg.embedding_threshold)
    missing_slot = rule == "category" and missing_count > 0
    slots = len(kept) + (len(found) > limit) + missing_slot
    dim = (data_cfg.embedding_dim or embedding_width(slots)) if embed else None
    return CategoricalStat(f.name, kept, rule, len(found) > limit, missing_slot, dim)


def embedding_width(categories: int) -> int:
    """The default embedding width (fastai's rule of thumb, capped at 16)."""
    return max(1, min(16, round(1.6 * categories**0.56)))


def median_of(result: dict[str, Any], name: str) -> float:
    value = result[f"median({name})"]
    return float(value[0] if isinstance(value, list) else value)


def moments(result: dict[str, Any], name: str, where: str) -> tuple[float, float]:
    mean, std = result[f"mean({name})"], result[f"std({name})"]
    if mean is None or std is None or (isinstance(mean, float) and math.isnan(mean)):
        raise DataError(f"{where}: column {name!r} has no values in the training split (all missing)")
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DataError(f"{where}: column {name!r} holds values too large to average in the training split")
    return float(mean), float(std)


def counts(result: dict[str, Any], name: str) -> dict[str, int]:
    """{key: rows} of a categorical column's non-missing cells in the training split."""
    found = result[f"counts({name})"] or {"values": [], "counts": []}
    pairs = zip(found["values"], found["counts"], strict=True)
    return {key: int(n) for key, n in pairs if key is not None}
