"""`ray up cluster.yaml` + `ray submit cluster.yaml pipelines/run.py -- PIPELINE.yaml` on 127.0.0.1.

The launcher reaches even a local-provider head over SSH, so the test runs its own sshd on
127.0.0.1:22 (throw-away host key, client key and HOME; see tests/clusters.py). The shipped
cluster.yaml is used as is except for what must differ on a shared test machine: the address, SSH
user and key, ports, a private temp dir, and the venv (no network to build one from PyPI here:
the project's own venv stands in for the one setup_commands would create). Never `ray down`: it
runs `ray stop` on the node, which would end every Ray process on this machine.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from clusters import REPO, VENV_BIN, kill_marked_processes, sshd_unavailable, start_sshd, worker_port_block
from http_client import http
from rayline.registry import Registry
from rayline.runtime import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sshd():
    reason = sshd_unavailable()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the cluster-launcher test: {reason}")
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="rl-ssh-", dir="/tmp"))
    server = start_sshd(base, base / "home")
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def launcher(sshd, tmp_path):
    """The shipped cluster.yaml, pointed at this machine; yields (config path, dashboard URL, token)."""
    name = f"rayline-test-{secrets.token_hex(4)}"
    temp_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    dashboard_port = free_port()
    shipped = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = local_test_config(shipped, name=name, key=sshd.key, token=token, temp_dir=temp_dir, dash=dashboard_port)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, f"http://127.0.0.1:{dashboard_port}", token
    kill_marked_processes(f"RAYLINE_TEST_CLUSTER={temp_dir}")
    shutil.rmtree(temp_dir, ignore_errors=True)
    for suffix in ("state", "lock"):  # the local provider's record of the cluster's nodes
        Path(f"/tmp/ray/cluster-{name}.{suffix}").unlink(missing_ok=True)


def local_test_config(shipped: dict, *, name: str, key: Path, token: Path, temp_dir: Path, dash: int) -> dict:
    config = copy.deepcopy(shipped)
    config["cluster_name"] = name
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    assert set(config["file_mounts"]) == {"~/rayline", "~/.ray/auth_token"}
    config["file_mounts"] = {"~/rayline": str(REPO), "~/.ray/auth_token": str(token)}
    install, *rest = config["setup_commands"]
    assert "pip install" in install and "-e ." in install
    config["setup_commands"] = [f"mkdir -p ~/rayline && ln -sfn {VENV_BIN.parent} ~/rayline/.venv", *rest]
    gcs = free_port()
    head_setup = shipped["head_setup_commands"]
    config["head_setup_commands"] = [c.replace("127.0.0.1:6379", f"127.0.0.1:{gcs}") for c in head_setup]
    assert config["head_setup_commands"] != head_setup, "the shipped head setup points drivers at the cluster"
    client, metrics, agent = free_port(), free_port(), free_port()
    workers = worker_port_block(gcs, dash, client, metrics, agent)
    # Later flags win over the shipped ones: ports nobody else on this machine uses, and a private temp dir.
    overrides = [
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--metrics-export-port={metrics}",
        f"--dashboard-agent-listen-port={agent}",
        f"--min-worker-port={workers}",
        f"--max-worker-port={workers + 99}",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=4",
        "--object-store-memory=268435456",
    ]
    env = f"RAYLINE_TEST_CLUSTER={temp_dir} RAY_API_SERVER_ADDRESS=http://127.0.0.1:{dash}"
    env += " RAY_worker_maximum_startup_concurrency=8"
    [start] = shipped["head_start_ray_commands"]
    config["head_start_ray_commands"] = [f"export {env}; {start} {' '.join(overrides)}"]
    return config


def launcher_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    return env


def test_ray_up_then_ray_submit_runs_a_pipeline(sshd, launcher):
    path, dashboard, token = launcher
    ray = str(VENV_BIN / "ray")

    up = subprocess.run(
        [ray, "up", "-y", "--no-config-cache", str(path)], env=launcher_env(), cwd=REPO, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    assert http.get(f"{dashboard}/api/version", timeout=10).status_code == 401, "token auth is on"
    bearer = {"Authorization": f"Bearer {token.read_text()}"}
    assert http.get(f"{dashboard}/api/version", headers=bearer, timeout=10).status_code == 200

    args = ["pipelines/digits_mlp.yaml", "--no-serve", "--set", "train.epochs=2"]
    submit = subprocess.run(
        [ray, "submit", "--no-config-cache", str(path), "pipelines/run.py", "--", *args],
        env=launcher_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    assert "epoch 2/2" in submit.stdout and "registered model digits-mlp/v1" in submit.stdout, submit.stdout[-4000:]
    project = sshd.home / "rayline"
    assert (project / "pipelines" / "run.py").is_file(), "file_mounts carried the project"
    assert Registry(project / ".rayline").model("digits-mlp").serving_version() == "v1", "registered on the head"
