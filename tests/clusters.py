"""Test helpers: Ray clusters started with `ray start` on this machine, and an sshd on 127.0.0.1.

Other Ray instances run on this machine (the shared test cluster, other sessions), so:
- every process is stopped by the process group or PID it started, never by name and never
  with `ray stop`, which ends every Ray process on the machine;
- every port is chosen here (Ray's defaults 6379, 8265, 10001, 52365 would collide);
- every cluster gets its own short --temp-dir, so `ray start` does not overwrite
  /tmp/ray/ray_current_cluster, which a plain `ray.init()` anywhere on the machine would join;
- every node exports RAY_API_SERVER_ADDRESS, so Ray Train's placement-group cleaner finds this
  cluster's State API instead of scanning the machine (see rayline.runtime).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from http_client import http
from rayline.runtime import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class RayNode:
    process: subprocess.Popen
    """`ray start --block`, leader of its own process group."""
    metrics_port: int
    log: Path


@dataclass
class RayCluster:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    token_path: Path | None
    nodes: list[RayNode] = field(default_factory=list)
    node_env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every `ray start` (Ray system settings such as RAY_health_check_period_ms)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a process that talks to this cluster (driver, CLI, job client)."""
        env = {**os.environ, **auth_env(self.token_path), "RAY_ADDRESS": self.address, **extra}
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        env["RAYLINE_TEST_CLUSTER"] = str(self.temp_dir)  # cluster.stop() ends this client too
        env["RAY_metrics_report_interval_ms"] = "2000"
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("RAY_DASHBOARD_ADDRESS", None)
        return env

    def auth_headers(self) -> dict[str, str]:
        if self.token_path is None:
            return {}
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def add_nodes(self, count: int, *, num_cpus: int) -> None:
        """`count` worker nodes, one after another. Started together, each `ray start` with its raylet, dashboard
        agent and runtime-env agent competes for the same 2 cores, and a raylet that has not registered with the
        GCS within Ray's fixed 30 s (node.py, not configurable) fails its `ray start`: seen for one of three
        nodes twice in a row on a quiet machine. One at a time, each joins in seconds."""
        for _ in range(count):
            self.add_node(num_cpus=num_cpus)

    def add_node(self, *, num_cpus: int, resources: dict[str, float] | None = None, tries: int = 2) -> RayNode:
        expected = len(self.nodes) + 1
        for attempt in range(1, tries + 1):
            node = start_node(self, head=not self.nodes, num_cpus=num_cpus, resources=resources or {})
            try:
                wait_for(lambda: self.alive_nodes() >= expected, f"node {expected} to join", node)
            except RuntimeError:
                # `ray start` gives its raylet 30 s to register; a busy 2-core machine can miss that once.
                stop_process_group(node.process)
                if attempt == tries:
                    raise
                continue
            self.nodes.append(node)
            return node
        raise AssertionError("unreachable")

    def get(self, path: str):
        """GET a dashboard endpoint with this cluster's token; the parsed JSON."""
        response = http.get(f"{self.dashboard_url}{path}", headers=self.auth_headers(), timeout=10)
        response.raise_for_status()
        return response.json()

    def node_ids(self) -> set[str]:
        summary = self.get("/nodes?view=summary")["data"]["summary"]
        return {n["raylet"]["nodeId"] for n in summary if n["raylet"]["state"] == "ALIVE"}

    def alive_nodes(self) -> int:
        try:
            return len(self.node_ids())
        except (httpx.HTTPError, KeyError, ValueError):
            return 0

    def stop(self) -> None:
        stop_process_groups([node.process for node in reversed(self.nodes)])
        # Job drivers run in sessions of their own; they, like every process the nodes started,
        # inherited the marker.
        kill_marked_processes(self.marker)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def marker(self) -> str:
        """An environment entry every process of this cluster inherits, and no other process has."""
        return f"RAYLINE_TEST_CLUSTER={self.temp_dir}"


def auth_env(token_path: Path | None) -> dict[str, str]:
    if token_path is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def start_cluster(
    *,
    num_cpus: int = 2,
    resources: dict[str, float] | None = None,
    token: bool = True,
    node_env: dict[str, str] | None = None,
) -> RayCluster:
    """A head node on 127.0.0.1 with its own ports, temp dir and (by default) its own auth token."""
    # Unix socket paths live under the temp dir and must stay short: no pytest tmp_path here.
    temp_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    token_path = None
    if token:
        token_path = temp_dir / "auth_token"
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
    cluster = RayCluster(temp_dir, gcs_port=free_port(), dashboard_port=free_port(), token_path=token_path)
    cluster.node_env.update(node_env or {})
    try:
        cluster.add_node(num_cpus=num_cpus, resources=resources)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def worker_port_block(*taken: int) -> int:
    """The first of 100 ports for a node's workers (--min-worker-port, --max-worker-port), clear of `taken`, the
    node's other ports: free_port picks those from the same range, and Ray refuses to start when one falls inside."""
    while True:
        first = random.randrange(20000, 30000, 100)
        if not any(first <= port < first + 100 for port in taken):
            return first


def start_node(cluster: RayCluster, *, head: bool, num_cpus: int, resources: dict[str, float]) -> RayNode:
    metrics_port, agent_port, client_port = free_port(), free_port(), free_port()
    worker_ports = worker_port_block(metrics_port, agent_port, client_port, cluster.gcs_port, cluster.dashboard_port)
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={cluster.temp_dir}",
        f"--num-cpus={num_cpus}",
        f"--resources={json.dumps(resources)}",
        "--object-store-memory=268435456",
        f"--metrics-export-port={metrics_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--min-worker-port={worker_ports}",
        f"--max-worker-port={worker_ports + 99}",
    ]
    if head:
        command += [
            "--head",
            f"--port={cluster.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={cluster.dashboard_port}",
            f"--ray-client-server-port={client_port}",
        ]
    else:
        command.append(f"--address={cluster.address}")
    env = {**os.environ, **auth_env(cluster.token_path)}
    env["RAY_API_SERVER_ADDRESS"] = cluster.dashboard_url
    env["RAYLINE_TEST_CLUSTER"] = str(cluster.temp_dir)
    # Trials start many small-CPU actors at once; the raylet's default (one start per core) serialises them.
    env["RAY_worker_maximum_startup_concurrency"] = "8"
    env["RAY_metrics_report_interval_ms"] = "2000"  # tests read metrics seconds after they are set
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(cluster.node_env)
    for name in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS"):
        env.pop(name, None)
    log = cluster.temp_dir / f"node-{len(list(cluster.temp_dir.glob('node-*.log')))}.log"  # one per `ray start`
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return RayNode(process, metrics_port, log)


def wait_for(ready, what: str, node: RayNode | None = None, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if node is not None and node.process.poll() is not None:
            raise RuntimeError(f"`ray start` exited while waiting for {what}:\n{node.log.read_text()[-3000:]}")
        time.sleep(0.5)
    tail = node.log.read_text()[-3000:] if node is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def stop_process_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the group `ray start --block` (or sshd) leads, then SIGKILL whatever is left of it."""
    stop_process_groups([process], grace)


def stop_process_groups(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    """stop_process_group for several groups at once: one grace period for all of them, not one each."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def kill_marked_processes(marker: str) -> None:
    """SIGKILL every process whose environment holds `marker` (an entry unique to one test cluster)."""
    entry = marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def read_metrics(port: int) -> str:
    """The Prometheus text a node's metrics agent exports (no auth: Ray does not cover this port)."""
    try:
        return http.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in Prometheus text."""
    samples = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            samples.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)), float(value)))
    return samples


def wait_for_samples(ports: int | list[int], name: str, ready, timeout: float = 60.0) -> list:
    """Poll nodes' metrics until ready(samples of `name` from all of them) holds; gauges refresh every few seconds."""
    ports = [ports] if isinstance(ports, int) else ports
    deadline = time.monotonic() + timeout
    while True:
        samples = [sample for port in ports for sample in metric_samples(read_metrics(port), name)]
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


class Lines:
    """Collects a process's output lines on a thread, so a test can wait for one without blocking on the pipe."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 300.0) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if line.startswith(prefix)), None)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and found() is None and self.process.poll() is None:
            time.sleep(0.2)
        self.thread.join(timeout=1 if self.process.poll() is not None else 0)
        if found() is None:
            raise AssertionError(f"no line starting {prefix!r}; output:\n" + "\n".join(self.lines[-60:]))
        return found()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# ---------------------------------------------------------------- sshd on 127.0.0.1, for the cluster launcher

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port 22
HostKey {base}/host_ed25519
PidFile {base}/sshd.pid
AuthorizedKeysFile {base}/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
ForceCommand {base}/session.sh
"""

# Every session of this sshd gets a throw-away HOME, so what the launcher writes to `~` (the project
# copy, ray_bootstrap_config.yaml, the submitted script, .bashrc) never touches root's real home,
# and a marker that everything started over SSH (Ray nodes, drivers) inherits, to be stopped by.
SESSION = """\
#!/bin/sh
export HOME={home} RAYLINE_TEST_SSHD={base}
cd "$HOME"
exec /bin/bash -c "${{SSH_ORIGINAL_COMMAND:-exec /bin/bash --login}}"
"""


@dataclass
class Sshd:
    process: subprocess.Popen
    base: Path
    home: Path
    """The HOME of every session."""
    key: Path
    """Private key of the throw-away pair that logs in as root."""

    def stop(self) -> None:
        stop_process_group(self.process, grace=5)
        kill_marked_processes(f"RAYLINE_TEST_SSHD={self.base}")


def sshd_unavailable() -> str | None:
    """Why an sshd on 127.0.0.1:22 cannot run here, or None. Installs openssh-server and rsync if missing."""
    if os.geteuid() != 0:
        return "the launcher test runs sshd as root on 127.0.0.1:22 (ray up has no SSH port setting)"
    tools = [shutil.which("sshd") or Path("/usr/sbin/sshd").exists(), *map(shutil.which, ("ssh", "rsync"))]
    if not all(tools):
        reason = apt_install("openssh-server", "openssh-client", "rsync")
        if reason:
            return reason
    from rayline.runtime import port_is_free

    if not port_is_free(22):
        return "port 22 on 127.0.0.1 is taken; the cluster launcher can only reach SSH on port 22"
    return None


def apt_install(*packages: str) -> str | None:
    if not shutil.which("apt-get"):
        return f"{', '.join(packages)} missing and no apt-get to install them"
    # RUNLEVEL=1: install only; Debian would otherwise start a system sshd on port 22.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr[-500:]}"
    return None


def start_sshd(base: Path, home: Path) -> Sshd:
    base.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    key = base / "id_ed25519"
    for path in (base / "host_ed25519", key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    (base / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (base / "sshd_config").write_text(SSHD_CONFIG.format(base=base))
    session = base / "session.sh"
    session.write_text(SESSION.format(home=home, base=base))
    session.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    log = (base / "sshd.log").open("wb")
    command = [sshd, "-D", "-e", "-f", str(base / "sshd_config")]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Sshd(process, base, home, key)
    probe = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    probe += ["-o", "BatchMode=yes", "root@127.0.0.1", "echo ok"]

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(base / 'sshd.log').read_text()[-2000:]}")
        return subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "ok"

    wait_for(answers, "sshd on 127.0.0.1:22", timeout=20)
    return server
