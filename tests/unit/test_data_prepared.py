"""The prepared entry's naming and checks, without Ray."""

import pytest

from rayline.config import DataConfig
from rayline.data.errors import DataError
from rayline.data.prepared import check_outside_source, entry_location


def data(**fields) -> DataConfig:
    return DataConfig(source="/data/houses", task="classification", label="kind", features=["size"], **fields)


@pytest.mark.parametrize(
    ("root", "source"),
    [
        ("/data/houses/store", "/data/houses"),
        ("/data/houses", "/data/houses/"),
        ("/data/store", "/data/*.csv"),
        ("s3://bucket/data/store", "s3://bucket/data"),
    ],
)
def test_a_storage_root_inside_the_source_is_refused(root, source):
    with pytest.raises(DataError, match="is inside data.source"):
        check_outside_source(root, source)


@pytest.mark.parametrize(
    ("root", "source"),
    [("/data/store", "/data/houses"), ("/data/houses-store", "/data/houses"), (".rayline", "data/digits.parquet")],
)
def test_a_storage_root_beside_the_source_is_fine(root, source):
    check_outside_source(root, source)


def test_every_setting_of_the_data_section_names_its_own_entry():
    base = entry_location("/store", data())
    assert base.startswith("/store/prepared/")
    assert entry_location("/store/", data()) == base
    assert entry_location("/store", data(split={"seed": 1})) != base
    assert entry_location("/store", data(missing={"numeric": "mean"})) != base
    assert entry_location("/other", data()) != base
