"""The pure parts of the split: row counts per split and the seeded row hash, without Ray."""

import numpy as np
import pandas as pd
import pytest

from rayline.config import SplitConfig
from rayline.data import DataError
from rayline.data.split import row_hashes, split_sizes


def test_sizes_are_exact_shares():
    assert split_sizes(1797, SplitConfig(validation=0.15, test=0.15)) == (1257, 270, 270)
    assert split_sizes(10, SplitConfig(validation=0.2, test=0.0)) == (8, 2, 0)


@pytest.mark.parametrize(
    ("rows", "split", "message"),
    [
        (
            3,
            SplitConfig(validation=0.1, test=0.1),
            r"the validation split would be empty: the source has 3 row",
        ),
        (10, SplitConfig(validation=0.5, test=0.01), r"the test split would be empty: .* share is 0\.01"),
        (10, SplitConfig(validation=0.0, test=0.2), r"the validation split would be empty"),
        (2, SplitConfig(validation=0.45, test=0.45), r"the train split would be empty: the source has 2 row"),
        (0, SplitConfig(), r"has 0 row"),
    ],
)
def test_an_empty_split_is_an_error_that_says_which_and_how_many_rows(rows, split, message):
    with pytest.raises(DataError, match=message):
        split_sizes(rows, split)


def test_row_hash_depends_on_the_row_and_the_seed_only():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0, 1.0], "b": ["x", "y", "z", "x"]})
    hashes = row_hashes(df, seed=0)
    assert hashes.dtype == np.uint64
    assert hashes[0] == hashes[3], "identical rows hash alike, so they land in the same split"
    assert len(set(hashes[:3])) == 3
    shuffled = df.iloc[[2, 0, 3, 1]].reset_index(drop=True)[["b", "a"]]
    assert row_hashes(shuffled, seed=0).tolist() == hashes[[2, 0, 3, 1]].tolist()
    assert row_hashes(df, seed=1).tolist() != hashes.tolist()


def test_row_hash_handles_unhashable_values():
    df = pd.DataFrame({"v": [[1, 2], [1, 2], [3]]})
    hashes = row_hashes(df, seed=0)
    assert hashes[0] == hashes[1] != hashes[2]
