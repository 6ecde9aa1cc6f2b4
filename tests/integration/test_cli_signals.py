"""`rayline serve` stopped with Ctrl-C (SIGINT to its whole process group, as a terminal sends it) and the way
Docker, systemd and Kubernetes stop a process (SIGTERM to it alone), under each ingress: Serve and the embedded
Ray cluster shut down, the exit status is normal, the port is free and no process it started is left: with
HAProxy in front, that includes the haproxy process (it once outlived its stop, still listening)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clusters import VENV_BIN
from faults import alive, command_line, kill_processes_with_env, process_tree, wait_until
from http_client import http
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


VARIANTS = [(ingress, stop) for ingress in ("proxy", "haproxy") for stop in STOPS]


@dataclass
class Stopped:
    """One `rayline serve` and what its stop left: exit status, output, and processes still alive."""

    code: int | None
    printed: str
    started: dict[int, str]
    left: list[int]
    port_answered_after: bool


class Server:
    """`rayline serve` in its own session, with its own embedded cluster under its own Ray temp dir (short: Ray's
    socket paths live under it), so anything it leaves behind is told apart from every other Ray on the machine."""

    def __init__(self, base: Path, ingress: str, stop: str):
        self.base, self.ingress, self.stop_name = base, ingress, stop
        self.port = free_port()
        register(base / "store", serve=ServeConfig(port=self.port, ingress=ingress, cpus_per_replica=0.25))
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rls-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env["RAY_TMPDIR"] = str(self.ray_tmp)
        self.out, self.err = base / "stdout.log", base / "stderr.log"
        with self.out.open("w") as stdout, self.err.open("w") as stderr:
            self.process = subprocess.Popen(
                [RAYLINE, "serve", "--root", str(base / "store")],
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=as_from_a_terminal,
            )

    def printed(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def serving(self) -> bool:
        assert self.process.poll() is None, f"`rayline serve` ({self.ingress}) exited early:\n{self.printed()}"
        return "press Ctrl-C to stop" in self.out.read_text()

    def stop_and_wait(self, started: dict[int, str]) -> Stopped:
        STOPS[self.stop_name](self.process)
        code = self.process.wait(timeout=180)
        wait_until(lambda: not [p for p in started if alive(p)], 60, "every process `rayline serve` started to exit")
        try:
            http.get(f"http://127.0.0.1:{self.port}/-/healthz", timeout=5)
            answered = True
        except httpx.TransportError:
            answered = False
        return Stopped(code, self.printed(), started, [], answered)

    def clean_up(self) -> list[int]:
        if self.process.poll() is None:
            self.process.kill()
        left = kill_processes_with_env("RAY_TMPDIR", str(self.ray_tmp))
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return left


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> dict[tuple[str, str], Stopped]:
    """The four servers start and stop at the same time (each is mostly waiting on its own cluster), and every
    test below checks one of them."""
    servers = {v: Server(tmp_path_factory.mktemp(f"{v[0]}-{v[1]}"), *v) for v in VARIANTS}
    try:
        wait_until(lambda: all(s.serving() for s in servers.values()), 300, "every `rayline serve` to serve")
        started = {}
        for variant, server in servers.items():
            assert http.get(f"http://127.0.0.1:{server.port}/-/healthz", timeout=10).status_code == 200
            started[variant] = {pid: command_line(pid) for pid in process_tree(server.process.pid)}
        with ThreadPoolExecutor(len(servers)) as pool:
            futures = {v: pool.submit(s.stop_and_wait, started[v]) for v, s in servers.items()}
            results = {v: f.result() for v, f in futures.items()}
    finally:
        left = {v: s.clean_up() for v, s in servers.items()}
    return {v: dataclasses.replace(r, left=left[v]) for v, r in results.items()}


@pytest.mark.parametrize("ingress,stop", VARIANTS, ids=[f"{i}-{s}" for i, s in VARIANTS])
def test_a_stop_signal_ends_rayline_serve_cleanly_and_leaves_no_ray_process(stopped, ingress, stop):
    result = stopped[ingress, stop]
    commands = result.started.values()
    assert any("raylet" in c for c in commands) and any("gcs_server" in c for c in commands)
    assert not any("log_monitor.py" in c for c in commands), "no log monitor without --verbose: nothing prints it"
    if ingress == "haproxy":
        assert any("haproxy -" in c for c in commands), "HAProxy runs in front of the replicas"
    assert result.code == 0, f"exit status {result.code}\n{result.printed}"
    for dump in ("SIGTERM received", "***", "Traceback", "Aborted", "graceful_shutdown"):
        assert dump not in result.printed, f"{dump!r} printed:\n{result.printed}"
    assert "stopping" in result.printed
    assert not result.port_answered_after, "the endpoint still answers after the stop"
    assert not result.left, f"Ray processes left behind: {[result.started.get(p, p) for p in result.left]}"
