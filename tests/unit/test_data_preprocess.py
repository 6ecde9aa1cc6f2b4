"""The fitted preprocessor, without Ray: transforms, label maps, decoding and its JSON form."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from rayline.data import CategoricalStat, DataError, NumericStat, Preprocessor
from rayline.data.preprocess import sorted_keys, value_key


def classifier() -> Preprocessor:
    features = [
        NumericStat("age", 40.0, 10.0),
        CategoricalStat("color", ["blue", "red"]),
        NumericStat("k", 5.0, 0.0),
    ]
    return Preprocessor("classification", "animal", features, ["cat", "dog", "fox"], None, None)


def regressor() -> Preprocessor:
    return Preprocessor("regression", "price", [NumericStat("size", 2.0, 4.0)], None, 100.0, 20.0)


def test_widths_and_feature_schema():
    pre = classifier()
    assert pre.num_inputs == 1 + 2 + 1
    assert pre.num_outputs == 3
    assert regressor().num_outputs == 1
    assert pre.feature_schema() == [
        {"name": "age", "kind": "numeric", "missing": "error", "nullable": False},
        {
            "name": "color",
            "kind": "categorical",
            "categories": ["blue", "red"],
            "other": False,
            "encoding": "onehot",
            "missing": "category",
            "nullable": True,
        },
        {"name": "k", "kind": "numeric", "missing": "error", "nullable": False},
    ]


def test_standardises_with_the_fitted_statistics_and_one_hots_in_config_order():
    df = pd.DataFrame({"color": ["red", "blue"], "age": [50, 20], "k": [5.0, 7.0], "extra": [1, 2]})
    x = classifier().transform_features(df)
    assert x.dtype == np.float32
    # age: (v - 40) / 10; color one-hot [blue, red]; k has std 0, so it is scaled by 1.
    np.testing.assert_allclose(x, [[1.0, 0.0, 1.0, 0.0], [-2.0, 1.0, 0.0, 2.0]])


def test_unseen_and_missing_categories_give_an_all_zero_block_without_other_or_missing_slots():
    df = pd.DataFrame({"age": [40.0, 40.0, 40.0], "color": ["green", None, "blue"], "k": [5, 5, 5]})
    x = classifier().transform_features(df)
    np.testing.assert_array_equal(x[:, 1:3], [[0, 0], [0, 0], [1, 0]])


def test_integer_categories_match_their_float_spelling():
    pre = Preprocessor("regression", "y", [CategoricalStat("zone", ["1", "2", "10"])], None, 0.0, 1.0)
    x = pre.transform_features(pd.DataFrame({"zone": [10.0, 2, np.nan]}))
    np.testing.assert_array_equal(x, [[0, 0, 1], [0, 1, 0], [0, 0, 0]])


def test_missing_feature_column_is_named():
    with pytest.raises(DataError, match=r"missing feature column\(s\) \['color'\]"):
        classifier().transform_features(pd.DataFrame({"age": [1.0], "k": [1.0]}))


@pytest.mark.parametrize("bad", ["old", float("inf"), "-inf", "1e999"])
def test_non_numeric_or_infinite_value_is_named_with_its_row(bad):
    df = pd.DataFrame({"age": [30, bad], "color": ["red", "red"], "k": [1, 1]})
    with pytest.raises(DataError, match=r"feature column 'age': row 1 holds .*expected a finite number"):
        classifier().transform_features(df)


@pytest.mark.parametrize("gap", [None, float("nan"), "", "NA"])
def test_a_missing_value_under_rule_error_is_named_with_its_row(gap):
    df = pd.DataFrame({"age": [30, gap], "color": ["red", "red"], "k": [1, 1]})
    with pytest.raises(
        DataError, match=r"feature column 'age': row 1 is missing and the feature's missing rule is error"
    ):
        classifier().transform_features(df)


def test_numeric_strings_and_bools_are_numbers():
    pre = Preprocessor("regression", "y", [NumericStat("a", 0.0, 1.0), NumericStat("b", 0.0, 1.0)], None, 0, 1)
    x = pre.transform_features(pd.DataFrame({"a": ["1.5", "2"], "b": [True, False]}))
    np.testing.assert_allclose(x, [[1.5, 1.0], [2.0, 0.0]])


def test_class_labels_map_to_ids_and_unseen_labels_are_named():
    pre = classifier()
    ids = pre.encode_labels(pd.Series(["fox", "cat", "dog"]))
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 0, 1]
    with pytest.raises(DataError, match=r"label column 'animal': row 1 holds 'cow', a class not seen"):
        pre.encode_labels(pd.Series(["cat", "cow"]))
    with pytest.raises(DataError, match="label column .animal.: row 0 is missing"):
        pre.encode_labels(pd.Series([None, "cat"]))


def test_numeric_class_labels_are_normalised_and_ordered_numerically():
    assert value_key(3.0) == "3"
    assert value_key(np.int64(3)) == "3"
    assert value_key(2.5) == "2.5"
    assert value_key(True) == "True"
    assert value_key(float("nan")) is None
    assert sorted_keys([10, 9.0, 2, None, 2]) == ["2", "9", "10"]
    assert sorted_keys(["b", "a", "B"]) == ["B", "a", "b"]
    pre = Preprocessor("classification", "y", [NumericStat("a", 0, 1)], ["2", "9", "10"], None, None)
    assert pre.encode_labels(pd.Series([10.0, 2.0, 9.0])).tolist() == [2, 0, 1]
    assert pre.encode_labels(pd.Series([10, 2, 9])).tolist() == [2, 0, 1]


def test_transform_batch_gives_x_and_y():
    df = pd.DataFrame({"age": [40.0], "color": ["red"], "k": [5], "animal": ["dog"]})
    batch = classifier().transform_batch(df)
    assert set(batch) == {"x", "y"}
    assert batch["x"].shape == (1, 4)
    assert batch["y"].tolist() == [1]


def test_decode_gives_probabilities_that_sum_to_one():
    decoded = classifier().decode(np.array([[0.0, 3.0, 1.0], [1000.0, 0.0, 0.0]]))
    assert [d["label"] for d in decoded] == ["dog", "cat"]
    for d in decoded:
        assert list(d["probabilities"]) == ["cat", "dog", "fox"]
        assert sum(d["probabilities"].values()) == pytest.approx(1.0)
    assert decoded[1]["probabilities"]["cat"] == pytest.approx(1.0)  # no overflow with large logits


def test_regression_labels_are_standardised_and_decoded_back():
    pre = regressor()
    y = pre.encode_labels(pd.Series([100.0, 140.0, 80]))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0.0, 2.0, -1.0])
    assert pre.decode(y[:, None]) == [{"value": 100.0}, {"value": 140.0}, {"value": 80.0}]
    assert pre.decode(y) == pre.decode(y[:, None])
    with pytest.raises(DataError, match="label column .price.: row 1 is missing"):
        pre.encode_labels(pd.Series([1.0, None]))
    with pytest.raises(DataError, match="row 0 holds 'x', expected a finite number"):
        pre.encode_labels(pd.Series(["x", 1.0]))


def test_decode_rejects_outputs_of_the_wrong_width():
    with pytest.raises(DataError, match=r"shape \(1, 2\); expected \[n, 3\]"):
        classifier().decode(np.zeros((1, 2)))


@pytest.mark.parametrize("pre", [classifier(), regressor()])
def test_dict_round_trip_through_json(pre):
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre
    df = pd.DataFrame({"age": [33.0], "color": ["red"], "k": [1], "size": [3.0]})
    np.testing.assert_array_equal(again.transform_features(df), pre.transform_features(df))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("label"), r"preprocessor\.label: required key is missing"),
        (lambda d: d.update(task="ranking"), r"preprocessor\.task: expected one of"),
        (lambda d: d.update(version=99), r"preprocessor\.version: expected 1 or 2, got 99"),
        (lambda d: d.update(colour=1), r"unknown|only the keys"),
        (
            lambda d: d["features"][0].update(std=-1.0),
            r"preprocessor\.features\[0\]\.std: expected a number >= 0",
        ),
        (
            lambda d: d["features"][0].update(mean="x"),
            r"preprocessor\.features\[0\]\.mean: expected a finite",
        ),
        (lambda d: d["features"][1].update(kind="text"), r"features\[1\]\.kind: expected 'numeric' or"),
        (lambda d: d["features"][1].update(categories=[1, 2]), r"features\[1\]\.categories: expected a list"),
        (lambda d: d.update(features=[]), r"preprocessor\.features: expected a non-empty list"),
        (lambda d: d.update(classes=["a", "a"]), r"preprocessor\.classes: expected distinct strings"),
        (lambda d: d.update(classes=None), r"preprocessor\.classes: expected a list of strings"),
    ],
)
def test_from_dict_names_what_is_malformed(change, message):
    d = classifier().to_dict()
    change(d)
    with pytest.raises(DataError, match=message):
        Preprocessor.from_dict(d)


def test_from_dict_rejects_a_regressor_without_target_statistics():
    d = regressor().to_dict()
    d["target_std"] = None
    with pytest.raises(DataError, match=r"preprocessor\.target_std: expected a finite number"):
        Preprocessor.from_dict(d)
    with pytest.raises(DataError, match=r"preprocessor: expected a mapping"):
        Preprocessor.from_dict([1, 2])


def test_importing_the_data_package_does_not_import_ray():
    code = "import sys, rayline.data; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
