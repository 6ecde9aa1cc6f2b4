"""The CLI's user-facing behaviour that needs no Ray: validation, listing, clear errors and exit codes."""

from pathlib import Path

import pytest

from rayline.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_validate_accepts_a_shipped_pipeline(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["validate", "pipelines/digits.yaml", "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "valid pipeline 'digits'" in out
    assert "2 workers x 3 epochs" in out


def test_validate_names_every_bad_field_and_exits_2(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(["validate", "pipelines/digits.yaml", "--set", "train.epochs=0", "--set", "model.kind=rnn"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.epochs: Input should be greater than 0 (got 0)" in err
    assert "model.kind:" in err and "'rnn'" in err
    assert "Traceback" not in err


def test_missing_pipeline_file_is_a_clear_error(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_models_on_an_empty_registry(capsys, tmp_path):
    assert main(["models", "--root", str(tmp_path)]) == 0
    assert "no models registered" in capsys.readouterr().out


def test_serve_without_models_is_a_clear_error(capsys, tmp_path):
    assert main(["serve", "--root", str(tmp_path)]) == 2
    assert "has no models yet" in capsys.readouterr().err


def test_tune_without_a_tune_section_is_refused(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["tune", "pipelines/digits.yaml"]) == 2
    assert "has no tune: section" in capsys.readouterr().err


def test_tune_report_on_a_folder_that_is_not_a_search(capsys, tmp_path):
    assert main(["tune-report", str(tmp_path)]) == 2
    assert "not a rayline search folder" in capsys.readouterr().err


def test_usage_errors_exit_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2


LONG_NAME = "california-house-prices-with-a-deliberately-long-model-name"


def two_models(root: Path) -> None:
    """A classifier (two versions) and a regressor with a long name, in one registry."""
    from serve_models import register

    register(root, "classification", metrics={"val_loss": 0.5, "val_accuracy": 0.91, "val_f1_macro": 0.9})
    register(root, "classification", seed=1, metrics={"val_loss": 0.4, "val_accuracy": 0.93})
    register(root, "regression", name=LONG_NAME, metrics={"val_loss": 0.2, "val_rmse": 12.5, "val_r2": 0.81})


def test_models_lists_every_name_in_aligned_columns(capsys, tmp_path):
    two_models(tmp_path)
    assert main(["models", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[1:4]
    assert header.split() == [
        "name",
        "version",
        "epoch",
        "val_accuracy",
        "val_f1_macro",
        "val_rmse",
        "val_r2",
        "created",
    ]
    assert [row.split()[: 4 if row.startswith("*") else 3] for row in rows] == [
        ["*", LONG_NAME, "v1", "1"],
        ["tiny-classification", "v1", "1"],
        ["*", "tiny-classification", "v2", "1"],
    ]
    assert "0.9100" in rows[1] and "0.9000" in rows[1] and "12.5000" in rows[0] and "0.8100" in rows[0]
    # Every column starts where its header does, whatever the length of the names before it.
    for column in ("version", "created"):
        start = header.index(column)
        assert all(row[start - 2 : start] == "  " and row[start] != " " for row in rows), (column, lines)
    for column in ("val_accuracy", "val_rmse"):  # numbers end where their header ends
        end = header.index(column) + len(column)
        assert all(row[end - 1] != " " and row[end : end + 2] == "  " for row in rows), (column, lines)


def test_models_lists_one_name_and_refuses_an_unknown_one(capsys, tmp_path):
    two_models(tmp_path)
    assert main(["models", LONG_NAME, "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert LONG_NAME in out and "tiny-classification" not in out and "val_accuracy" not in out
    assert main(["models", "tiny", "--root", str(tmp_path)]) == 2
    assert f"no model named 'tiny' in {tmp_path / 'registry'} (models: {LONG_NAME}, tiny-classification)" in (
        capsys.readouterr().err
    )


def test_serve_picks_the_pipelines_model_and_never_another(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    two_models(tmp_path)
    # pipelines/digits.yaml serves the model named digits: this registry has none, so nothing starts.
    assert main(["serve", "pipelines/digits.yaml", "--set", f"storage.root={tmp_path}"]) == 2
    assert "no model named 'digits'" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path)]) == 2
    assert "holds several models" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path), "--model", "tiny-classification/v9"]) == 2
    assert "no model version 'v9' of 'tiny-classification'" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path), "--model", "tiny-classification", "--version", "latest"]) == 2
    assert "'latest' is not a model version" in capsys.readouterr().err
    assert (
        main(["predict", "--root", str(tmp_path), "--model", "nope/v1", "--input", "x.csv", "--output", "o.csv"]) == 2
    )


def test_promote_and_rollback_one_name(capsys, tmp_path):
    from rayline.registry import Registry

    two_models(tmp_path)
    assert main(["promote", "tiny-classification", "v1", "--root", str(tmp_path)]) == 0
    assert "now serving model tiny-classification/v1" in capsys.readouterr().out
    assert Registry(tmp_path).model(LONG_NAME).serving_version() == "v1", "the other name is untouched"
    assert main(["rollback", "tiny-classification", "--root", str(tmp_path)]) == 0
    assert "now serving model tiny-classification/v2" in capsys.readouterr().out
    assert main(["rollback", LONG_NAME, "--root", str(tmp_path)]) == 2
    assert f"nothing to roll back to: model '{LONG_NAME}'" in capsys.readouterr().err
    assert main(["promote", "tiny-classification", "v3", "--root", str(tmp_path)]) == 2
    assert "no model version 'v3' of 'tiny-classification'" in capsys.readouterr().err


def test_models_says_which_versions_are_worse_than_their_linear_baseline(capsys, tmp_path):
    from serve_models import register

    worse = {"comparison": {"metric": "test_accuracy", "model": 0.8, "baseline": 0.9, "worse_than_baseline": True}}
    better = {"comparison": {"metric": "test_accuracy", "model": 0.95, "baseline": 0.9, "worse_than_baseline": False}}
    register(tmp_path, "classification", seed=0, evaluation=worse)
    register(tmp_path, "classification", seed=1, evaluation=better)
    assert main(["models", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].split().index("baseline")
    assert [row.lstrip("* ").split()[column] for row in lines[1:3]] == ["WORSE", "ok"]
