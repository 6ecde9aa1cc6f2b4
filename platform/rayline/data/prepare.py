"""The whole data stage: read, check, split, fit on train, transform every split, materialize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rayline.config import DataConfig
from rayline.data.errors import DataError, reading, remote_data_error
from rayline.data.fingerprint import fingerprint_source
from rayline.data.fit import fit_preprocessor
from rayline.data.infer import resolve_features
from rayline.data.preprocess import Preprocessor
from rayline.data.read import read_source
from rayline.data.split import Splits, split_dataset

if TYPE_CHECKING:
    import ray.data


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


def prepare_datasets(data_cfg: DataConfig) -> PreparedData:
    """Model-ready, materialized splits; statistics come from the training split only."""
    data_cfg = resolve_features(data_cfg)
    fingerprint = fingerprint_source(data_cfg)
    splits = read_and_split(data_cfg)
    preprocessor = fit_preprocessor(splits.train, data_cfg)
    transformed = {
        name: None if split is None else transform(split, preprocessor, f"{data_cfg.source} ({name} split)")
        for name, split in splits._asdict().items()
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
    )


def read_and_split(data_cfg: DataConfig) -> Splits:
    ds = read_source(data_cfg)
    # read_source read only the first row; a malformed file further on fails here.
    with reading(data_cfg.source):
        try:
            return split_dataset(ds, data_cfg.split)
        except DataError as err:
            raise DataError(f"{data_cfg.source}: {err}") from None


def transform(ds: ray.data.Dataset, preprocessor: Preprocessor, where: str) -> ray.data.Dataset:
    # Materialized so training never runs a lazy pipeline: with every CPU held by trainers a lazy read
    # waits forever for a CPU (RAY_NOTES §3).
    columns = [f.name for f in preprocessor.features] + [preprocessor.label]
    try:
        return ds.select_columns(columns).map_batches(preprocessor.transform_batch, batch_format="pandas").materialize()
    except Exception as err:
        message = remote_data_error(err)
        if message is None:
            raise
        raise DataError(f"{where}: {message}") from None
