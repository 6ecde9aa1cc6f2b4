"""`serve deploy serve/rayline.yaml` on a cluster started with `ray start`, then `rayline promote` / `rollback`.

The cluster has its own ports, temp dir and auth token (tests/clusters.py) and is stopped by the
processes it started. The shipped config is used as is, but for the HTTP port and an absolute
storage root.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from clusters import REPO, VENV_BIN, start_cluster
from http_client import http
from rayline.registry import Registry
from serve_models import make_registry, model_name, row

PORT = 8128
pytestmark = pytest.mark.slow


def run(command: list[str], env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def served_version(url: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = http.get(f"{url}/v1/model", timeout=10)
            if r.status_code == 200:
                return r.json()["model_version"]
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up in {timeout:.0f} s"
        time.sleep(1)


def test_serve_deploy_serves_the_registrys_model_and_cli_switches_it(tmp_path):
    root = make_registry(tmp_path / "storage", versions=2)  # serving v2
    config = yaml.safe_load((REPO / "serve" / "rayline.yaml").read_text())
    config["http_options"]["port"] = PORT
    config["applications"][0]["args"]["storage_root"] = root
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{PORT}"

    cluster = start_cluster(num_cpus=2)
    try:
        env = cluster.client_env()
        run([str(VENV_BIN / "serve"), "deploy", str(config_path), "-a", cluster.dashboard_url], env)
        assert served_version(url) == "v2"
        r = http.post(f"{url}/predict", json={"rows": [row()]}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == "v2"

        rayline = [str(VENV_BIN / "rayline")]
        name = model_name("classification")
        out = run([*rayline, "promote", name, "v1", "--root", root, "--ray-address", cluster.address], env)
        assert f"switched running app(s) rayline to {name}/v1 in place" in out
        assert served_version(url) == "v1"
        assert Registry(root).model(name).serving_version() == "v1"
        out = run([*rayline, "rollback", name, "--root", root, "--ray-address", cluster.address], env)
        assert f"now serving model {name}/v2" in out
        assert served_version(url) == "v2"
    finally:
        cluster.stop()


def test_the_shipped_configs_name_the_app_builder():
    from rayline.serve.app import IMPORT_PATH, BuildArgs

    for path in sorted(Path(REPO / "serve").glob("*.yaml")):
        app = yaml.safe_load(path.read_text())["applications"][0]
        assert app["import_path"] == IMPORT_PATH == "rayline.serve.app:build"
        assert set(app["args"]) <= set(BuildArgs.model_fields)
