"""Hostile training input on the session cluster: corrupt Parquet, truncated CSV, a wrong schema, strings
where numbers belong, NaN/inf, an absurd batch size. Each must end in a clear error naming the source,
before any training starts, with the source file and the registry left exactly as they were.
(Hostile HTTP requests are in test_faults_serve.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faults import register_tiny_model
from pipelines import PIXELS, digits_source, quiet
from rayline.checkpoint import file_sha256
from rayline.config import PipelineConfig, validate_config
from rayline.data import DataError
from rayline.pipeline import train_and_register
from rayline.registry import Registry


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> pd.DataFrame:
    return pd.read_parquet(digits_source(tmp_path_factory.mktemp("clean")))


def pipeline(source: Path, root: Path, missing: dict | None = None, **train) -> PipelineConfig:
    data = {"source": str(source), "task": "classification", "label": "label", "features": PIXELS}
    return validate_config(
        {
            "name": "hostile",
            "data": {**data, **({"missing": missing} if missing else {})},
            "model": {"kind": "mlp", "hidden_sizes": [16]},
            "train": {"num_workers": 2, "epochs": 1, **train},
            "storage": {"root": str(root)},
        }
    )


def corrupt_parquet(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".parquet")
    path.write_bytes(b"PAR1" + np.random.default_rng(0).bytes(50_000) + b"PAR1")
    return path


def truncated_parquet(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".parquet")
    df.to_parquet(path, index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def truncated_csv(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".csv")
    df.to_csv(path, index=False)
    data = path.read_bytes()
    cut = data.rindex(b"\n", 0, len(data) // 2) + 40  # in the middle of a row, as a crashed writer leaves it
    path.write_bytes(data[:cut])
    return path


def wrong_schema(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".parquet")
    df.assign(pixel_5=df["pixel_5"].map(lambda v: f"{v:.0f} px")).to_parquet(path, index=False)
    return path


def strings_for_numbers(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".csv")
    bad = df.astype({"pixel_9": object})
    bad.loc[7, "pixel_9"] = "seven"
    bad.to_csv(path, index=False)
    return path


def nan_values(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".parquet")
    df.assign(pixel_20=df["pixel_20"].where(df.index % 5 != 0, np.nan)).to_parquet(path, index=False)
    return path


def infinite_values(df: pd.DataFrame, path: Path) -> Path:
    path = path.with_suffix(".parquet")
    df.assign(pixel_30=df["pixel_30"].where(df.index % 7 != 0, np.inf)).to_parquet(path, index=False)
    return path


HOSTILE = [
    # writer of the hostile source, a pattern the error must match, id
    pytest.param(corrupt_parquet, "could not read it", None, id="corrupt Parquet"),
    pytest.param(truncated_parquet, "could not read it", None, id="truncated Parquet"),
    pytest.param(truncated_csv, "could not read it", None, id="truncated CSV"),
    pytest.param(wrong_schema, "numeric feature column 'pixel_5' has type large_string", None, id="wrong schema"),
    pytest.param(strings_for_numbers, "pixel_9", None, id="strings for numbers"),
    # NaN is a missing cell: imputed by default (test_your_own_data), refused when the rule says error.
    pytest.param(nan_values, r"'pixel_20'", {"numeric": "error"}, id="NaN under missing: error"),
    pytest.param(infinite_values, r"'pixel_30'.*finite", None, id="inf"),
]


@pytest.mark.parametrize(("write", "pattern", "missing"), HOSTILE)
def test_hostile_training_data_is_refused_clearly_and_damages_nothing(
    ray_cluster, digits, tmp_path, write, pattern, missing
):
    source = write(digits, tmp_path / "hostile")
    source_digest = file_sha256(source)
    version = register_tiny_model(tmp_path / "store")
    registry = Registry(tmp_path / "store")
    record = registry.record(version)

    with pytest.raises(DataError) as err:
        train_and_register(pipeline(source, tmp_path / "store", missing), log=quiet)

    assert str(source) in str(err.value), err.value
    assert re.search(pattern, str(err.value)), err.value
    assert file_sha256(source) == source_digest, "the source is never written to"
    assert registry.versions() == [version] and registry.record(version) == record
    assert registry.load().version == version, "the registered model still loads"
    assert not (tmp_path / "store" / "runs").exists(), "refused before any training run started"


def test_a_batch_size_beyond_the_training_split_is_refused_before_training(ray_cluster, digits, tmp_path):
    source = tmp_path / "digits.parquet"
    digits.to_parquet(source, index=False)
    with pytest.raises(ValueError, match=r"train\.batch_size"):
        train_and_register(pipeline(source, tmp_path / "store", batch_size=10**9), log=quiet)
    assert not (tmp_path / "store" / "runs").exists(), "refused before any training run started"
