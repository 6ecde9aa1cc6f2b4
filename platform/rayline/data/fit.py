"""Fit the preprocessor on the training split with Ray Data aggregates (one pass, no to_pandas)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from rayline.config import DataConfig
from rayline.data.errors import DataError
from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor, sorted_keys

if TYPE_CHECKING:
    import ray.data


def fit_preprocessor(train_ds: ray.data.Dataset, data_cfg: DataConfig) -> Preprocessor:
    """Means and standard deviations of numeric columns, categories and classes, from train_ds only."""
    from ray.data.aggregate import Mean, Std, Unique

    numeric = [f.name for f in data_cfg.features if f.kind == "numeric"]
    categorical = [f.name for f in data_cfg.features if f.kind == "categorical"]
    if data_cfg.task == "regression":
        numeric.append(data_cfg.label)
    else:
        categorical.append(data_cfg.label)
    aggregates = [agg for name in numeric for agg in (Mean(name), Std(name, ddof=0))]
    aggregates += [Unique(name) for name in categorical]
    # Arrow's arithmetic has no bool or decimal kernels for Std; float64 is what the model sees anyway.
    columns = train_ds.select_columns(numeric + categorical)
    floats = columns.map_batches(cast_to_float, fn_kwargs={"names": numeric}, batch_format="pyarrow")
    result = floats.aggregate(*aggregates)

    where = data_cfg.source
    features: list[NumericStat | CategoricalStat] = []
    for f in data_cfg.features:
        if f.kind == "numeric":
            features.append(NumericStat(f.name, *moments(result, f.name, where)))
        else:
            features.append(CategoricalStat(f.name, categories(result, f.name, where)))
    if data_cfg.task == "regression":
        mean, std = moments(result, data_cfg.label, where)
        return Preprocessor("regression", data_cfg.label, features, None, mean, std)
    classes = categories(result, data_cfg.label, where)
    if len(classes) < 2:
        raise DataError(
            f"{where}: label column {data_cfg.label!r} holds only {classes} in the training split; "
            "classification needs at least two classes"
        )
    return Preprocessor("classification", data_cfg.label, features, classes, None, None)


def cast_to_float(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(i).cast(pa.float64()))
    return table


def moments(result: dict[str, Any], name: str, where: str) -> tuple[float, float]:
    mean, std = result[f"mean({name})"], result[f"std({name})"]
    if mean is None or std is None:
        raise DataError(f"{where}: column {name!r} has no values in the training split (all missing)")
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DataError(f"{where}: column {name!r} holds NaN or infinite values in the training split")
    return float(mean), float(std)


def categories(result: dict[str, Any], name: str, where: str) -> list[str]:
    keys = sorted_keys(result[f"unique({name})"] or [])
    if not keys:
        raise DataError(f"{where}: column {name!r} has no values in the training split (all missing)")
    return keys
