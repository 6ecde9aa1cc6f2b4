"""The fitted preprocessor: standardise numeric features, one-hot categorical ones, encode the label.

Pure pandas/numpy: serving, batch prediction and unit tests use it without Ray. The statistics are
computed on a Ray Dataset in fit.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayline.data.errors import DataError

TASKS = ("classification", "regression")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class NumericStat:
    name: str
    mean: float
    std: float

    @property
    def scale(self) -> float:
        # A column that is constant in train would divide by zero.
        return self.std if self.std > 0 else 1.0


@dataclass(frozen=True)
class CategoricalStat:
    name: str
    categories: list[str]


@dataclass(frozen=True)
class Preprocessor:
    task: str
    label: str
    features: list[NumericStat | CategoricalStat]
    classes: list[str] | None
    target_mean: float | None
    target_std: float | None

    @property
    def num_inputs(self) -> int:
        return sum(1 if isinstance(f, NumericStat) else len(f.categories) for f in self.features)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else 1

    def model_shape(self) -> dict[str, Any]:
        """Keyword arguments of build_model that depend on the data: build_model(cfg.model, **p.model_shape())."""
        return {"num_inputs": self.num_inputs, "num_outputs": self.num_outputs}

    def feature_schema(self) -> list[dict[str, Any]]:
        """What a request must carry, one entry per input column, in model order."""
        schema = []
        for f in self.features:
            if isinstance(f, NumericStat):
                schema.append({"name": f.name, "kind": "numeric"})
            else:
                schema.append({"name": f.name, "kind": "categorical", "categories": list(f.categories)})
        return schema

    def transform_features(self, df: pd.DataFrame) -> np.ndarray:
        """float32 [n, num_inputs]: standardised numerics and one-hot blocks, in config order."""
        require_columns(df, [f.name for f in self.features], "feature")
        x = np.zeros((len(df), self.num_inputs), dtype=np.float32)
        col = 0
        for f in self.features:
            if isinstance(f, NumericStat):
                x[:, col] = (numeric_values(df[f.name], f"feature column {f.name!r}") - f.mean) / f.scale
                col += 1
            else:
                # Unseen and missing categories leave their block all zero.
                ids = lookup(df[f.name], f.categories)
                rows = np.flatnonzero(ids >= 0)
                x[rows, col + ids[rows]] = 1.0
                col += len(f.categories)
        return x

    def encode_labels(self, values: pd.Series) -> np.ndarray:
        """Class ids int64 (classification) or the standardised target float32 (regression)."""
        if self.classes is None:
            y = numeric_values(values, f"label column {self.label!r}")
            return ((y - self.target_mean) / scale_of(self.target_std)).astype(np.float32)
        ids = lookup(values, self.classes)
        bad = np.flatnonzero(ids < 0)
        if len(bad):
            row = int(bad[0])
            key = value_key(values.iloc[row])
            what = "a missing value" if key is None else f"{key!r}, a class not seen in training"
            raise DataError(
                f"label column {self.label!r}: row {row} holds {what} ({len(bad)} such row(s)); "
                f"known classes: {preview(self.classes)}"
            )
        return ids

    def transform_batch(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """For Ray Data map_batches: {"x": float32 [n, num_inputs], "y": labels}."""
        require_columns(df, [self.label], "label")
        return {"x": self.transform_features(df), "y": self.encode_labels(df[self.label])}

    def decode(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Model outputs back to answers: class probabilities (softmax of logits) or the unscaled value."""
        out = np.asarray(outputs, dtype=np.float64)
        if out.ndim == 1 and self.classes is None:
            out = out[:, None]
        if out.ndim != 2 or out.shape[1] != self.num_outputs:
            raise DataError(f"model outputs have shape {out.shape}; expected [n, {self.num_outputs}]")
        if self.classes is None:
            values = out[:, 0] * scale_of(self.target_std) + self.target_mean
            return [{"value": float(v)} for v in values]
        p = np.exp(out - out.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        answers = []
        for row in p:
            probabilities = dict(zip(self.classes, row.tolist(), strict=True))
            answers.append({"label": self.classes[int(row.argmax())], "probabilities": probabilities})
        return answers

    def to_dict(self) -> dict[str, Any]:
        features = []
        for f in self.features:
            if isinstance(f, NumericStat):
                features.append({"name": f.name, "kind": "numeric", "mean": f.mean, "std": f.std})
            else:
                features.append({"name": f.name, "kind": "categorical", "categories": list(f.categories)})
        return {
            "version": FORMAT_VERSION,
            "task": self.task,
            "label": self.label,
            "features": features,
            "classes": None if self.classes is None else list(self.classes),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        """Rebuild from to_dict() output, rejecting anything malformed with the key path at fault."""
        where = "preprocessor"
        check(isinstance(d, dict), where, "a mapping", d)
        known = {"version", "task", "label", "features", "classes", "target_mean", "target_std"}
        unknown = sorted(set(d) - known)
        check(not unknown, where, f"only the keys {sorted(known)}", unknown)
        check(d.get("version") == FORMAT_VERSION, f"{where}.version", f"{FORMAT_VERSION}", d.get("version"))
        task = required(d, "task", where)
        check(task in TASKS, f"{where}.task", f"one of {list(TASKS)}", task)
        label = required(d, "label", where)
        check(isinstance(label, str) and label != "", f"{where}.label", "a non-empty string", label)
        raw_features = required(d, "features", where)
        ok = isinstance(raw_features, list) and len(raw_features) > 0
        check(ok, f"{where}.features", "a non-empty list", raw_features)
        features = [feature_from_dict(f, f"{where}.features[{i}]") for i, f in enumerate(raw_features)]
        if task == "classification":
            classes = string_list(d.get("classes"), f"{where}.classes")
            check(len(classes) >= 2, f"{where}.classes", "at least two classes", classes)
            return cls(task, label, features, classes, None, None)
        mean = number(d.get("target_mean"), f"{where}.target_mean")
        std = number(d.get("target_std"), f"{where}.target_std")
        check(std >= 0, f"{where}.target_std", "a number >= 0", std)
        return cls(task, label, features, None, mean, std)


def value_key(value: Any) -> str | None:
    """The string a label or category value is stored under; None for a missing value.

    Integer-valued floats become the integer's text (3.0 -> "3"): a CSV int column with a gap is read
    as float, and the same class must keep the same key.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def sorted_keys(values: Iterable[Any]) -> list[str]:
    """Distinct non-missing keys, in numeric order when all are numbers so labels 0..9 keep ids 0..9."""
    keys = {k for k in map(value_key, values) if k is not None}
    try:
        return sorted(keys, key=lambda k: (float(k), k))
    except ValueError:
        return sorted(keys)


def lookup(values: pd.Series, keys: list[str]) -> np.ndarray:
    """Index of each value's key in keys (int64); -1 for missing or unknown values."""
    position = {k: i for i, k in enumerate(keys)}
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    # The trailing -1 is what the NA code (-1) picks.
    ids = [position.get(value_key(u), -1) for u in uniques] + [-1]
    return np.asarray(ids, dtype=np.int64)[codes]


def numeric_values(values: pd.Series, what: str) -> np.ndarray:
    """float64 values, or a DataError naming the first row that is not a finite number."""
    numeric = pd.api.types.is_numeric_dtype(values.dtype)
    numbers = values if numeric else pd.to_numeric(values, errors="coerce")
    array = np.asarray(numbers.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{what}: row {row} holds {values.iloc[row]!r}, expected a finite number ({len(bad)} such row(s))"
        )
    return array


def require_columns(df: pd.DataFrame, names: list[str], kind: str) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        columns = preview(list(df.columns))
        raise DataError(f"missing {kind} column(s) {missing}; the input has columns {columns}")


def scale_of(std: float | None) -> float:
    return std if std else 1.0


def preview(items: list[Any], limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


# ---------------------------------------------------------------- from_dict helpers


def check(ok: bool, where: str, expected: str, got: Any) -> None:
    if not ok:
        raise DataError(f"{where}: expected {expected}, got {got!r}")


def required(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise DataError(f"{where}.{key}: required key is missing")
    return d[key]


def number(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    check(ok, where, "a finite number", value)
    return float(value)


def string_list(value: Any, where: str) -> list[str]:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    check(ok, where, "a list of strings", value)
    check(len(set(value)) == len(value), where, "distinct strings", value)
    return list(value)


def feature_from_dict(d: Any, where: str) -> NumericStat | CategoricalStat:
    check(isinstance(d, dict), where, "a mapping", d)
    name = required(d, "name", where)
    check(isinstance(name, str) and name != "", f"{where}.name", "a non-empty string", name)
    kind = required(d, "kind", where)
    if kind == "numeric":
        std = number(required(d, "std", where), f"{where}.std")
        check(std >= 0, f"{where}.std", "a number >= 0", std)
        return NumericStat(name, number(required(d, "mean", where), f"{where}.mean"), std)
    check(kind == "categorical", f"{where}.kind", "'numeric' or 'categorical'", kind)
    categories = string_list(required(d, "categories", where), f"{where}.categories")
    check(len(categories) > 0, f"{where}.categories", "at least one category", categories)
    return CategoricalStat(name, categories)
