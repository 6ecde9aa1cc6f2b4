"""Check a source's Arrow schema against the data config before any row is processed.

A column's type comes from the files (Parquet's stored type; for CSV and JSON, the cells of the first block
read), so empty cells do not change it; only a column with no value at all in those rows has type null.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from rayline.config import DataConfig
from rayline.data.errors import DataError

NUMERIC = "numeric (int, float, bool or decimal)"
CATEGORICAL = "categorical (string, int, bool or dictionary)"
CLASS_LABEL = "a class label (string, int, bool, float or dictionary)"
NUMBER = "a number (int, float or decimal)"
EMPTY = "has no values in the rows read first (every cell is empty, so its Arrow type is null)"


def check_schema(schema: pa.Schema, data_cfg: DataConfig, source: str) -> None:
    """Raise a DataError listing every missing column and every column of the wrong type. Unresolved
    (features: auto), only the label is checked: resolve_features picks feature columns that fit."""
    features = data_cfg.features if data_cfg.resolved else []
    wanted = [f.name for f in features] + [data_cfg.label]
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; the source has columns {schema.names}")
    problems = []
    for f in features:
        accepts, expected = KINDS[f.kind]
        actual = schema.field(f.name).type
        if pa.types.is_null(actual):
            problems.append(f"{f.kind} feature column {f.name!r} {EMPTY}; fill it or leave it out of data.features")
        elif not accepts(actual):
            problems.append(f"{f.kind} feature column {f.name!r} has type {actual}, expected {expected}")
    accepts, expected = LABELS[data_cfg.task]
    label_type = schema.field(data_cfg.label).type
    if pa.types.is_null(label_type):
        problems.append(f"label column {data_cfg.label!r} {EMPTY}")
    elif not accepts(label_type):
        problems.append(
            f"label column {data_cfg.label!r} has type {label_type}, expected {expected} for {data_cfg.task}"
        )
    if problems:
        raise DataError(f"{source}: " + "; ".join(problems))


def is_numeric(t: pa.DataType) -> bool:
    return is_number(t) or pa.types.is_boolean(t)


def is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def is_categorical(t: pa.DataType) -> bool:
    return is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_dictionary(t)


def is_class_label(t: pa.DataType) -> bool:
    return is_categorical(t) or pa.types.is_floating(t)


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


KINDS: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "numeric": (is_numeric, NUMERIC),
    "categorical": (is_categorical, CATEGORICAL),
}
LABELS: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "classification": (is_class_label, CLASS_LABEL),
    "regression": (is_number, NUMBER),
}
