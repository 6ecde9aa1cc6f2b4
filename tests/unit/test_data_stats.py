"""Statistics merged block by block match the exact ones: moments and counts always, the median on small data,
and within its tracked rank error on large data."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from rayline.data.fit import key_counts
from rayline.data.stats import SUMMARY_SIZE, ColumnStats, Moments, QuantileSummary, column_stats


def merged_summary(blocks: list[np.ndarray]) -> QuantileSummary:
    summary = QuantileSummary()
    for block in blocks:
        summary.merge(QuantileSummary.of(block))
    return summary


def test_moments_merged_from_uneven_blocks_are_exact():
    values = np.random.default_rng(0).normal(50.0, 7.0, 10_001)
    merged = Moments()
    for block in np.split(values, [3, 400, 401, 9000]):
        merged.merge(Moments.of(block))
    assert merged.count == len(values)
    assert merged.mean == pytest.approx(values.mean(), rel=1e-12)
    assert merged.std() == pytest.approx(values.std(), rel=1e-10)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 2 * SUMMARY_SIZE])
def test_the_median_of_small_data_is_numpys(n):
    values = np.random.default_rng(n).integers(0, 50, n).astype(float)  # ties, as real columns have
    summary = merged_summary(np.array_split(values, 5))
    assert summary.median() == np.median(values)
    assert summary.rank_error == 0


def test_the_median_of_large_data_is_within_its_tracked_rank_error():
    rng = np.random.default_rng(1)
    blocks = [rng.lognormal(0.0, 2.0, 20_000) for _ in range(60)]  # 1.2M values, skewed
    summary = merged_summary(blocks)
    values = np.sort(np.concatenate(blocks))
    found = summary.median()
    rank_low, rank_high = np.searchsorted(values, found, "left"), np.searchsorted(values, found, "right")
    middle = len(values) // 2
    assert rank_low - summary.rank_error <= middle <= rank_high + summary.rank_error
    assert 0 < summary.rank_error < 0.01 * len(values), "the bound is tracked, and under 1% of the rows"
    assert len(summary.values) <= 2 * SUMMARY_SIZE, "the summary stays bounded"


def test_no_values_has_no_median():
    assert QuantileSummary().median() is None
    assert merged_summary([np.zeros(0)]).median() is None


def test_category_counts_use_the_stored_keys():
    values = pd.Series([1.0, 2.0, None, 1.0, float("nan"), 3.5])
    assert key_counts(values) == Counter({"1": 2, "2": 1, "3.5": 1})
    assert key_counts(pd.Series(["a", "", "a", None])) == Counter({"a": 2})


def test_column_stats_merge_like_one_block():
    df = pd.DataFrame({"v": np.arange(10.0), "c": list("aabbbccccd")})
    whole = column_stats(10, {"v": df["v"].to_numpy()}, ["v"], {"c": key_counts(df["c"])})
    merged = ColumnStats()
    for part in (df.iloc[:4], df.iloc[4:]):
        merged.merge(column_stats(len(part), {"v": part["v"].to_numpy()}, ["v"], {"c": key_counts(part["c"])}))
    assert merged.rows == whole.rows == 10
    assert merged.counts == whole.counts
    assert merged.moments["v"].mean == whole.moments["v"].mean
    assert merged.summaries["v"].median() == whole.summaries["v"].median() == 4.5
