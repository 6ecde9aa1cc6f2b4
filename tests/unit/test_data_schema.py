"""check_schema: every user mistake in a source's columns is named with the source and the column."""

import pyarrow as pa
import pytest

from rayline.config import DataConfig
from rayline.data import DataError, check_schema

SOURCE = "s3://bucket/houses.parquet"


def config(task="classification", label="label", **extra) -> DataConfig:
    features = [{"name": "size"}, {"name": "zone", "kind": "categorical"}]
    return DataConfig(source=SOURCE, task=task, label=label, features=features, **extra)


def schema(**types) -> pa.Schema:
    fields = {"size": pa.float64(), "zone": pa.string(), "label": pa.int64(), "id": pa.int64()}
    fields.update(types)
    return pa.schema([(name, t) for name, t in fields.items() if t is not None])


@pytest.mark.parametrize(
    "types",
    [
        {},
        {"size": pa.int32(), "zone": pa.int64(), "label": pa.string()},
        {"size": pa.bool_(), "zone": pa.bool_(), "label": pa.bool_()},
        {"size": pa.decimal128(10, 2), "zone": pa.dictionary(pa.int32(), pa.string())},
        {"zone": pa.large_string(), "label": pa.float64()},
    ],
)
def test_accepts_supported_types(types):
    check_schema(schema(**types), config(), SOURCE)


def test_missing_columns_are_named_with_the_source_and_the_columns_it_has():
    with pytest.raises(DataError) as err:
        check_schema(schema(zone=None, label=None), config(), SOURCE)
    message = str(err.value)
    assert message.startswith(f"{SOURCE}: column(s) ['zone', 'label'] not found")
    assert "the source has columns ['size', 'id']" in message


def test_numeric_feature_of_the_wrong_type_names_actual_and_expected_types():
    with pytest.raises(DataError) as err:
        check_schema(schema(size=pa.string()), config(), SOURCE)
    assert str(err.value) == (
        f"{SOURCE}: numeric feature column 'size' has type string, expected numeric (int, float, bool or decimal)"
    )


def test_categorical_feature_of_the_wrong_type():
    with pytest.raises(DataError, match=r"categorical feature column 'zone' has type double, expected categorical"):
        check_schema(schema(zone=pa.float64()), config(), SOURCE)


def test_regression_label_must_be_a_number():
    with pytest.raises(DataError, match=r"label column 'label' has type string, expected a number .* for regression"):
        check_schema(schema(label=pa.string()), config(task="regression"), SOURCE)


def test_classification_label_must_be_a_scalar():
    with pytest.raises(DataError, match=r"label column 'label' has type list<item: int64>, expected a class label"):
        check_schema(schema(label=pa.list_(pa.int64())), config(), SOURCE)


def test_every_type_problem_is_reported_at_once():
    with pytest.raises(DataError) as err:
        check_schema(schema(size=pa.timestamp("s"), label=pa.binary()), config(), SOURCE)
    message = str(err.value)
    assert "'size' has type timestamp[s]" in message
    assert "'label' has type binary" in message


def test_a_column_without_values_is_named_as_empty_not_as_a_wrong_type():
    with pytest.raises(DataError) as err:
        check_schema(schema(size=pa.null(), label=pa.null()), config(), SOURCE)
    assert str(err.value) == (
        f"{SOURCE}: numeric feature column 'size' has no values in the rows read first (every cell is empty, "
        "so its Arrow type is null); fill it or leave it out of data.features; label column 'label' has no "
        "values in the rows read first (every cell is empty, so its Arrow type is null)"
    )


def test_features_auto_checks_only_the_label_before_features_are_resolved():
    auto = DataConfig(source=SOURCE, task="regression", label="label")
    check_schema(schema(size=pa.timestamp("s"), zone=pa.list_(pa.int8())), auto, SOURCE)
    with pytest.raises(DataError, match=r"column\(s\) \['price'\] not found"):
        check_schema(schema(), DataConfig(source=SOURCE, task="regression", label="price"), SOURCE)
