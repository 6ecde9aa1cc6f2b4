"""The fitted preprocessor: fill missing cells, standardise numeric features, one-hot (or number for an
embedding) categorical ones, encode the label.

Pure pandas/numpy: training (through Ray Data), serving and batch prediction all run this code, so a
missing cell gets the same value everywhere. The statistics are computed on a Ray Dataset in fit.py; the
JSON form is read back in stored.py.

Model inputs, per feature in config order:
- numeric: one column, (value - mean) / std, a missing cell first replaced by `fill` (median, mean or
  constant); with `indicator`, a second column that is 1 where the cell was missing.
- categorical: slots = the kept categories, then "other" (when max_categories cut some off: the rarer ones,
  and values unseen in training), then "missing" (rule category, when the training split had missing cells).
  One-hot: one column per slot. Embedding: one column holding slot + 1 as a float; 0 means "no slot" and
  embeds to zeros. A value with no slot (unseen with no "other"; missing with no "missing" slot: it is
  treated as unseen) leaves the one-hot block all zero, as version 1 did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayline.data.errors import DataError
from rayline.data.values import (
    RefusedValue,
    lookup,
    missing_cells,
    numeric_column,
    preview,
    sorted_keys,
    value_key,
)

__all__ = ["CategoricalStat", "NumericStat", "Preprocessor", "sorted_keys", "value_key"]

TASKS = ("classification", "regression")
FORMAT_VERSION = 2
NUMERIC_RULES = ("median", "mean", "constant", "drop_row", "error")
CATEGORICAL_RULES = ("category", "drop_row", "error")
FILLED = ("median", "mean", "constant")


@dataclass(frozen=True)
class NumericStat:
    name: str
    mean: float
    std: float
    missing: str = "error"
    """One of NUMERIC_RULES; a version-1 preprocessor's features are "error"."""
    fill: float | None = None
    """The value a missing cell takes (rules median, mean, constant)."""
    indicator: bool = False
    """A second input column: 1 where the cell was missing."""

    @property
    def scale(self) -> float:
        # A column that is constant in train would divide by zero.
        return self.std if self.std > 0 else 1.0

    @property
    def width(self) -> int:
        return 2 if self.indicator else 1

    @property
    def nullable(self) -> bool:
        return self.missing in FILLED


@dataclass(frozen=True)
class CategoricalStat:
    name: str
    categories: list[str]
    """The kept categories, in slot order."""
    missing: str = "category"
    """One of CATEGORICAL_RULES."""
    other: bool = False
    """A shared slot after the kept categories, for the ones max_categories cut off and for unseen values."""
    missing_slot: bool = False
    """A slot of its own for missing cells (rule category, fitted on a training split that had some)."""
    embedding_dim: int | None = None
    """None: a one-hot block; else the width of the learned embedding the model looks the slot up in."""
    positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", {c: i for i, c in enumerate(self.categories)})

    @property
    def slots(self) -> int:
        return len(self.categories) + self.other + self.missing_slot

    @property
    def width(self) -> int:
        return 1 if self.embedding_dim is not None else self.slots

    @property
    def nullable(self) -> bool:
        return self.missing == "category"

    def slot(self, key: str | None) -> int:
        """The slot of a category key (None: missing), or -1 for no slot. The missing rule is checked elsewhere."""
        if key is None and self.missing_slot:
            return self.slots - 1
        position = self.positions.get(key, -1) if key is not None else -1
        if position < 0 and self.other:
            return len(self.categories)
        return position

    def slots_of(self, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(slot per row, -1 for none; True where the value is missing)."""
        ids, missing = lookup(values, self.categories)
        if self.other:
            ids[(ids < 0) & ~missing] = len(self.categories)
        if self.missing_slot:
            ids[missing] = self.slots - 1
        elif self.other:
            ids[missing] = len(self.categories)
        return ids, missing


Feature = NumericStat | CategoricalStat


@dataclass(frozen=True)
class Preprocessor:
    task: str
    label: str
    features: list[Feature]
    classes: list[str] | None
    target_mean: float | None
    target_std: float | None

    @property
    def num_inputs(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else 1

    def model_shape(self) -> dict[str, Any]:
        """Keyword arguments of build_model that depend on the data: build_model(cfg.model, **p.model_shape())."""
        embeddings, column = [], 0
        for f in self.features:
            if isinstance(f, CategoricalStat) and f.embedding_dim is not None:
                embeddings.append({"name": f.name, "column": column, "ids": f.slots + 1, "dim": f.embedding_dim})
            column += f.width
        return {"num_inputs": self.num_inputs, "num_outputs": self.num_outputs, "embeddings": embeddings}

    def input_columns(self) -> list[str]:
        """The feature behind each model input column (an indicator column is named "NAME (missing)")."""
        names = []
        for f in self.features:
            names += [f.name] * (1 if isinstance(f, NumericStat) else f.width)
            if isinstance(f, NumericStat) and f.indicator:
                names.append(f"{f.name} (missing)")
        return names

    def feature_schema(self) -> list[dict[str, Any]]:
        """What a request must carry, one entry per input feature, in model order.

        "nullable": the feature may be null or left out of a request (its missing rule fills it in).
        """
        schema = []
        for f in self.features:
            entry: dict[str, Any] = {"name": f.name, "kind": "numeric"}
            if isinstance(f, CategoricalStat):
                encoding = "onehot" if f.embedding_dim is None else "embedding"
                entry.update(kind="categorical", categories=list(f.categories), other=f.other, encoding=encoding)
            entry.update(missing=f.missing, nullable=f.nullable)
            schema.append(entry)
        return schema

    def rows_to_drop(self, df: pd.DataFrame) -> np.ndarray:
        """True for rows missing a value in a drop_row feature (left out of training; no prediction)."""
        drop = np.zeros(len(df), dtype=bool)
        for f in self.features:
            if f.missing == "drop_row" and f.name in df.columns:
                drop |= missing_cells(df[f.name], numeric=isinstance(f, NumericStat))
        return drop

    def transform_features(self, df: pd.DataFrame) -> np.ndarray:
        """float32 [n, num_inputs] in config order (see the module docstring); RefusedValue for a cell no rule
        accepts, including a missing cell whose rule is error or drop_row (drop those rows first)."""
        require_columns(df, [f.name for f in self.features], "feature")
        x = np.zeros((len(df), self.num_inputs), dtype=np.float32)
        column = 0
        for f in self.features:
            if isinstance(f, NumericStat):
                numeric_block(f, df[f.name], x, column)
            else:
                categorical_block(f, df[f.name], x, column)
            column += f.width
        return x

    def one_hot_inputs(self, x: np.ndarray) -> np.ndarray:
        """x with every embedded column widened back into its one-hot block (for a linear baseline)."""
        if not any(isinstance(f, CategoricalStat) and f.embedding_dim is not None for f in self.features):
            return x
        blocks, column = [], 0
        for f in self.features:
            part = x[:, column : column + f.width]
            if isinstance(f, CategoricalStat) and f.embedding_dim is not None:
                ids = part[:, 0].astype(np.int64)
                part = np.eye(f.slots + 1, dtype=x.dtype)[ids][:, 1:]
            blocks.append(part)
            column += f.width
        return np.concatenate(blocks, axis=1)

    def encode_labels(self, values: pd.Series) -> np.ndarray:
        """Class ids int64 (classification) or the standardised target float32 (regression)."""
        what = "label"
        if self.classes is None:
            y = numeric_column(values.rename(self.label), what)
            refuse_missing(np.isnan(y), what, self.label, "is missing")
            return ((y - self.target_mean) / scale_of(self.target_std)).astype(np.float32)
        ids, missing = lookup(values, self.classes)
        refuse_missing(missing, what, self.label, "is missing")
        bad = np.flatnonzero(ids < 0)
        if len(bad):
            row = int(bad[0])
            reason = f"holds {value_key(values.iloc[row])!r}, a class not seen in training; known classes: "
            raise RefusedValue(what, self.label, row, reason + preview(self.classes), len(bad))
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
        return {
            "version": FORMAT_VERSION,
            "task": self.task,
            "label": self.label,
            "features": [feature_to_dict(f) for f in self.features],
            "classes": None if self.classes is None else list(self.classes),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        """Rebuild from to_dict() output (format 1 or 2), rejecting anything malformed with the key path at fault."""
        from rayline.data.stored import preprocessor_from_dict

        return preprocessor_from_dict(d)


def numeric_block(f: NumericStat, values: pd.Series, x: np.ndarray, column: int) -> None:
    what = "feature"
    array = numeric_column(values.rename(f.name), what)
    missing = np.isnan(array)
    if f.fill is None:
        refuse_missing(missing, what, f.name, f"is missing and the feature's missing rule is {f.missing}")
    else:
        array[missing] = f.fill
    x[:, column] = (array - f.mean) / f.scale
    if f.indicator:
        x[:, column + 1] = missing


def categorical_block(f: CategoricalStat, values: pd.Series, x: np.ndarray, column: int) -> None:
    ids, missing = f.slots_of(values)
    if f.missing != "category":
        refuse_missing(missing, "feature", f.name, f"is missing and the feature's missing rule is {f.missing}")
    if f.embedding_dim is not None:
        x[:, column] = ids + 1
        return
    rows = np.flatnonzero(ids >= 0)
    x[rows, column + ids[rows]] = 1.0


def refuse_missing(missing: np.ndarray, what: str, column: str, reason: str) -> None:
    rows = np.flatnonzero(missing)
    if len(rows):
        raise RefusedValue(what, column, int(rows[0]), reason, len(rows))


def feature_to_dict(f: Feature) -> dict[str, Any]:
    if isinstance(f, NumericStat):
        return {
            "name": f.name,
            "kind": "numeric",
            "mean": f.mean,
            "std": f.std,
            "missing": f.missing,
            "fill": f.fill,
            "indicator": f.indicator,
        }
    return {
        "name": f.name,
        "kind": "categorical",
        "categories": list(f.categories),
        "missing": f.missing,
        "other": f.other,
        "missing_slot": f.missing_slot,
        "embedding_dim": f.embedding_dim,
    }


def require_columns(df: pd.DataFrame, names: list[str], kind: str) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        columns = preview(list(df.columns))
        raise DataError(f"missing {kind} column(s) {missing}; the input has columns {columns}")


def scale_of(std: float | None) -> float:
    return std if std else 1.0
