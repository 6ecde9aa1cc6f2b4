"""The README's "Your own data" walk-through, up to training: the example files and what features: auto
makes of them (no Ray)."""

import pandas as pd
import pytest

from rayline.config import load_config
from rayline.data.examples import write_example
from rayline.data.infer import describe_features, resolve_features


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    return repo


def test_breast_cancer_example_resolves_as_the_readme_shows(in_tmp):
    rows = write_example("breast_cancer", "data/breast_cancer.csv")
    table = pd.read_csv("data/breast_cancer.csv")
    assert rows == len(table) == 569
    assert table["diagnosis"].isna().sum() == 2, "two rows with no label"
    assert table["mean_texture"].isna().any() and table["size_band"].isna().any(), "empty cells"

    cfg = load_config(in_tmp / "pipelines" / "breast_cancer.yaml")
    data = resolve_features(cfg.data)
    kinds = {f.name: f.kind for f in data.features}
    assert "patient_id" not in kinds and "diagnosis" not in kinds
    assert kinds["size_band"] == "categorical" and kinds["mean_radius"] == "numeric" and len(kinds) == 31
    shown = describe_features(cfg)
    assert "'patient_id' looks like an id" in shown
    assert "- {name: size_band, kind: categorical}" in shown


def test_diabetes_example_is_a_regression_with_a_categorical_sex(in_tmp):
    write_example("diabetes", "data/diabetes.csv")
    cfg = load_config(in_tmp / "pipelines" / "diabetes.yaml")
    kinds = {f.name: f.kind for f in resolve_features(cfg.data).features}
    assert kinds["sex"] == "categorical" and kinds["bmi"] == "numeric" and "progression" not in kinds
    assert pd.read_csv("data/diabetes.csv")[["bmi", "bp"]].isna().any().all()
