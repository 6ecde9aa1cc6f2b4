"""read_source on the shared cluster: every format and layout gives the same rows; bad ones fail clearly."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayline.config import DataConfig
from rayline.data import DataError, read_source

FEATURES = [{"name": "x"}, {"name": "n"}, {"name": "flag"}, {"name": "color", "kind": "categorical"}]


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(12),
            "x": [0.5 * i for i in range(12)],
            "n": [i % 5 for i in range(12)],
            "flag": [i % 3 == 0 for i in range(12)],
            "color": ["red", "green", "blue"] * 4,
            "label": ["cat", "dog"] * 6,
        }
    )


def write(df: pd.DataFrame, path, fmt: str) -> None:
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)


EXTENSION = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """For each format: one file, a directory of two parts (plus a _SUCCESS marker), and a glob."""
    root = tmp_path_factory.mktemp("sources")
    df = table()
    found = {}
    for fmt, ext in EXTENSION.items():
        write(df, root / f"table.{ext}", fmt)
        parts = root / f"{fmt}_parts"
        parts.mkdir()
        write(df.iloc[:5], parts / f"part-0.{ext}", fmt)
        write(df.iloc[5:], parts / f"part-1.{ext}", fmt)
        (parts / "_SUCCESS").write_text("")
        found[fmt] = {"file": root / f"table.{ext}", "directory": parts, "glob": parts / f"part-*.{ext}"}
    return root, found


def config(source, features=FEATURES, **extra) -> DataConfig:
    return DataConfig(source=str(source), task="classification", label="label", features=features, **extra)


@pytest.mark.parametrize("layout", ["file", "directory", "glob"])
@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_every_format_and_layout_reads_the_same_rows(ray_cluster, sources, fmt, layout):
    _, found = sources
    rows = read_source(config(found[fmt][layout])).to_pandas()
    rows = rows.sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, table(), check_dtype=False)


def test_explicit_format_overrides_the_extension(ray_cluster, sources):
    root, _ = sources
    (root / "table.txt").write_bytes((root / "table.csv").read_bytes())
    assert read_source(config(root / "table.txt", format="csv")).count() == 12
    (root / "table.ndjson").write_bytes((root / "table.jsonl").read_bytes())
    assert read_source(config(root / "table.ndjson")).count() == 12


def test_header_only_csv_names_the_file(ray_cluster, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("x,n,flag,color,label\n")
    with pytest.raises(DataError, match=f"{path}: no data rows .* in {path}"):
        read_source(config(path))


def test_zero_row_parquet_names_the_file(ray_cluster, tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pandas(table().iloc[:0], preserve_index=False), path)
    with pytest.raises(DataError, match="no data rows"):
        read_source(config(path))


def test_zero_byte_file_names_the_file(ray_cluster, tmp_path):
    path = tmp_path / "zero.csv"
    path.write_text("")
    with pytest.raises(DataError, match=f"file {path} is empty"):
        read_source(config(path))


def test_missing_column_names_the_column_the_source_and_what_it_has(ray_cluster, sources):
    _, found = sources
    source = found["csv"]["file"]
    with pytest.raises(DataError) as err:
        read_source(config(source, features=[*FEATURES, {"name": "weight"}]))
    message = str(err.value)
    assert message.startswith(f"{source}: column(s) ['weight'] not found")
    assert "['id', 'x', 'n', 'flag', 'color', 'label']" in message


def test_wrong_type_names_the_column_and_both_types(ray_cluster, sources):
    _, found = sources
    with pytest.raises(DataError, match=r"numeric feature column 'color' has type string, expected numeric"):
        read_source(config(found["json"]["file"], features=[{"name": "color"}]))


def test_malformed_csv_names_the_file(ray_cluster, tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("x,label\n1,cat\n2,dog,extra\n")
    with pytest.raises(DataError, match=f"{path}: could not read it: Failed to read CSV file: {path}"):
        read_source(config(path, features=[{"name": "x"}]))


def test_empty_cells_do_not_change_a_column_type(ray_cluster, tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("x,n,color,label\n,,,cat\n1.5,2,red,dog\n2.5,,blue,cat\n")
    features = [{"name": "x"}, {"name": "n"}, {"name": "color", "kind": "categorical"}]
    ds = read_source(config(path, features=features))
    assert [str(t) for t in ds.schema().types] == ["double", "int64", "string", "string"]


def test_a_column_without_values_is_named(ray_cluster, tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("x,blank,label\n1,,cat\n2,,dog\n")
    with pytest.raises(DataError, match=r"numeric feature column 'blank' has no values in the rows read first"):
        read_source(config(path, features=[{"name": "x"}, {"name": "blank"}]))


def test_a_semicolon_delimited_csv_is_read_by_its_header(ray_cluster, tmp_path):
    path = tmp_path / "wine.csv"
    table().to_csv(path, sep=";", index=False)
    rows = read_source(config(path)).to_pandas()
    pd.testing.assert_frame_equal(rows, table(), check_dtype=False)
