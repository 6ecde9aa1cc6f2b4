"""Directories as Spark and Hive write them, without Ray: listing, partition columns and their types, the
pyarrow sample that features: auto reads, and the fingerprint. The layouts are written by pyarrow exactly
as Spark lays them out (tests/spark_layout.py); no JVM runs here."""

import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayline.config import DataConfig
from rayline.data import DataError, fingerprint_source
from rayline.data.files import format_of, partition_type, partition_values, resolve_source
from rayline.data.infer import infer_features
from rayline.data.read import read_sample, type_partitions
from spark_layout import SPARK_WRITTEN, missing_as_empty, spark_written_rows, write_spark_table


def table(rows: int = 24) -> pd.DataFrame:
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


@pytest.fixture
def spark_parquet(tmp_path):
    root = tmp_path / "warehouse" / "pets"
    written = write_spark_table(table(), root, partition_by=("year", "region"))
    return root, written


def test_a_spark_directory_lists_only_its_part_files(spark_parquet):
    root, written = spark_parquet
    names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert "_SUCCESS" in names and "._SUCCESS.crc" in names
    assert "year=2020/region=__HIVE_DEFAULT_PARTITION__" in {os.path.dirname(n) for n in names}
    assert "year=2021/region=south%2Feast" in {os.path.dirname(n) for n in names}
    files = resolve_source(str(root))
    assert files.paths == [str(p) for p in written]
    assert all(os.path.basename(p).startswith("part-0000") and p.endswith("-c000.snappy.parquet") for p in files.paths)
    assert files.format == "parquet"
    assert files.partitions == {"year": pa.int64(), "region": pa.string()}


def test_partition_values_are_decoded_and_hive_nulls_are_none():
    base = "/data/t"
    assert partition_values("/data/t/year=2021/region=south%2Feast/part-0.parquet", base) == {
        "year": "2021",
        "region": "south/east",
    }
    assert partition_values("/data/t/year=__HIVE_DEFAULT_PARTITION__/k=/part-0.parquet", base) == {
        "year": None,
        "k": None,
    }
    # Folders without exactly one "=" and folders above the source are not partitions.
    assert partition_values("/env=prod/t/sub/a=b=c/part-0.parquet", "/env=prod/t") == {}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"2020", "-3", "0"}, pa.int64()),
        ({"2020", None}, pa.int64()),
        ({"1.5", "2", "1e3"}, pa.float64()),
        ({"00501", "10001"}, pa.string()),  # leading zeros: a code, not a number
        ({"1", "x"}, pa.string()),
        ({"nan", "1"}, pa.string()),
        ({"99999999999999999999"}, pa.float64()),  # does not fit int64
        ({"2024-01-31"}, pa.string()),
        ({None}, pa.string()),
    ],
)
def test_partition_types_are_inferred_from_every_value(values, expected):
    assert partition_type(values) == expected


def test_files_under_different_partition_keys_are_an_error(tmp_path):
    for folder in ("year=2020", "year=2021/month=1"):
        (tmp_path / folder).mkdir(parents=True)
        pq.write_table(pa.table({"x": [1]}), tmp_path / folder / "part-0.parquet")
    with pytest.raises(DataError) as err:
        resolve_source(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path}: files are partitioned differently: year=2020/part-0.parquet has partition keys ['year'], "
        "year=2021/month=1/part-0.parquet has ['year', 'month'] (from its key=value folders); Spark and Hive put "
        "every file of a table under the same keys"
    )


def test_a_single_file_or_a_partition_folder_as_source_has_no_partition_columns(spark_parquet):
    root, written = spark_parquet
    assert resolve_source(str(written[0])).partitions == {}
    assert resolve_source(str(root / "year=2020")).partitions == {"region": pa.string()}


def test_a_glob_through_partition_folders_keeps_them(spark_parquet):
    root, written = spark_parquet
    files = resolve_source(str(root / "year=202[01]/*/part-*.parquet"))
    assert files.paths == [str(p) for p in written if "year=2020" in str(p) or "year=2021" in str(p)]
    assert files.partitions == {"year": pa.int64(), "region": pa.string()}


def test_compressed_csv_parts_and_extensionless_hive_files(tmp_path):
    assert format_of("part-00000-1-c000.csv.gz") == "csv"
    assert format_of("part-00000-1-c000.json.bz2") == "json"
    assert format_of("x.parquet.gz") is None
    assert format_of("notes.gz") is None
    hive = tmp_path / "hive"
    hive.mkdir()
    pq.write_table(pa.table({"x": [1]}), hive / "000000_0")
    pq.write_table(pa.table({"x": [2]}), hive / "000001_0")
    (hive / "README.md").write_text("not data")
    assert resolve_source(str(hive), "parquet").paths == [str(hive / "000000_0"), str(hive / "000001_0")]
    with pytest.raises(DataError, match="no data files with a known extension"):
        resolve_source(str(hive))


def test_type_partitions_casts_folder_strings_and_keeps_stored_columns():
    batch = pa.table(
        {
            "x": [1.0, 2.0],
            "year": ["2020", "2020"],
            "region": ["__HIVE_DEFAULT_PARTITION__", "__HIVE_DEFAULT_PARTITION__"],
            "k": pa.array([7, 7]),
        }
    )
    typed = type_partitions(batch, {"year": pa.int64(), "region": pa.string(), "k": pa.string()})
    assert typed.schema == pa.schema(
        [("x", pa.float64()), ("year", pa.int64()), ("region", pa.string()), ("k", pa.int64())]
    )
    assert typed.column("region").to_pylist() == [None, None]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_the_sample_is_the_whole_table_with_typed_partition_columns(tmp_path, fmt):
    root = tmp_path / fmt
    write_spark_table(table(), root, fmt=fmt, partition_by=("year", "region"), tasks=3)
    sample = read_sample(resolve_source(str(root)), 1000, str(root))
    assert sample.column_names == ["id", "x", "color", "label", "year", "region"]
    assert sample.schema.field("year").type == pa.int64()
    assert sample.schema.field("region").type == pa.string()
    rows = sample.to_pandas().sort_values("id").reset_index(drop=True)
    expected = table()[rows.columns]
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)


def test_features_auto_takes_partition_columns_as_features(spark_parquet):
    root, _ = spark_parquet
    cfg = DataConfig(source=str(root), task="classification", label="label")
    inference = infer_features(cfg)
    assert {f.name: f.kind for f in inference.features} == {
        "x": "numeric",
        "color": "categorical",
        "year": "numeric",
        "region": "categorical",
    }
    assert [(c.name, c.why) for c in inference.left_out] == [("id", "id")]
    assert inference.partitions == ["year", "region"]


def test_a_partition_column_can_be_the_label(spark_parquet):
    root, _ = spark_parquet
    cfg = DataConfig(source=str(root), task="regression", label="year", exclude=["id"])
    assert [f.name for f in infer_features(cfg).features] == ["x", "color", "label", "region"]


def test_fingerprint_names_partition_folders(spark_parquet, tmp_path):
    root, _ = spark_parquet

    def fingerprint(path):
        return fingerprint_source(DataConfig(source=str(path), task="classification", label="label"))

    first = fingerprint(root)
    shutil.copytree(root, tmp_path / "copy")
    assert fingerprint(tmp_path / "copy") == first
    (tmp_path / "copy" / "_SUCCESS").write_text("a later job")  # not a data file
    assert fingerprint(tmp_path / "copy") == first
    os.rename(tmp_path / "copy" / "year=2023", tmp_path / "copy" / "year=2024")
    assert fingerprint(tmp_path / "copy") != first


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_directory_written_by_pyspark(fmt):
    root = SPARK_WRITTEN / fmt
    parts = sorted(str(Path(d) / f) for d, _, fs in os.walk(root) for f in fs if f.startswith("part-"))
    files = resolve_source(str(root))
    assert files.paths == parts and files.format == fmt
    assert files.partitions == {"year": pa.int64(), "region": pa.string()}
    sample = read_sample(files, 1000, str(root))
    assert sample.column_names == ["id", "x", "color", "member", "label", "year", "region"]
    rows = sample.to_pandas().sort_values("id").reset_index(drop=True)
    expected = spark_written_rows()[rows.columns]
    if fmt == "csv":
        rows, expected = missing_as_empty(rows), missing_as_empty(expected)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)


def test_features_auto_on_a_directory_written_by_pyspark():
    inference = infer_features(DataConfig(source=str(SPARK_WRITTEN / "parquet"), task="classification", label="label"))
    assert {f.name: f.kind for f in inference.features} == {
        "x": "numeric",
        "color": "categorical",
        "member": "categorical",
        "year": "numeric",
        "region": "categorical",
    }
    assert [(c.name, c.why) for c in inference.left_out] == [("id", "id")]
