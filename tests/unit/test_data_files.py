"""Source listing (file, directory, glob, URI), the content fingerprint and the digits writer, without Ray."""

import os
import shutil

import pyarrow.parquet as pq
import pytest

from rayline.config import DataConfig
from rayline.data import DataError, fingerprint_source, list_source_files, write_digits
from rayline.data.files import glob_regex


def touch(path, text="a,b\n1,2\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """data/ with csv parts (one nested), files to ignore, and a sibling folder of other formats."""
    for name in [
        "data/b.csv",
        "data/a.csv",
        "data/sub/c.csv",
        "data/_SUCCESS",
        "data/.a.csv.crc",
        "data/_tmp/d.csv",
        "data/README.md",
        "other/x.parquet",
        "other/y.jsonl",
        "other/z.txt",
    ]:
        touch(tmp_path / name)
    return tmp_path


def test_a_single_file(tree):
    fs, paths, fmt = list_source_files(str(tree / "data/a.csv"), None)
    assert (paths, fmt) == ([str(tree / "data/a.csv")], "csv")
    assert fs.type_name == "local"


def test_a_directory_lists_its_data_files_recursively_and_skips_hidden_ones(tree):
    _, paths, fmt = list_source_files(str(tree / "data"), None)
    assert fmt == "csv"
    assert paths == [str(tree / p) for p in ["data/a.csv", "data/b.csv", "data/sub/c.csv"]]


def test_globs(tree):
    _, paths, _ = list_source_files(str(tree / "data/*.csv"), None)
    assert paths == [str(tree / "data/a.csv"), str(tree / "data/b.csv")]
    _, paths, _ = list_source_files(str(tree / "data/[b-z].csv"), None)
    assert paths == [str(tree / "data/b.csv")]
    _, paths, _ = list_source_files(str(tree / "data/**/?.csv"), None)
    assert paths == [str(tree / p) for p in ["data/a.csv", "data/b.csv", "data/sub/c.csv"]]


def test_relative_paths_and_file_uris(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert list_source_files("data/a.csv", None)[1] == [str(tree / "data/a.csv")]
    assert list_source_files("data/*.csv", None)[1] == [str(tree / "data/a.csv"), str(tree / "data/b.csv")]
    assert list_source_files(f"file://{tree}/data/a.csv", None)[1] == [str(tree / "data/a.csv")]


def test_glob_patterns_stay_inside_one_directory():
    assert glob_regex("*.csv").match("a.csv")
    assert not glob_regex("*.csv").match("sub/a.csv")
    assert glob_regex("**/*.csv").match("a.csv")
    assert glob_regex("**/*.csv").match("x/y/a.csv")
    assert glob_regex("part-[!0].pq").match("part-1.pq")
    assert not glob_regex("part-[!0].pq").match("part-0.pq")


def test_explicit_format_reads_files_whatever_their_names(tree):
    assert list_source_files(str(tree / "other/z.txt"), "csv")[2] == "csv"
    with pytest.raises(DataError, match="no data files found for format 'json'"):
        list_source_files(str(tree / "data"), "json")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.csv", "missing.csv: no such file or directory"),
        ("data/*.parquet", r"data/\*\.parquet: no data files found"),
        ("nowhere/*.csv", "the directory .*nowhere before the wildcard does not exist"),
        ("other/z.txt", r"cannot infer the format of .*z\.txt from its extension; set data\.format"),
        ("other", r"several formats \['json', 'parquet'\]"),
        ("other/*.*", r"cannot infer the format of .*z\.txt"),
        ("other/[xy]*", r"several formats \['json', 'parquet'\]"),
    ],
)
def test_clear_errors_name_the_source(tree, monkeypatch, source, message):
    monkeypatch.chdir(tree)
    with pytest.raises(DataError, match=message):
        list_source_files(source, None)


def test_an_empty_file_is_named(tree):
    empty = touch(tree / "data/empty.csv", "")
    with pytest.raises(DataError, match=f"file {empty} is empty \\(0 bytes\\)"):
        list_source_files(str(tree / "data"), None)


def cfg(source):
    return DataConfig(source=str(source), task="classification", label="b", features=[{"name": "a"}])


def test_fingerprint_follows_content_and_names_not_location(tree):
    first = fingerprint_source(cfg(tree / "data"))
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert fingerprint_source(cfg(tree / "data")) == first
    shutil.copytree(tree / "data", tree / "moved")
    assert fingerprint_source(cfg(tree / "moved")) == first
    touch(tree / "moved/b.csv", "a,b\n1,3\n")
    assert fingerprint_source(cfg(tree / "moved")) != first
    shutil.copytree(tree / "data", tree / "renamed")
    os.rename(tree / "renamed/b.csv", tree / "renamed/e.csv")
    assert fingerprint_source(cfg(tree / "renamed")) != first


def test_write_digits(tmp_path):
    path = tmp_path / "new" / "dir" / "digits.parquet"
    assert write_digits(str(path)) == 1797
    table = pq.read_table(path)
    assert table.column_names == [f"pixel_{i}" for i in range(64)] + ["label"]
    assert str(table.schema.field("pixel_0").type) == "double"
    assert str(table.schema.field("label").type) == "int64"
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))
