"""The whole data stage: read, check, split, fit on train, transform every split, materialize."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rayline.config import DataConfig
from rayline.data.errors import DataError, reading, remote_data_error
from rayline.data.fingerprint import fingerprint_source
from rayline.data.fit import drop_row_columns, fit_columns, fit_preprocessor, fitted_columns
from rayline.data.infer import resolve_features
from rayline.data.locate import locate_refused_value
from rayline.data.preprocess import Preprocessor
from rayline.data.read import read_source
from rayline.data.split import LeaveOut, Splits, left_out_reasons, split_dataset

if TYPE_CHECKING:
    import ray.data


# Messages that may come from one cell: a refused value, a text cell that made Arrow type a number column as
# text (or fail to convert it), or a file Arrow could not read.
CELL_PROBLEM = re.compile(r"row \d+ (holds|is missing)|has type|conversion error|could not read it")


@dataclass
class PreparedData:
    train: ray.data.Dataset
    """Columns "x" (float32 [num_inputs]) and "y" (int64 class id, or float32 standardised target)."""
    validation: ray.data.Dataset
    test: ray.data.Dataset | None
    """None when data.split.test is 0 (as is raw_test)."""
    raw_test: ray.data.Dataset | None
    """The test split as read from the source, for batch prediction and evaluation."""
    preprocessor: Preprocessor
    fingerprint: str
    num_rows: dict[str, int]
    """Rows per split: {"train": ..., "validation": ..., "test": ...} (0 for a switched-off test split)."""
    data_cfg: DataConfig
    """The data section as prepared: features: auto resolved to the concrete list of columns and kinds."""
    rows_without_label: int = 0
    """Rows left out of every split because their label cell was missing."""
    rows_dropped: int = 0
    """Rows (with a label) left out of every split because a feature with missing rule drop_row was missing."""


def prepare_datasets(data_cfg: DataConfig, *, check: Callable[[Preprocessor], None] | None = None) -> PreparedData:
    """Model-ready, materialized splits; statistics come from the training split only. `check` sees the fitted
    preprocessor before any split is transformed (e.g. whether the model takes its inputs)."""
    data_cfg = resolve_features(data_cfg)
    fingerprint = fingerprint_source(data_cfg)
    splits = read_and_split(data_cfg)
    preprocessor = fit(splits.train, data_cfg)
    if check is not None:
        check(preprocessor)
    transformed = {
        name: None if split is None else transform(split, preprocessor, data_cfg, name)
        for name, split in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
    }
    num_rows = {name: 0 if split is None else split.count() for name, split in transformed.items()}
    return PreparedData(
        train=transformed["train"],
        validation=transformed["validation"],
        test=transformed["test"],
        raw_test=splits.test,
        preprocessor=preprocessor,
        fingerprint=fingerprint,
        num_rows=num_rows,
        data_cfg=data_cfg,
        rows_without_label=splits.left_out.no_label,
        rows_dropped=splits.left_out.incomplete,
    )


def leave_out(data_cfg: DataConfig) -> LeaveOut:
    return LeaveOut(data_cfg.label, data_cfg.task == "regression", drop_row_columns(data_cfg))


def read_and_split(data_cfg: DataConfig) -> Splits:
    try:
        ds = read_source(data_cfg)
    except DataError as err:
        # A stray text cell makes Arrow type a number column as text; name the cell, then the type.
        found = located(err, data_cfg, parse_check(data_cfg), data_cfg.source)
        raise (err if found is None or str(found) == str(err) else DataError(f"{found}; {err}")) from None
    # read_source read only the first row; a malformed file further on fails here.
    try:
        with reading(data_cfg.source):
            return split_dataset(ds, data_cfg.split, leave_out(data_cfg))
    except DataError as err:
        # A number column Arrow typed from a file's first block fails to read where text follows.
        raise located(err, data_cfg, parse_check(data_cfg), data_cfg.source) or err from None


def fit(train: ray.data.Dataset, data_cfg: DataConfig) -> Preprocessor:
    try:
        return fit_preprocessor(train, data_cfg)
    except Exception as err:
        failure = located(err, data_cfg, parse_check(data_cfg), f"{data_cfg.source} (train split)")
        if failure is None:
            raise
        raise failure from None


def transform(ds: ray.data.Dataset, preprocessor: Preprocessor, data_cfg: DataConfig, name: str) -> ray.data.Dataset:
    # Materialized so training never runs a lazy pipeline: with every CPU held by trainers a lazy read
    # waits forever for a CPU (RAY_NOTES §3).
    columns = [f.name for f in preprocessor.features] + [preprocessor.label]
    try:
        return ds.select_columns(columns).map_batches(preprocessor.transform_batch, batch_format="pandas").materialize()
    except Exception as err:
        failure = located(err, data_cfg, preprocessor.transform_batch, f"{data_cfg.source} ({name} split)")
        if failure is None:
            raise
        raise failure from None


def located(
    err: BaseException, data_cfg: DataConfig, check: Callable[[pd.DataFrame], object], where: str
) -> DataError | None:
    """The DataError to show for a failure in Ray Data: the refused cell's file and row when the source files
    hold one (found on the driver by `check`), else the task's own message; None if err is no data error."""
    message = remote_data_error(err)
    if message is None:
        return None
    fallback = DataError(message if message.startswith(data_cfg.source) else f"{where}: {message}")
    if not CELL_PROBLEM.search(message):  # e.g. an empty split: no cell to find, so no reason to read every file
        return fallback
    numeric, categorical = fitted_columns(data_cfg)
    columns = {name: True for name in numeric} | {name: False for name in categorical}
    rules = leave_out(data_cfg)

    def keep(df: pd.DataFrame) -> np.ndarray:
        return left_out_reasons(df, rules) == 0

    found = locate_refused_value(data_cfg.source, data_cfg.format, columns, check, keep)
    return fallback if found is None else DataError(found)


def parse_check(data_cfg: DataConfig) -> Callable[[pd.DataFrame], object]:
    """What the fit pass refuses: a numeric cell that is neither missing nor a finite number."""
    numeric, categorical = fitted_columns(data_cfg)

    def check(df: pd.DataFrame) -> object:
        return fit_columns(df, numeric, categorical)

    return check
