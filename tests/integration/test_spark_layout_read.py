"""read_source over directories laid out as Spark writes them (made by pyarrow, tests/spark_layout.py): one
table, every row once, partition folders as typed columns that can be features or the label."""

import shutil

import pandas as pd
import pytest

from rayline.config import DataConfig
from rayline.data import read_source
from spark_layout import SPARK_WRITTEN, missing_as_empty, spark_written_rows, write_spark_table


def table(rows: int = 36) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(rows),
            "x": [0.25 * i for i in range(rows)],
            "color": ["red", "green", "blue"] * (rows // 3),
            "year": [2020, 2021, 2022, 2023] * (rows // 4),
            "region": ["north", "south/east", None] * (rows // 3),
            "label": ["cat", "dog"] * (rows // 2),
        }
    )


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark")
    found = {}
    for fmt in ("parquet", "csv"):
        found[fmt] = root / "env=prod" / f"pets_{fmt}"  # a key=value folder above the table is not a column
        write_spark_table(table(), found[fmt], fmt=fmt, partition_by=("year", "region"), tasks=3)
    return found


def config(source, **extra) -> DataConfig:
    fields = {"task": "classification", "label": "label", "features": ["x", {"name": "region", "kind": "categorical"}]}
    return DataConfig(source=str(source), **(fields | extra))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_spark_directory_reads_as_one_table_with_typed_partition_columns(ray_cluster, layouts, fmt):
    ds = read_source(config(layouts[fmt]))
    schema = dict(zip(ds.schema().names, ds.schema().types, strict=True))
    assert [name for name in schema] == ["id", "x", "color", "label", "year", "region"]
    assert (str(schema["year"]), str(schema["region"])) == ("int64", "string")
    rows = ds.to_pandas().sort_values("id").reset_index(drop=True)
    assert len(rows) == len(table())  # every row once
    expected = table()[rows.columns]
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
    assert rows["region"].isna().sum() == len(table()) // 3  # __HIVE_DEFAULT_PARTITION__ is null


def test_a_partition_column_can_be_the_label_and_a_feature(ray_cluster, layouts):
    cfg = config(layouts["parquet"], task="regression", label="year")
    assert read_source(cfg).count() == len(table())


def test_features_auto_reads_before_features_are_resolved(ray_cluster, layouts, tmp_path):
    assert read_source(DataConfig(source=str(layouts["csv"]), task="classification", label="region")).count() == 36
    shutil.copytree(layouts["parquet"], tmp_path / "copy")
    assert read_source(config(tmp_path / "copy")).count() == 36


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_directory_written_by_pyspark_reads_every_row_once(ray_cluster, fmt):
    cfg = config(SPARK_WRITTEN / fmt, features=["x", "year", {"name": "region", "kind": "categorical"}])
    rows = read_source(cfg).to_pandas().sort_values("id").reset_index(drop=True)
    expected = spark_written_rows()[rows.columns]
    if fmt == "csv":
        rows, expected = missing_as_empty(rows), missing_as_empty(expected)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
