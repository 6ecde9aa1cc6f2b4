"""The serve benchmark's servers: each one a process of its own (benchmarks/servers/), started, checked
and stopped the same way, with its CPU time read from /proc over its whole process tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from serve_load import cpu_seconds, process_tree, request_body

SERVERS = Path(__file__).resolve().parent / "servers"


@dataclass
class Server:
    name: str
    script: str
    python: str
    spec: dict
    workdir: Path
    process: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    """The model's feature names, which a gRPC row names its values by."""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        spec_file = self.workdir / f"{self.name}.spec.json"
        self.spec["info_file"] = str(self.workdir / f"{self.name}.info.json")
        Path(self.spec["info_file"]).unlink(missing_ok=True)
        spec_file.write_text(json.dumps(self.spec))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        log = open(self.workdir / f"{self.name}.log", "w")  # noqa: SIM115 (the process keeps it)
        command = [self.python, str(SERVERS / self.script), str(spec_file)]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until its info file is written and a real request is answered 200."""
        deadline = time.monotonic() + timeout_s
        info_file = Path(self.spec["info_file"])
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            status = answer_status(self.url_from(info_file)) if info_file.exists() else None
            if status == 200:
                self.info = json.loads(info_file.read_text())
                return
            if status in (400, 405, 415, 422):  # up, but does not take the benchmark's request
                raise RuntimeError(f"{self.name} answered the benchmark's request with {status}; see {self.log_path}")
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def url_from(self, info_file: Path) -> str:
        try:
            return json.loads(info_file.read_text()).get("url") or f"http://127.0.0.1:{self.spec['port']}/predict"
        except json.JSONDecodeError:  # being written
            return f"http://127.0.0.1:{self.spec['port']}/predict"

    @property
    def url(self) -> str:
        """What the load goes to: the gRPC endpoint (load_url) for a gRPC row, else the HTTP predict URL."""
        return self.info.get("load_url") or self.info.get("url") or f"http://127.0.0.1:{self.spec['port']}/predict"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def cpu(self):
        return cpu_seconds(self.pids)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to the process this started; what is left of its tree after the timeout gets SIGKILL."""
        if self.process is None:
            return
        tree = self.pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not stop within {timeout_s:.0f} s after SIGTERM; killing its processes")
        for pid in tree:
            if pid != self.process.pid and still_ours(pid):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def still_ours(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def answer_status(url: str) -> int | None:
    """HTTP status of one benchmark request; None when nothing answers."""
    request = urllib.request.Request(url, data=request_body(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_servers(names: list[str], base: dict, workdir: Path, peer_python: str | None, dashboard: bool) -> list[Server]:
    """The servers to measure, by name: rayline, rayline-haproxy, rayline-proxy, rayline-onnx, rayline-grpc,
    litserve, ray-serve, bare."""
    ours = sys.executable
    recipes = {
        "rayline": ("rayline_server.py", ours, {"include_dashboard": dashboard}),
        "rayline-haproxy": ("rayline_server.py", ours, {"include_dashboard": dashboard, "ingress": "haproxy"}),
        "rayline-proxy": ("rayline_server.py", ours, {"include_dashboard": dashboard, "ingress": "proxy"}),
        "rayline-onnx": ("rayline_server.py", ours, {"include_dashboard": dashboard, "runtime": "onnxruntime"}),
        "rayline-grpc": ("rayline_server.py", ours, {"include_dashboard": dashboard, "grpc_port": free_port()}),
        "litserve": ("litserve_server.py", peer_python, {"fast_queue": True}),
        "ray-serve": ("ray_serve_batch.py", ours, {"include_dashboard": dashboard}),
        "bare": ("bare_fastapi.py", ours, {}),
    }
    servers = []
    for name in names:
        script, python, extra = recipes[name]
        spec = {**base, "port": free_port(), "extra": extra}
        servers.append(Server(name, script, python, spec, workdir))
    return servers


def start_all(servers: list[Server]) -> None:
    """One at a time, so start-ups do not fight over the two cores and time out."""
    for server in servers:
        began = time.monotonic()
        server.start()
        server.wait_ready()
        print(f"  {server.name} ready in {time.monotonic() - began:.0f} s: {server.info['config']}", flush=True)
