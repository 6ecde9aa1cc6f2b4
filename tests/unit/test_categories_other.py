"""max_categories and the shared "other" category, without Ray: what fitting keeps, and how values map."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from rayline.config import DataConfig
from rayline.data import CategoricalStat, Preprocessor
from rayline.data.fit import embedding_width, fit_feature
from rayline.data.stats import ColumnStats


def config(**feature) -> DataConfig:
    return DataConfig(
        source="x.csv", task="regression", label="y", features=[{"name": "c", "kind": "categorical", **feature}]
    )


def fitted(cfg: DataConfig, counts: dict[str, int], missing: int = 0) -> CategoricalStat:
    stats = ColumnStats(rows=sum(counts.values()) + missing, counts={"c": Counter(counts)})
    return fit_feature(cfg.features[0], cfg, stats, "x.csv")


def test_the_most_frequent_categories_are_kept_ties_broken_by_the_key():
    counts = {"d": 5, "a": 1, "c": 3, "b": 3, "e": 3}
    stat = fitted(config(max_categories=3), counts)
    # d (5), then of the three with 3 rows the smallest keys b and c; a and e become "other".
    assert stat.categories == ["b", "c", "d"] and stat.other
    assert stat.slots == 4


def test_the_data_wide_limit_applies_without_a_feature_setting():
    cfg = DataConfig.model_validate({**config().model_dump(), "max_categories": 2})
    assert fitted(cfg, {"1": 4, "10": 2, "2": 9}).categories == ["1", "2"]  # numeric keys keep numeric order


def test_no_other_slot_when_nothing_was_cut():
    stat = fitted(config(max_categories=3), {"x": 1, "y": 2, "z": 3})
    assert stat.categories == ["x", "y", "z"] and not stat.other


def test_cut_and_unseen_values_share_the_other_slot_missing_keeps_its_own():
    stat = CategoricalStat("c", ["b", "d"], "category", other=True, missing_slot=True)
    pre = Preprocessor("regression", "y", [stat], None, 0.0, 1.0)
    x = pre.transform_features(pd.DataFrame({"c": ["d", "a", "never seen", None, "b"]}))
    np.testing.assert_array_equal(x, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    assert [stat.slot(k) for k in ["b", "d", "a", None]] == [0, 1, 2, 3]


def test_without_a_missing_slot_a_missing_value_goes_to_other():
    stat = CategoricalStat("c", ["b"], "category", other=True, missing_slot=False)
    x = Preprocessor("regression", "y", [stat], None, 0.0, 1.0).transform_features(pd.DataFrame({"c": [None]}))
    np.testing.assert_array_equal(x, [[0, 1]])


@pytest.mark.parametrize(
    ("encoding", "kept", "embedded"),
    [("auto", 16, False), ("auto", 17, True), ("onehot", 40, False), ("embedding", 2, True)],
)
def test_encoding_auto_embeds_above_the_threshold(encoding, kept, embedded):
    stat = fitted(config(encoding=encoding), {f"k{i}": 1 for i in range(kept)})
    assert (stat.embedding_dim is not None) == embedded
    assert stat.width == (1 if embedded else kept)


def test_embedding_width_defaults_and_the_configured_width():
    assert [embedding_width(n) for n in (2, 17, 100, 10_000)] == [2, 8, 16, 16]
    cfg = DataConfig.model_validate({**config(encoding="embedding").model_dump(), "embedding_dim": 5})
    assert fitted(cfg, {"a": 1, "b": 2}).embedding_dim == 5


def test_an_embedded_column_holds_the_slot_plus_one_and_widens_back_to_one_hot():
    stat = CategoricalStat("c", ["b", "d"], "category", other=True, missing_slot=False, embedding_dim=3)
    pre = Preprocessor("regression", "y", [stat], None, 0.0, 1.0)
    x = pre.transform_features(pd.DataFrame({"c": ["d", "zz", "b"]}))
    np.testing.assert_array_equal(x, [[2], [3], [1]])
    np.testing.assert_array_equal(pre.one_hot_inputs(x), [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert pre.model_shape()["embeddings"] == [{"name": "c", "column": 0, "ids": 4, "dim": 3}]
