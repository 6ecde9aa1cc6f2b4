"""The pure parts of the split: the seeded row hash, the share-based assignment, the empty-split check."""

import numpy as np
import pandas as pd
import pytest

from rayline.config import SplitConfig
from rayline.data import DataError
from rayline.data.split import TEST, TRAIN, VALIDATION, assign_splits, check_sizes, row_hashes


def test_row_hash_depends_on_the_row_and_the_seed_only():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0, 1.0], "b": ["x", "y", "z", "x"]})
    hashes = row_hashes(df, seed=0)
    assert hashes.dtype == np.uint64
    assert hashes[0] == hashes[3], "identical rows hash alike, so they land in the same split"
    assert len(set(hashes[:3])) == 3
    shuffled = df.iloc[[2, 0, 3, 1]].reset_index(drop=True)[["b", "a"]]
    assert row_hashes(shuffled, seed=0).tolist() == hashes[[2, 0, 3, 1]].tolist()
    assert row_hashes(df, seed=1).tolist() != hashes.tolist()


def test_row_hash_ignores_how_strings_are_stored():
    values = ["x", "y", None]
    hashes = {
        tuple(row_hashes(pd.DataFrame({"c": pd.Series(values, dtype=dtype)}), 0))
        for dtype in [object, "str", "category"]
    }
    assert len(hashes) == 1


def test_row_hash_handles_unhashable_values():
    hashes = row_hashes(pd.DataFrame({"v": [[1, 2], [1, 2], [3]]}), seed=0)
    assert hashes[0] == hashes[1] != hashes[2]


def test_assignment_follows_the_shares_and_is_stable_per_row():
    df = pd.DataFrame({"id": np.arange(20_000)})
    split = SplitConfig(validation=0.2, test=0.1, seed=3)
    assigned = assign_splits(df, split)
    shares = np.bincount(assigned, minlength=3) / len(df)
    np.testing.assert_allclose(shares[[TRAIN, VALIDATION, TEST]], [0.7, 0.2, 0.1], atol=0.01)
    # A row's split does not depend on which other rows share its batch.
    part = df.iloc[5000:5100].reset_index(drop=True)
    assert assign_splits(part, split).tolist() == assigned[5000:5100].tolist()
    no_test = assign_splits(df, SplitConfig(validation=0.2, test=0.0, seed=3))
    assert TEST not in no_test
    assert ((no_test == VALIDATION) == (assigned == VALIDATION)).all()


@pytest.mark.parametrize(
    ("sizes", "split", "message"),
    [
        ((3, 3, 0, 0), SplitConfig(validation=0.1, test=0.0), r"the validation split is empty: .* 3 row\(s\)"),
        ((10, 8, 2, 0), SplitConfig(validation=0.2, test=0.01), r"the test split is empty: .* share is 0\.01"),
        (
            (10, 8, 0, 2),
            SplitConfig.model_construct(validation=0.0, test=0.2, seed=0),
            r"the validation split is empty",
        ),
        ((2, 0, 1, 1), SplitConfig(validation=0.45, test=0.45), r"the train split is empty: the source has 2"),
    ],
)
def test_an_empty_split_is_an_error_that_says_which_and_how_many_rows(sizes, split, message):
    with pytest.raises(DataError, match=message):
        check_sizes(*sizes, split)


def test_no_test_rows_are_fine_when_the_test_share_is_zero():
    check_sizes(10, 8, 2, 0, SplitConfig(validation=0.2, test=0.0))


def test_rows_without_a_label_or_a_drop_row_feature_are_left_out_of_every_split():
    from rayline.data.split import INCOMPLETE, NO_LABEL, LeaveOut, split_codes

    df = pd.DataFrame({"a": [1.0, None, 2.0, None, 3.0], "c": ["x", "y", "", "z", "w"], "y": ["p", "q", "q", None, ""]})
    leave_out = LeaveOut(label="y", label_is_numeric=False, columns={"a": True, "c": False})
    codes = split_codes(df, SplitConfig(), leave_out)
    assert codes.tolist()[1:] == [INCOMPLETE, INCOMPLETE, NO_LABEL, NO_LABEL]
    assert codes[0] in (TRAIN, VALIDATION, TEST)
    # A kept row's split is the one it gets without any leave-out rule: leaving rows out moves no other row.
    assert codes[0] == split_codes(df, SplitConfig())[0]


def test_the_split_seed_moves_all_numeric_rows_too():
    # pandas keys only text columns with its hash key: a seed must still reshuffle numbers-only tables.
    df = pd.DataFrame({"x": np.arange(2000, dtype=np.float64), "y": np.arange(2000) % 3})
    by_seed = [assign_splits(df, SplitConfig(validation=0.2, test=0.2, seed=seed)) for seed in (0, 1, 2)]
    assert (by_seed[1] != by_seed[2]).mean() > 0.3
    assert (by_seed[0] != by_seed[1]).mean() > 0.3
    assert (assign_splits(df, SplitConfig(validation=0.2, test=0.2, seed=1)) == by_seed[1]).all()
