"""The fast path from a parsed `/predict` body to model inputs. No Ray, no pandas.

Validating each row with pydantic and preprocessing through a DataFrame costs about 2 ms per
request, more than the model itself. Well-formed requests do not need that: `FastEncoder` checks
the shape and types with plain Python, scales with one numpy expression, and returns None at the
first thing it does not like. The caller then takes the validating path (`RequestSchema` and the
`Preprocessor`), which either accepts the request or names every problem, so answers and error
messages are the same whichever path ran; the two paths must give identical inputs (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor
from rayline.serve.schema import FLOAT32_MAX, MAX_ROWS


@dataclass(frozen=True)
class RawRows:
    """Rows as an exported graph takes them (edge/contract.py): numeric values, and categorical keys, each in
    model order; None where the model has no feature of that kind."""

    numeric: np.ndarray | None
    """float64 [n, numeric features]; NaN = missing."""
    categorical: np.ndarray | None
    """object (str) [n, categorical features]; "" = missing."""

    def __len__(self) -> int:
        return len(self.numeric if self.numeric is not None else self.categorical)

    def __getitem__(self, rows: slice) -> RawRows:
        return RawRows(*(None if a is None else a[rows] for a in (self.numeric, self.categorical)))

    @staticmethod
    def concat(parts: Sequence[RawRows]) -> RawRows:
        first = parts[0]
        arrays = (
            None if getattr(first, kind) is None else np.concatenate([getattr(p, kind) for p in parts])
            for kind in ("numeric", "categorical")
        )
        return RawRows(*arrays)


class FastEncoder:
    """Rows (objects or lists) to float32 model inputs, or None to ask for the validating path.

    Rows with a null or left-out value always take the validating path, which applies the missing rules.
    """

    def __init__(self, preprocessor: Preprocessor, *, max_rows: int = MAX_ROWS):
        self.max_rows = max_rows
        self.names = [f.name for f in preprocessor.features]
        self.name_set = frozenset(self.names)
        self.num_inputs = preprocessor.num_inputs
        numeric = [(i, f) for i, f in enumerate(preprocessor.features) if isinstance(f, NumericStat)]
        self.numeric_index = [i for i, _ in numeric]
        self.mean = np.array([f.mean for _, f in numeric], dtype=np.float64)
        self.scale = np.array([f.scale for _, f in numeric], dtype=np.float64)
        # Model column of each numeric feature, and (row position, first column, feature) per categorical one.
        self.numeric_columns: list[int] = []
        self.categorical: list[tuple[int, int, CategoricalStat]] = []
        column = 0
        for i, f in enumerate(preprocessor.features):
            if isinstance(f, NumericStat):
                self.numeric_columns.append(column)  # an indicator column after it stays 0: nothing was missing
            else:
                self.categorical.append((i, column, f))
            column += f.width
        self.all_numeric = len(numeric) == len(self.names) and column == len(numeric)

    def encode(self, payload: Any) -> np.ndarray | None:
        rows = self._rows(payload)
        if rows is None:
            return None
        numbers = rows if self.all_numeric else [[row[i] for i in self.numeric_index] for row in rows]
        x_bf = self._scaled(numbers, len(rows))
        if x_bf is None or not self.categorical:
            return x_bf
        return self._categories(rows, x_bf)

    def _rows(self, payload: Any) -> list[list[Any]] | None:
        if type(payload) is not dict or len(payload) != 1:
            return None
        rows = payload.get("rows")
        if type(rows) is not list or not 0 < len(rows) <= self.max_rows:
            return None
        width = len(self.names)
        out = []
        for row in rows:
            if type(row) is dict:
                if len(row) != width or row.keys() != self.name_set:
                    return None
                row = [row[name] for name in self.names]
            elif type(row) is not list or len(row) != width:
                return None
            out.append(row)
        return out

    def raw(self, payload: Any) -> RawRows | None:
        """The rows as an exported graph takes them, after the same checks as `encode` (None: the validating path)."""
        rows = self._rows(payload)
        if rows is None:
            return None
        numeric = None
        if self.numeric_index:
            numbers = rows if self.all_numeric else [[row[i] for i in self.numeric_index] for row in rows]
            checked = self._checked(numbers, len(rows))
            if checked is None:
                return None
            numeric = checked[0]
        if not self.categorical:
            return RawRows(numeric, None)
        keys = [[category_key(row[position]) for position, _, _ in self.categorical] for row in rows]
        if any(k is None for row in keys for k in row):
            return None
        return RawRows(numeric, np.array(keys, dtype=object).reshape(len(rows), len(self.categorical)))

    def _checked(self, numbers: list[list[Any]], n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(raw float64, scaled float32) numeric values, or None for anything the validating path must judge."""
        # bool is a subclass of int and numpy would take "1.5" as a number: check exact types first.
        for row in numbers:
            for v in row:
                if type(v) is not float and type(v) is not int:
                    return None
        try:
            raw = np.array(numbers, dtype=np.float64).reshape(n, len(self.mean))
        except (OverflowError, ValueError):
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            if not (np.abs(raw) <= FLOAT32_MAX).all():  # also False for NaN and infinities
                return None
            scaled = ((raw - self.mean) / self.scale).astype(np.float32)
        if not np.isfinite(scaled).all():
            return None
        return raw, scaled

    def _scaled(self, numbers: list[list[Any]], n: int) -> np.ndarray | None:
        checked = self._checked(numbers, n)
        if checked is None:
            return None
        scaled = checked[1]
        if self.all_numeric:
            return scaled
        x_bf = np.zeros((n, self.num_inputs), dtype=np.float32)
        x_bf[:, self.numeric_columns] = scaled
        return x_bf

    def _categories(self, rows: list[list[Any]], x_bf: np.ndarray) -> np.ndarray | None:
        for r, row in enumerate(rows):
            for position, first_column, f in self.categorical:
                key = category_key(row[position])
                if key is None:
                    return None
                slot = f.slot(key)  # unseen: the "other" slot, or none (an all-zero block), as in training
                if f.embedding_dim is not None:
                    x_bf[r, first_column] = slot + 1
                elif slot >= 0:
                    x_bf[r, first_column + slot] = 1.0
        return x_bf


def category_key(value: Any) -> str | None:
    """The key a category value is looked up by (as the validating path makes it); None if not plain."""
    if type(value) is str:
        return value if value != "" else None  # an empty string is a missing value
    if type(value) is int:
        return str(value)
    if type(value) is float and value.is_integer():
        return str(int(value))
    return None
