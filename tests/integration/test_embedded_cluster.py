"""The cluster a `rayline` command starts for itself, beside another Ray node on the same machine (a second
command, a test session's cluster): its dashboard agent must not depend on Ray's fixed default port, or the
cluster runs without the agent's HTTP service and `ray job submit` to it fails."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusters import VENV_BIN
from faults import kill_processes_with_env

pytestmark = pytest.mark.slow

RAY_DEFAULT_AGENT_PORT = 52365

EMBEDDED = """
import sys
from rayline.runtime import connect
print(connect(), flush=True)
sys.stdin.read()  # until the test closes it; Ray's exit handler then stops the cluster
"""


@contextlib.contextmanager
def port_taken(port: int) -> Iterator[None]:
    """The port held on every interface, as another Ray node's agent would hold it (or already held)."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
            sock.listen()
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
        yield


def test_an_embedded_cluster_beside_another_ray_node_takes_ray_jobs(tmp_path: Path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="rle-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_TMPDIR"] = str(ray_tmp)
    with port_taken(RAY_DEFAULT_AGENT_PORT):
        embedded = subprocess.Popen(
            [sys.executable, "-c", EMBEDDED],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "embedded.log").open("w"),
            text=True,
        )
        try:
            dashboard = embedded.stdout.readline().strip()
            assert dashboard.startswith("http://127.0.0.1:"), (tmp_path / "embedded.log").read_text()[-3000:]
            job = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "submit", "--address", dashboard, "--", "echo", "the job ran"],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            embedded.stdin.close()
            assert embedded.wait(timeout=60) == 0, (tmp_path / "embedded.log").read_text()[-3000:]
        finally:
            embedded.kill()
            kill_processes_with_env("RAY_TMPDIR", str(ray_tmp))
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "the job ran" in job.stdout
