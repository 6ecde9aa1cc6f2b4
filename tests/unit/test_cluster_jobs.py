"""rayline.jobs and the submit/jobs commands, short of a cluster: addresses, tokens, checks before submitting."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from rayline import jobs
from rayline.cli import build_parser, main
from rayline.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_DASHBOARD_ADDRESS")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", *ADDRESS_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_the_address_comes_from_the_flag_then_the_environment(clean_env):
    assert jobs.dashboard_address() == "http://127.0.0.1:8265"
    clean_env.setenv("RAY_DASHBOARD_ADDRESS", "10.0.0.1:8265")
    assert jobs.dashboard_address() == "http://10.0.0.1:8265"
    clean_env.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9000")
    assert jobs.dashboard_address() == "http://127.0.0.1:9000"
    assert jobs.dashboard_address("https://head:8265") == "https://head:8265"


def test_the_token_is_found_where_ray_looks(clean_env, tmp_path):
    assert jobs.auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_token() == "from-home"
    (tmp_path / "t").write_text("from-path")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert jobs.auth_token() == "from-path"
    clean_env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == "from-env"
    clean_env.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_token() is None


def test_token_mode_without_a_token_says_where_to_put_one(clean_env):
    clean_env.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(jobs.JobsError, match="RAY_AUTH_MODE=token but no token.*ray get-auth-token"):
        jobs.auth_token()


def test_the_entrypoint_is_the_cli_a_person_would_type():
    command = jobs.entrypoint("pipelines/digits.yaml", ["train.epochs=2", "model.channels=[8, 16]"])
    argv = shlex.split(command)
    assert argv[:2] == ["rayline", "run"]
    args = build_parser().parse_args(argv[1:])
    assert args.no_serve and args.set == ["train.epochs=2", "model.channels=[8, 16]"]
    assert "--no-serve" not in jobs.entrypoint("p.yaml", [], serve=True)


def test_a_relative_storage_root_is_refused_before_submitting(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"storage.root '.rayline' is relative.*--set storage.root=PATH"):
        jobs.check_submittable("pipelines/digits.yaml", [], ".")
    inside, cfg = jobs.check_submittable("pipelines/digits.yaml", ["storage.root=/mnt/rayline"], ".")
    assert (inside, cfg.storage.root) == ("pipelines/digits.yaml", "/mnt/rayline")


def test_an_object_store_root_is_submitted_as_written(monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = ["storage.root=s3://team-bucket/rayline", "storage.endpoint_override=http://minio.internal:9000"]
    _, cfg = jobs.check_submittable("pipelines/digits.yaml", overrides, ".")
    assert cfg.storage.root == "s3://team-bucket/rayline"
    assert cfg.storage.uri == "s3://team-bucket/rayline?endpoint_override=minio.internal%3A9000&scheme=http"
    argv = shlex.split(jobs.entrypoint("pipelines/digits.yaml", overrides))
    assert build_parser().parse_args(argv[1:]).set == overrides


def test_the_pipeline_must_travel_with_the_working_dir(tmp_path, monkeypatch):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "x"}))
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="must be inside the working directory"):
        jobs.check_submittable(str(pipeline), [], ".")


def test_an_invalid_pipeline_fails_here_with_the_usual_message(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code = main(["submit", "pipelines/digits.yaml", "--set", "train.epochs=-1", "--dashboard", "http://127.0.0.1:1"])
    assert code == 2
    assert "train.epochs" in capsys.readouterr().err


def test_an_unreachable_cluster_is_named_with_the_tunnel_hint(clean_env, capsys):
    code = main(["jobs", "list", "--dashboard", "http://127.0.0.1:1"])
    assert code == 2
    assert "cannot reach the Jobs API at http://127.0.0.1:1" in capsys.readouterr().err


def test_jobs_commands_other_than_list_need_an_id(capsys):
    assert main(["jobs", "status"]) == 2
    assert "needs a job id" in capsys.readouterr().err


def test_pipeline_commands_take_a_cluster_address():
    for command in ("train", "run", "tune", "demo"):
        args = build_parser().parse_args([command, "p.yaml", "--ray-address", "auto"])
        assert args.ray_address == "auto"
