"""Divide a Dataset into train / validation / test, the same way every run for a given seed.

Each row's split comes from a seeded hash of its values: a row whose hash falls in the first
`validation` share of the hash range is a validation row, the next `test` share are test rows, the rest
train. So the assignment depends only on the row and the seed, not on file order, block layout or cluster
size; identical rows always land together (duplicates cannot leak from train into test); and rows added
to a source later do not move the old ones. The price: split sizes match the shares only approximately
(binomially, like any per-row coin flip), and a tiny source can leave a split empty, which is an error.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import pandas as pd

from rayline.config import SplitConfig
from rayline.data.errors import DataError
from rayline.data.values import missing_cells

TRAIN, VALIDATION, TEST = 0, 1, 2
NO_LABEL, INCOMPLETE = 3, 4


class LeaveOut(NamedTuple):
    """Which rows no split gets."""

    label: str | None = None
    """Rows whose label cell is missing."""
    label_is_numeric: bool = False
    """The label's missing spellings are those of a number column (regression)."""
    columns: dict[str, bool] = {}
    """{column: is numeric} of features whose missing cells leave the row out (rule drop_row)."""


KEEP_ALL = LeaveOut()


def check_sizes(num_rows: int, n_train: int, n_validation: int, n_test: int, split_cfg: SplitConfig) -> None:
    """DataError naming the first split that came out empty, with the source's row count."""
    wanted = [
        ("validation", n_validation, split_cfg.validation),
        ("test", n_test, split_cfg.test),
        ("train", n_train, 1.0 - split_cfg.validation - split_cfg.test),
    ]
    for name, size, share in wanted:
        # Validation is always needed (model selection); test may be switched off with a 0 share.
        if size == 0 and (share > 0 or name == "validation"):
            raise DataError(
                f"the {name} split is empty: the source has {num_rows} row(s) and the {name} share is "
                f"{share:g} (about {num_rows * share:.1f} rows expected); add rows or change data.split"
            )


def split_codes(
    batch: pd.DataFrame, split_cfg: SplitConfig, leave_out: LeaveOut = KEEP_ALL, hashes: np.ndarray | None = None
) -> np.ndarray:
    """Per row: TRAIN, VALIDATION or TEST, or NO_LABEL / INCOMPLETE for a row no split gets (int8). `hashes`: the
    batch's row_hashes for split_cfg.seed, when the caller has them already."""
    splits = assign_splits(batch, split_cfg, hashes)
    reasons = left_out_reasons(batch, leave_out)
    splits[reasons > 0] = reasons[reasons > 0]
    return splits


def left_out_reasons(batch: pd.DataFrame, leave_out: LeaveOut) -> np.ndarray:
    """Per row: 0 for a row the splits keep, else NO_LABEL or INCOMPLETE (int8)."""
    reasons = np.zeros(len(batch), dtype=np.int8)
    for name, numeric in leave_out.columns.items():
        reasons[missing_cells(batch[name], numeric=numeric)] = INCOMPLETE
    if leave_out.label is not None:
        reasons[missing_cells(batch[leave_out.label], numeric=leave_out.label_is_numeric)] = NO_LABEL
    return reasons


def assign_splits(df: pd.DataFrame, split_cfg: SplitConfig, hashes: np.ndarray | None = None) -> np.ndarray:
    """TRAIN, VALIDATION or TEST (int8) per row, from where its hash falls in [0, 1)."""
    if hashes is None:
        hashes = row_hashes(df, split_cfg.seed)
    position = hashes.astype(np.float64) / 2.0**64
    splits = np.full(len(df), TRAIN, dtype=np.int8)
    splits[position < split_cfg.validation + split_cfg.test] = TEST
    splits[position < split_cfg.validation] = VALIDATION
    return splits


def row_hashes(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A uint64 per row from its values and the seed; the same row gives the same hash in any batch."""
    hash_key = hashlib.blake2b(str(seed).encode(), digest_size=8).hexdigest()  # pandas wants 16 chars
    columns = df[sorted(df.columns)]
    try:
        hashes = pd.util.hash_pandas_object(columns, index=False, hash_key=hash_key)
    except TypeError:
        # Lists, dicts and tensors are unhashable; their text is stable enough to hash instead.
        hashes = pd.util.hash_pandas_object(columns.astype(str), index=False, hash_key=hash_key)
    hashes = hashes.to_numpy(dtype=np.uint64)
    if seed == 0:
        return hashes  # the splits seed 0 has always made
    # pandas keys only text with hash_key: mix the seed in so that all-numeric rows move between seeds too.
    salt = np.uint64(int(hash_key, 16))
    return pd.util.hash_array(hashes ^ salt)
