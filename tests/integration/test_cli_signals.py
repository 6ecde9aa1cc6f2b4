"""`rayline serve` stopped with Ctrl-C (SIGINT to its whole process group, as a terminal sends it) and the way
Docker, systemd and Kubernetes stop a process (SIGTERM to it alone), under each ingress: Serve and the embedded
Ray cluster shut down, the exit status is normal, the port is free and no process it started is left: with
HAProxy in front, that includes the haproxy process (it once outlived its stop, still listening)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from clusters import VENV_BIN
from faults import alive, command_line, kill_processes_with_env, process_tree, wait_until
from rayline.config import ServeConfig
from rayline.runtime import free_port
from serve_models import register

pytestmark = pytest.mark.slow

RAYLINE = str(VENV_BIN / "rayline")


STOPS = {
    "sigterm": lambda process: process.send_signal(signal.SIGTERM),
    "ctrl-c": lambda process: os.killpg(process.pid, signal.SIGINT),
}


def as_from_a_terminal() -> None:
    """A command typed at a terminal starts with Ctrl-C's default action; a suite run in the background (`make
    test &` from a script) would hand its ignored SIGINT down, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stop", list(STOPS))
@pytest.mark.parametrize("ingress", ["proxy", "haproxy"])
def test_a_stop_signal_ends_rayline_serve_cleanly_and_leaves_no_ray_process(tmp_path, ingress, stop):
    port = free_port()
    register(tmp_path / "store", serve=ServeConfig(port=port, ingress=ingress, cpus_per_replica=0.25))
    # Its own embedded cluster under its own Ray temp dir (short: Ray's socket paths live under it), so anything
    # it left behind is told apart from every other Ray on the machine, and cleaned up whatever happens.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rls-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_TMPDIR"] = str(ray_tmp)
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    try:
        with out.open("w") as stdout, err.open("w") as stderr:
            server = subprocess.Popen(
                [RAYLINE, "serve", "--root", str(tmp_path / "store")],
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=as_from_a_terminal,
            )

        def serving() -> bool:
            assert server.poll() is None, f"`rayline serve` exited early:\n{out.read_text()}\n{err.read_text()}"
            return "press Ctrl-C to stop" in out.read_text()

        wait_until(serving, 300, "`rayline serve` to serve")
        assert httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10).status_code == 200
        tree = process_tree(server.pid)
        started = {pid: command_line(pid) for pid in tree}
        assert any("raylet" in c for c in started.values()) and any("gcs_server" in c for c in started.values())
        if ingress == "haproxy":
            assert any("haproxy -" in c for c in started.values()), "HAProxy runs in front of the replicas"

        STOPS[stop](server)
        code = server.wait(timeout=180)
        printed, errors = out.read_text(), err.read_text()
        assert code == 0, f"exit status {code}\n{printed}\n{errors}"
        for dump in ("SIGTERM received", "***", "Traceback", "Aborted", "graceful_shutdown"):
            assert dump not in printed + errors, f"{dump!r} printed:\n{printed}\n{errors}"
        assert "stopping" in printed
        wait_until(lambda: not [p for p in tree if alive(p)], 60, "every process `rayline serve` started to exit")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=5)
    finally:
        if server.poll() is None:
            server.kill()
        left = kill_processes_with_env("RAY_TMPDIR", str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"Ray processes left behind: {[started.get(p, p) for p in left]}"
