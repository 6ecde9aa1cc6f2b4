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
