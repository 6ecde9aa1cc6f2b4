"""The CLI's user-facing behaviour that needs no Ray: validation, listing, clear errors and exit codes."""

from pathlib import Path

import pytest

from pipelines import digits_source
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


# ---------------------------------------------------------------- one error type, one line, exit 2


def broken_inputs(tmp: Path) -> dict[str, list[str]]:
    """One broken input for every subcommand that can fail on one before Ray starts."""
    (tmp / "bad_value.yaml").write_text((REPO / "pipelines/digits.yaml").read_text() + "\ntrain: {epochs: many}\n")
    (tmp / "not_yaml.yaml").write_text("name: [\n")
    (tmp / "a_file").write_text("a file where a folder should be")
    empty = str(tmp / "empty")
    digits = str(REPO / "pipelines/digits.yaml")
    source = f"data.source={digits_source(tmp)}"
    return {
        "validate": ["validate", str(tmp / "missing.yaml")],
        "validate-yaml": ["validate", str(tmp / "not_yaml.yaml")],
        "train": ["train", digits, "--set", "train.epochs=0"],
        "run": ["run", str(tmp / "bad_value.yaml")],
        "tune": ["tune", digits],
        "tune-report": ["tune-report", str(tmp)],
        "demo": ["demo", digits, "--set", "model.kind=rnn"],
        "serve": ["serve", "--root", empty],
        "predict": ["predict", "--root", empty, "--model", "nope", "--input", "x.csv", "--output", "o.csv"],
        "models": ["models", "nope", "--root", empty],
        "export": ["export", "nope", "--output", str(tmp / "a_file"), "--root", empty],
        "promote": ["promote", "nope", "v1", "--root", empty],
        "rollback": ["rollback", "nope", "--root", empty],
        "make-example": ["make-example", "diabetes", "--output", str(tmp / "a_file" / "x.csv")],
        "make-digits": ["make-digits", "--output", str(tmp / "a_file" / "digits.parquet")],
        "submit": ["submit", digits, "--set", "storage.root=/mnt/x", "--dashboard", "http://127.0.0.1:1"],
        "jobs": ["jobs", "list", "--dashboard", "http://127.0.0.1:1"],
        # With data that exists, so the address is what gets refused (EXPECTED), not a missing file.
        "train-ray-address": ["train", digits, "--ray-address", "127.0.0.1:1", "--set", source],
        "run-dashboard-url": ["run", digits, "--ray-address", "http://127.0.0.1:8265", "--set", source],
    }


CASES = ["validate", "validate-yaml", "train", "run", "tune", "tune-report", "demo", "serve", "predict", "models"]
CASES += ["promote", "rollback", "make-example", "make-digits", "submit", "jobs", "train-ray-address"]
CASES += ["run-dashboard-url", "export"]


@pytest.mark.parametrize("case", CASES)
def test_every_command_fails_on_a_broken_input_with_one_line_and_exit_2(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_DASHBOARD_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    code = main(broken_inputs(tmp_path)[case])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(("error: ", "config error: ")), err
    assert "Traceback" not in err
    assert EXPECTED.get(case, "") in lines[0], err


@pytest.mark.parametrize("case", ["train-ray-address", "run-dashboard-url"])
def test_a_wrong_address_is_refused_even_in_a_process_already_connected_to_ray(
    case, ray_cluster, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(broken_inputs(tmp_path)[case]) == 2
    assert EXPECTED[case] in capsys.readouterr().err


EXPECTED = {
    "train-ray-address": "cannot reach the Ray cluster at 127.0.0.1:1",
    "run-dashboard-url": "is a URL: it takes the Ray cluster's GCS address",
}
"""The one line the address cases must print: any other one-line error (a missing file) would not do."""


def test_the_broken_inputs_cover_every_command(tmp_path):
    from rayline.cli import COMMANDS

    assert {argv[0] for argv in broken_inputs(tmp_path).values()} == set(COMMANDS)
    assert set(CASES) == set(broken_inputs(tmp_path))


def test_version_names_rayline_ray_and_torch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith("rayline ") and "ray 2." in out and "torch " in out


def test_help_describes_rayline_not_the_module(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Imported by nothing" not in out and "cli_parser" not in out
    assert "rayline demo PIPELINE.yaml" in out and "--version" in out


def test_address_flags_say_what_they_take(capsys):
    from rayline.cli import build_parser

    parser = build_parser()
    for argv in (["train", "p.yaml"], ["promote", "m", "v1"], ["serve"]):
        assert parser.parse_args([*argv, "--ray-address", "auto"]).ray_address == "auto"
        assert parser.parse_args([*argv, "--address", "auto"]).ray_address == "auto", "the old name still works"
    for argv in (["submit", "p.yaml"], ["jobs", "list"]):
        url = "http://head:8265"
        assert parser.parse_args([*argv, "--dashboard", url]).dashboard == url
        assert parser.parse_args([*argv, "--address", url]).dashboard == url
    with pytest.raises(SystemExit):
        parser.parse_args(["jobs", "list", "--ray-address", "auto"])
    capsys.readouterr()
    for command in ("train", "submit"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        shown = capsys.readouterr().out
        assert "--address" not in shown.replace("--ray-address", "")


def test_a_failed_serve_deploy_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    from rayline.serve import control

    def refuse(*args, **kwargs):
        raise control.ServeDeployError("Serve app 'digits' is DEPLOY_FAILED: the replica died")

    two_models(tmp_path)
    monkeypatch.setattr(control, "promote", refuse)
    assert main(["promote", "tiny-classification", "v1", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: Serve app 'digits' is DEPLOY_FAILED: the replica died\n"


def test_rayline_serve_names_the_grpc_endpoint_the_version_was_trained_with(tmp_path):
    from rayline.cli import trained_serve_config
    from rayline.config import ServeConfig
    from rayline.serve.control import grpc_endpoint
    from serve_models import register

    with_grpc = register(tmp_path / "a", serve=ServeConfig(grpc={"port": 9123}))
    register(tmp_path / "b")
    assert grpc_endpoint(trained_serve_config(str(tmp_path / "a"), with_grpc)) == "grpc://127.0.0.1:9123"
    assert grpc_endpoint(trained_serve_config(str(tmp_path / "a"), None)) == "grpc://127.0.0.1:9123"
    assert grpc_endpoint(trained_serve_config(str(tmp_path / "b"), None)) is None


def test_the_modules_imported_while_the_cluster_starts_exist_and_a_failed_import_is_left_to_its_user(
    tmp_path, monkeypatch
):
    """A misspelt name would only make start-up slower, silently; a module that fails to import must not stop
    the command here (it is imported again where it is used, and fails there with its own error)."""
    import importlib.util
    import sys

    from rayline.cli import MODULES_AFTER_START, import_in_background

    for command, modules in MODULES_AFTER_START.items():
        for name in modules:
            assert importlib.util.find_spec(name) is not None, (command, name)
    (tmp_path / "warmed_up.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = import_in_background(("rayline.no_such_module", "warmed_up"))
    thread.join(timeout=30)
    assert not thread.is_alive() and sys.modules["warmed_up"].LOADED, "the names after a failed one are imported"
