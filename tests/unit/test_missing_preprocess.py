"""Missing values in the preprocessor, without Ray: each rule, the indicator, the missing category, and the
format-2 dict (format 1 still read)."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from rayline.config import DataConfig
from rayline.data import CategoricalStat, DataError, NumericStat, Preprocessor
from rayline.data.fit import fit_feature, missing_rule
from rayline.data.stats import ColumnStats, Moments
from rayline.data.values import missing_cells, numeric_column

GAPS = [1.0, None, float("nan"), "", "NA", " null "]


def regression(*features) -> Preprocessor:
    return Preprocessor("regression", "y", list(features), None, 0.0, 1.0)


@pytest.mark.parametrize(("rule", "fill"), [("median", 3.0), ("mean", 2.5), ("constant", -1.0)])
def test_filled_rules_replace_every_spelling_of_missing_by_the_fitted_value(rule, fill):
    pre = regression(NumericStat("a", 2.0, 4.0, rule, fill))
    x = pre.transform_features(pd.DataFrame({"a": pd.Series(GAPS, dtype=object)}))
    np.testing.assert_allclose(x[:, 0], [(1.0 - 2.0) / 4.0] + [(fill - 2.0) / 4.0] * 5)


def test_the_indicator_is_an_extra_input_after_the_value():
    pre = regression(NumericStat("a", 0.0, 1.0, "median", 7.0, indicator=True), NumericStat("b", 0.0, 1.0))
    x = pre.transform_features(pd.DataFrame({"a": [1.0, None, 3.0], "b": [1, 2, 3]}))
    assert pre.num_inputs == 3 and pre.input_columns() == ["a", "a (missing)", "b"]
    np.testing.assert_array_equal(x, [[1, 0, 1], [7, 1, 2], [3, 0, 3]])


@pytest.mark.parametrize("rule", ["drop_row", "error"])
def test_unfilled_rules_refuse_a_missing_cell_with_its_row(rule):
    pre = regression(NumericStat("a", 0.0, 1.0, rule))
    with pytest.raises(
        DataError, match=rf"feature column 'a': row 2 is missing and the feature's missing rule is {rule}"
    ):
        pre.transform_features(pd.DataFrame({"a": [1.0, 2.0, None]}))


@pytest.mark.parametrize("bad", ["abc", "inf", float("-inf"), "1,5"])
def test_text_and_infinity_are_refused_whatever_the_rule(bad):
    pre = regression(NumericStat("a", 0.0, 1.0, "median", 0.0))
    with pytest.raises(DataError, match=r"feature column 'a': row 1 holds .*, expected a finite number"):
        pre.transform_features(pd.DataFrame({"a": pd.Series([1.0, bad, None], dtype=object)}))


def test_what_counts_as_missing():
    values = pd.Series([None, float("nan"), "", "NA", "x", 0], dtype=object)
    assert missing_cells(values, numeric=True).tolist() == [True, True, True, True, False, False]
    # In a categorical column only null, NaN and the empty string are missing: "NA" may be a category.
    assert missing_cells(values, numeric=False).tolist() == [True, True, True, False, False, False]
    np.testing.assert_array_equal(numeric_column(pd.Series(["1.5", "NA", True]), "feature"), [1.5, np.nan, 1.0])


def test_a_categorical_missing_value_is_a_category_of_its_own():
    color = CategoricalStat("color", ["blue", "red"], "category", other=False, missing_slot=True)
    x = Preprocessor("regression", "y", [color], None, 0.0, 1.0).transform_features(
        pd.DataFrame({"color": ["red", None, "", float("nan"), "green"]})
    )
    np.testing.assert_array_equal(x, [[0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]])


@pytest.mark.parametrize("rule", ["drop_row", "error"])
def test_a_categorical_missing_value_under_drop_row_or_error_is_refused(rule):
    pre = regression(CategoricalStat("color", ["blue", "red"], rule))
    with pytest.raises(DataError, match=rf"'color': row 1 is missing and the feature's missing rule is {rule}"):
        pre.transform_features(pd.DataFrame({"color": ["red", None]}))


def test_rows_to_drop_are_those_missing_a_drop_row_feature():
    pre = regression(
        NumericStat("a", 0.0, 1.0, "drop_row"),
        NumericStat("b", 0.0, 1.0, "median", 0.0),
        CategoricalStat("c", ["x"], "drop_row"),
    )
    df = pd.DataFrame({"a": [1.0, None, 1.0, 1.0], "b": [None, 1.0, 1.0, 1.0], "c": ["x", "x", "", "x"]})
    assert pre.rows_to_drop(df).tolist() == [False, True, True, False]


def test_feature_settings_override_the_data_wide_rules():
    cfg = DataConfig(
        source="x.csv",
        task="regression",
        label="y",
        features=[
            {"name": "a"},
            {"name": "b", "missing": {"constant": 2.5}, "indicator": False},
            {"name": "c", "kind": "categorical"},
            {"name": "d", "kind": "categorical", "missing": "error"},
        ],
        missing={"numeric": "mean", "categorical": "drop_row", "indicator": True},
    )
    a, b, c, d = cfg.features
    assert [missing_rule(f, cfg) for f in cfg.features] == [
        ("mean", None),
        ("constant", 2.5),
        ("drop_row", None),
        ("error", None),
    ]
    stats = ColumnStats(rows=10, moments={"a": Moments(10, 1.0, 40.0), "b": Moments(10, 0.0, 10.0)})
    assert fit_feature(a, cfg, stats, "x.csv") == NumericStat("a", 1.0, 2.0, "mean", 1.0, True)
    assert fit_feature(b, cfg, stats, "x.csv") == NumericStat("b", 0.0, 1.0, "constant", 2.5, False)
    stats.counts["c"] = Counter({"u": 9})  # and one missing cell
    assert fit_feature(c, cfg, stats, "x.csv") == CategoricalStat("c", ["u"], "drop_row")


def test_the_missing_slot_exists_only_when_training_had_missing_cells():
    cfg = DataConfig(source="x.csv", task="regression", label="y", features=[{"name": "c", "kind": "categorical"}])
    [c] = cfg.features
    some = fit_feature(c, cfg, ColumnStats(rows=5, counts={"c": Counter({"u": 3, "v": 1})}), "x")
    assert some.missing_slot and some.slots == 3
    none = fit_feature(c, cfg, ColumnStats(rows=4, counts={"c": Counter({"u": 3, "v": 1})}), "x")
    assert not none.missing_slot and none.slots == 2
    # Without a slot of its own a missing value is treated as unseen: here, an all-zero block.
    x = regression(none).transform_features(pd.DataFrame({"c": [None, "u"]}))
    np.testing.assert_array_equal(x, [[0, 0], [1, 0]])


FORMAT_2 = Preprocessor(
    "classification",
    "y",
    [
        NumericStat("a", 1.0, 2.0, "median", 1.5, True),
        NumericStat("b", 0.0, 1.0, "drop_row"),
        CategoricalStat("c", ["p", "q"], "category", other=True, missing_slot=True),
        CategoricalStat("d", [str(i) for i in range(20)], "error", other=False, embedding_dim=6),
    ],
    ["no", "yes"],
    None,
    None,
)


def test_format_2_round_trips_through_json():
    d = json.loads(json.dumps(FORMAT_2.to_dict()))
    assert d["version"] == 2
    again = Preprocessor.from_dict(d)
    assert again == FORMAT_2
    df = pd.DataFrame({"a": [None, 3.0], "b": [1.0, 2.0], "c": [None, "zz"], "d": ["3", 19], "y": ["no", "yes"]})
    np.testing.assert_array_equal(again.transform_features(df), FORMAT_2.transform_features(df))


def test_a_format_1_dict_still_loads_with_its_old_behaviour():
    v1 = {
        "version": 1,
        "task": "regression",
        "label": "y",
        "features": [
            {"name": "a", "kind": "numeric", "mean": 1.0, "std": 2.0},
            {"name": "c", "kind": "categorical", "categories": ["p", "q"]},
        ],
        "classes": None,
        "target_mean": 3.0,
        "target_std": 4.0,
    }
    pre = Preprocessor.from_dict(v1)
    assert pre.features == [NumericStat("a", 1.0, 2.0, "error"), CategoricalStat("c", ["p", "q"], "category")]
    assert pre.model_shape() == {"num_inputs": 3, "num_outputs": 1, "embeddings": []}
    # Unseen and missing categories leave the block all zero, as before; a missing number is an error.
    x = pre.transform_features(pd.DataFrame({"a": [1.0, 3.0], "c": ["zz", None]}))
    np.testing.assert_array_equal(x, [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(DataError, match="rule is error"):
        pre.transform_features(pd.DataFrame({"a": [None], "c": ["p"]}))
    assert pre.to_dict()["version"] == 2


def _v2() -> dict:
    return FORMAT_2.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["features"][0].update(missing="mode"), r"features\[0\]\.missing: expected one of \['median'"),
        (lambda d: d["features"][0].update(fill=None), r"features\[0\]\.fill: expected a finite number"),
        (lambda d: d["features"][1].update(fill=2.0), r"features\[1\]\.fill: expected null"),
        (lambda d: d["features"][0].update(indicator="yes"), r"features\[0\]\.indicator: expected true or false"),
        (lambda d: d["features"][0].pop("indicator"), r"features\[0\]\.indicator: required key is missing"),
        (lambda d: d["features"][2].update(missing="median"), r"features\[2\]\.missing: expected one of"),
        (lambda d: d["features"][2].update(other=1), r"features\[2\]\.other: expected true or false"),
        (lambda d: d["features"][3].update(missing_slot=True), r"features\[3\]\.missing_slot: expected false"),
        (lambda d: d["features"][3].update(embedding_dim=0), r"features\[3\]\.embedding_dim: expected null or a"),
        (lambda d: d["features"][3].update(embedding_dim=2.5), r"features\[3\]\.embedding_dim: expected null or a"),
        (lambda d: d["features"][3].update(shape=1), r"features\[3\]: expected only the keys"),
        (lambda d: d["features"][1].update(name="a"), r"preprocessor\.features: expected distinct feature names"),
        (lambda d: d["features"][0].pop("missing"), r"features\[0\]\.missing: required key is missing"),
    ],
)
def test_a_malformed_format_2_dict_is_rejected_with_its_key_path(change, message):
    d = _v2()
    change(d)
    with pytest.raises(DataError, match=message):
        Preprocessor.from_dict(d)


def test_format_2_keys_in_a_format_1_dict_are_rejected():
    d = _v2()
    d["version"] = 1
    with pytest.raises(DataError, match=r"features\[0\]: expected only the keys .* \(format 1\)"):
        Preprocessor.from_dict(d)
