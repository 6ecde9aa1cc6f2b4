"""Every YAML file the project ships validates against the schema that will read it."""

import json
from pathlib import Path

import pytest
import yaml

from rayline.config import load_config

REPO = Path(__file__).resolve().parents[2]


def shipped(pattern: str) -> list[Path]:
    return sorted(REPO.glob(pattern))


@pytest.mark.parametrize("path", shipped("pipelines/*.yaml"), ids=lambda p: p.name)
def test_pipeline_validates(path):
    cfg = load_config(path)
    assert cfg.serve.host == "127.0.0.1", "shipped pipelines serve on loopback only"


@pytest.mark.parametrize("path", shipped("tune/*.yaml"), ids=lambda p: p.name)
def test_search_space_validates_against_the_pipelines_that_use_it(path, monkeypatch):
    from rayline.tune import load_search_space

    monkeypatch.chdir(REPO)  # pipelines name their search space relative to the repo root
    users = [cfg for cfg in map(load_config, shipped("pipelines/*.yaml")) if cfg.tune]
    users = [cfg for cfg in users if Path(cfg.tune.search_space) == path]
    assert users, f"no shipped pipeline uses {path.name}"
    for cfg in users:
        assert load_search_space(path, cfg)


@pytest.mark.parametrize("path", shipped("serve/*.yaml"), ids=lambda p: p.name)
def test_serve_config_validates(path):
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert config.http_options.host == "127.0.0.1"
    assert all(app.import_path == "rayline.serve.app:build" for app in config.applications)


@pytest.mark.parametrize("path", shipped("serve/*.yaml"), ids=lambda p: p.name)
def test_serve_config_args_are_taken_by_the_app_builder(path, tmp_path):
    """The app's own builder (what `serve deploy` runs) takes every shipped app's args."""
    from rayline.serve.app import BuildArgs, build
    from serve_models import register

    register(tmp_path, name="digits")  # the model name the YAMLs mention
    for app in yaml.safe_load(path.read_text())["applications"]:
        BuildArgs.model_validate(app["args"])  # as shipped, storage root included
        assert type(build({**app["args"], "storage_root": str(tmp_path)})).__name__ == "Application"


def test_haproxy_serve_config_sets_what_rayline_serve_sets(monkeypatch):
    """serve/rayline-haproxy.yaml's controller environment is what `rayline serve` gives Serve for ingress: haproxy,
    but for the ports (free ones there, fixed ones here)."""
    import tempfile

    from rayline.config import ServeConfig
    from rayline.serve.control import controller_options

    raw = yaml.safe_load((REPO / "serve" / "rayline-haproxy.yaml").read_text())
    shipped_env = raw["controller_options"]["runtime_env"]["env_vars"]
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    cfg = ServeConfig(ingress="haproxy", port=raw["http_options"]["port"])
    ours = controller_options(cfg)["runtime_env"]["env_vars"]
    assert set(shipped_env) == set(ours)
    ports = {key for key in ours if key.endswith("_PORT")}
    assert ports and all(shipped_env[key].isdigit() for key in ports)
    assert {k: v for k, v in shipped_env.items() if k not in ports} == {k: v for k, v in ours.items() if k not in ports}


@pytest.mark.parametrize("path", shipped("cluster*.yaml"), ids=lambda p: p.name)
def test_cluster_config_validates_with_rays_launcher(path):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    validate_config(prepare_config(raw))
    starts = raw["head_start_ray_commands"] + raw.get("worker_start_ray_commands", [])
    assert not any("ray stop" in command for command in starts), "ray stop would end unrelated Ray processes"
    assert "--dashboard-host=127.0.0.1" in " ".join(raw["head_start_ray_commands"])


@pytest.mark.parametrize("path", shipped("cluster*.yaml"), ids=lambda p: p.name)
def test_cluster_config_installs_rayline_with_token_auth_and_metrics(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["file_mounts"]["~/rayline"] == ".", "the project travels to every node"
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "every node shares your token"
    assert any("pip install" in c and "-e ." in c for c in raw["setup_commands"]), "setup installs rayline"
    assert any("RAY_ADDRESS=" in c for c in raw["head_setup_commands"]), "drivers on the head join the cluster"
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c and "--metrics-export-port=8080" in c for c in starts)
    assert all("~/rayline/.venv/bin/ray start" in c for c in starts), "Ray from the venv that holds rayline"
    if raw["provider"]["type"] == "local":
        assert "available_node_types" not in raw, "the local provider rejects node types (head_ip/worker_ips)"
    else:
        types = raw["available_node_types"]
        assert raw["head_node_type"] in types and len(types) >= 2, "a head type and worker types"


def test_there_is_something_to_check():
    assert shipped("pipelines/*.yaml") and shipped("cluster*.yaml") and shipped("serve/*.yaml")
