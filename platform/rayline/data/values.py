"""Cell-level rules shared by fitting, training, serving and batch prediction: what is missing, what is a
number, and the key a category is stored under. Pure pandas/numpy.

A missing cell is a null, a NaN, or (in a categorical or label column) an empty string. In a numeric column
the spellings Arrow's CSV reader reads as null (NA, N/A, NULL, nan, ...) are missing too, so a column gives
the same cells whether Arrow typed it as numbers or left it as text. Infinity and other text are not
missing: they are refused (RefusedValue) whatever the column's missing rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from rayline.data.errors import DataError

# pyarrow.csv.ConvertOptions().null_values (Arrow 26), spelled out so importing this module reads nothing.
NULL_SPELLINGS = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"]
    + ["N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"]
)


class RefusedValue(DataError):
    """A cell no rule accepts; `row` is its position in the batch, so the caller can say where it came from."""

    def __init__(self, what: str, column: str, row: int, reason: str, count: int = 1):
        self.column, self.row, self.reason = column, row, reason
        super().__init__(f"{what} column {column!r}: row {row} {reason} ({count} such row(s))")


def value_key(value: Any) -> str | None:
    """The string a label or category value is stored under; None for a missing value.

    Integer-valued floats become the integer's text (3.0 -> "3"): a CSV int column with a gap is read
    as float, and the same class must keep the same key. An empty string is missing (a CSV's empty cell
    in a text column).
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
    text = str(value)
    return text if text != "" else None


def sorted_keys(values: Iterable[Any]) -> list[str]:
    """Distinct non-missing keys, in numeric order when all are numbers so labels 0..9 keep ids 0..9."""
    keys = {k for k in map(value_key, values) if k is not None}
    return order_keys(keys)


def order_keys(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    try:
        return sorted(keys, key=lambda k: (float(k), k))
    except ValueError:
        return sorted(keys)


def keys_of(values: pd.Series) -> list[str | None]:
    """value_key of every cell, computed once per distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    keys = [value_key(u) for u in uniques] + [None]  # the trailing None is what the NA code (-1) picks
    return [keys[c] for c in codes]


def lookup(values: pd.Series, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(index of each value's key in keys, -1 when missing or unknown; True where the value is missing)."""
    position = {k: i for i, k in enumerate(keys)}
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    unique_keys = [value_key(u) for u in uniques] + [None]
    ids = np.asarray([-1 if k is None else position.get(k, -1) for k in unique_keys], dtype=np.int64)
    absent = np.asarray([k is None for k in unique_keys], dtype=bool)
    return ids[codes], absent[codes]


def missing_cells(values: pd.Series, *, numeric: bool) -> np.ndarray:
    """True where a cell is missing (see the module docstring for what counts)."""
    missing = values.isna().to_numpy(dtype=bool, copy=True)
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        spellings = NULL_SPELLINGS if numeric else frozenset([""])
        text = np.asarray([isinstance(v, str) and v.strip() in spellings for v in values], dtype=bool)
        missing |= text
    return missing


def numeric_column(values: pd.Series, what: str) -> np.ndarray:
    """float64 values with NaN where the cell is missing; RefusedValue at the first cell that is neither
    missing nor a finite number (text, infinity)."""
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        array = np.array(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        missing = np.isnan(array)
    else:
        missing = missing_cells(values, numeric=True)
        present = values.where(~missing, None)
        numbers = pd.to_numeric(present, errors="coerce")
        array = np.array(numbers.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    bad = np.flatnonzero(~missing & ~np.isfinite(array))
    if len(bad):
        row = int(bad[0])
        reason = f"holds {values.iloc[row]!r}, expected a finite number"
        raise RefusedValue(what, str(values.name), row, reason, len(bad))
    array[missing] = np.nan
    return array


def preview(items: list[Any], limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"
