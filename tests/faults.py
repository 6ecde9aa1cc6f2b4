"""Fault injection for the reliability suite (tests/integration/test_faults_*.py).

Every fault is real: SIGKILL to a process found by its PID, a checkpoint writer frozen while it holds a
file open, a model call that never returns inside a live Serve replica, a node's processes killed like
a machine losing power, a storage mount that fills up or turns read-only.

Other Ray clusters run on this machine (other test sessions, other users), so nothing here finds a
process by name: PIDs come from the test session's own State API (RAY_API_SERVER_ADDRESS points it at
the session's dashboard, see rayline.runtime) or from the process tree of a process the test started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# ---------------------------------------------------------------- processes


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat (R running, S sleeping, T stopped, Z zombie); "" once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    return process_state(pid) not in ("", "Z")


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_tree(root: int) -> list[int]:
    """root and every process it started, directly or not (Ray's workers run in process groups of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return tree


def sigkill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def crash_process_group(process: subprocess.Popen, timeout_s: float = 60) -> list[int]:
    """Kill a driver like a machine losing power: SIGKILL its process group and every process it started.

    An embedded Ray cluster's GCS, raylet and dashboard share the driver's process group, but Ray's
    workers lead groups of their own, so the process tree is taken first and killed as well.
    """
    tree = process_tree(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    sigkill(tree)
    process.wait(timeout=timeout_s)
    wait_until(lambda: not any(alive(pid) for pid in tree), timeout_s, "the crashed processes to exit")
    return tree


def kill_processes_with_env(name: str, value: str) -> list[int]:
    """SIGKILL every process whose environment holds name=value, a value unique to one test's Ray cluster.

    Environments survive the process titles Ray's workers give themselves, so this finds what a crashed
    cluster may have left behind; a test that gave its cluster its own RAY_TMPDIR cleans up with it.
    """
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    sigkill(found)
    return found


# ---------------------------------------------------------------- actors of the test session's cluster


@dataclass(frozen=True)
class Actor:
    name: str
    pid: int


def live_actors(class_name: str) -> list[Actor]:
    """ALIVE actors of one class on the connected cluster, from its State API."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name), ("state", "=", "ALIVE")]
    found = list_actors(filters=filters, raise_on_missing_output=False)
    return [Actor(a.name or "", a.pid) for a in found if a.pid]


def train_worker_pids() -> list[int]:
    return sorted(a.pid for a in live_actors("RayTrainWorker"))


def kill_actor(class_name: str) -> int:
    """SIGKILL the live actor of `class_name` with the highest PID; returns that PID."""
    pids = sorted(a.pid for a in live_actors(class_name))
    assert pids, f"no {class_name} is running"
    sigkill(pids[-1:])
    return pids[-1]


def kill_train_worker() -> int:
    """SIGKILL one Ray Train worker of the (only) running training run; returns its PID."""
    return kill_actor("RayTrainWorker")


@dataclass
class KillOnEpoch:
    """A training run's on_epoch callback that kills once and waits for the restart: it records each epoch
    reported and, at the `after`-th report, calls `kill` and then blocks (seen from the driver, the run only
    pauses) until `group()` is a new set of PIDs: not empty, none of those it held before the kill, and `size`
    of them where given."""

    after: int
    kill: Callable[[], int]
    """SIGKILLs the victim and returns its PID."""
    group: Callable[[], set[int]]
    """The PIDs of the processes the restart replaces."""
    what: str
    """What the wait is for, named in its timeout."""
    size: int | None = None
    seen: list[int] = field(default_factory=list)
    """Each epoch reported, in order."""
    fault: dict[str, object] = field(default_factory=dict)
    """killed: the victim's PID; replaced_in_s: seconds from the kill until the new group was there."""

    def __call__(self, metrics: dict) -> None:
        self.seen.append(int(metrics["epoch"]))
        if len(self.seen) == self.after:
            old = self.group()
            self.fault["killed"], began = self.kill(), time.monotonic()
            wait_until(lambda: self.replaced(old), 180, self.what)
            self.fault["replaced_in_s"] = time.monotonic() - began

    def replaced(self, old: set[int]) -> bool:
        now = self.group()
        return bool(now) and not now & old and (self.size is None or len(now) == self.size)


def serve_replicas(app: str, deployment: str = "ModelServer") -> list[Actor]:
    return live_actors(f"ServeReplica:{app}:{deployment}")


def kill_serve_replica(app: str, deployment: str = "ModelServer") -> int:
    """SIGKILL one replica of a Serve deployment; returns its PID."""
    replicas = serve_replicas(app, deployment)
    assert replicas, f"no replica of {app}/{deployment} is running"
    sigkill([replicas[0].pid])
    return replicas[0].pid


def block_model_calls(app: str, deployment: str = "ModelServer") -> int:
    """Make every forward pass in one replica wait forever, a model call that never returns; returns its PID.

    The replica process stays up and its event loops keep running (so Serve's default health check still
    passes); only `torch.nn.Linear.forward`, which every rayline model calls, is patched in that one process.
    """
    import ray

    # Defined here, not at module level: cloudpickle then ships the function itself to the replica, which
    # cannot import this test module.
    def block_linear_forward(_replica_actor) -> None:
        import threading

        import torch

        never = threading.Event()

        def forward(self, x):
            never.wait()

        torch.nn.Linear.forward = forward

    replica = serve_replicas(app, deployment)[0]
    handle = ray.get_actor(replica.name, namespace="serve")
    ray.get(handle.__ray_call__.remote(block_linear_forward), timeout=60)
    return replica.pid


def disturb_federated_clients(actor, *, delay_s: float = 0.0, fail: bool = False, times: int | None = None) -> None:
    """Make a live federated ClientGroup actor's clients straggle (sleep delay_s before each local update) and/or
    drop out (raise instead of answering), for their next `times` local updates (None: all of them).

    Only that actor process's `_local_update` is replaced; a later call replaces the fault, and
    `disturb_federated_clients(actor)` takes it away. The actor must be idle (calls to it run in turn).
    """
    import ray

    def install(group) -> None:
        import time

        from rayline.federated.client import ClientGroup

        original = ClientGroup._local_update.__get__(group)
        left = [times]

        def local_update(global_vector, round_index, cid):
            if left[0] is None or left[0] > 0:
                left[0] = None if left[0] is None else left[0] - 1
                time.sleep(delay_s)
                if fail:
                    raise RuntimeError(f"client {cid} dropped out (a test fault)")
            return original(global_vector, round_index, cid)

        group._local_update = local_update

    ray.get(actor.__ray_call__.remote(install), timeout=60)


# ---------------------------------------------------------------- files being written


def open_files(pid: int) -> list[Path]:
    fd_dir = Path(f"/proc/{pid}/fd")
    found = []
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                found.append(Path(os.readlink(fd)))
    return found


def files_open_under(pid: int, directory: Path) -> list[Path]:
    return [p for p in open_files(pid) if directory in p.parents]


def freeze_writer(pids: Callable[[], list[int]], directory: Path, timeout_s: float) -> tuple[int, Path]:
    """Wait until one of `pids()` has a file under `directory` open, and SIGSTOP it while it still has.

    Checked again after the stop, so the process is frozen mid-write, not just after it. A local checkpoint
    upload lasts milliseconds, too short for scanning file descriptors alone to catch reliably on a busy
    machine: so every candidate is also frozen the moment a new entry appears under `directory` (a listing is
    cheap), which is when an upload starts. Returns the PID (still stopped: SIGKILL or SIGCONT it) and the
    file it was writing.
    """
    deadline = time.monotonic() + timeout_s
    candidates: list[int] = []
    refreshed = 0.0
    entries = set(os.listdir(directory)) if directory.is_dir() else set()
    while time.monotonic() < deadline:
        if time.monotonic() - refreshed > 2:  # the State API is slow; the file scan must not be
            candidates, refreshed = pids(), time.monotonic()
        now = set(os.listdir(directory)) if directory.is_dir() else set()
        writers = candidates if now - entries else [pid for pid in candidates if files_open_under(pid, directory)]
        entries = now
        if writers:
            caught = catch_writing(writers, directory)
            if caught is not None:
                return caught
        time.sleep(0.001)
    raise TimeoutError(f"no process wrote under {directory} within {timeout_s:.0f} s")


def catch_writing(pids: list[int], directory: Path) -> tuple[int, Path] | None:
    """SIGSTOP every process; keep the first that still has a file under `directory` open with some of it written
    (frozen inside the write, not before its first byte), SIGCONT the rest."""
    caught = None
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        # The stop is delivered asynchronously: look only once the process has stopped.
        wait_until(lambda pid=pid: process_state(pid) in ("T", ""), 10, f"process {pid} to stop", 0.001)
        still_open = [path for path in files_open_under(pid, directory) if written(path)]
        if caught is None and still_open:
            caught = pid, still_open[0]
    for pid in pids:
        if caught is None or pid != caught[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return caught


def written(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes for as long as the block runs (a fault lands between two of their steps)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in pids:
            wait_until(lambda pid=pid: process_state(pid) in ("T", ""), 10, f"process {pid} to stop", 0.001)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


class CheckpointEpochs:
    """The epochs of a Train run's complete checkpoints, for watchers that look every few milliseconds: a folder
    is hashed (verify_checkpoint) until it passes once, then only checked to be still there (pruning removes
    folders; Ray Train never rewrites one under the same name)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.verified: dict[Path, int] = {}

    def complete(self) -> set[int]:
        from rayline.checkpoint import checkpoint_dirs, checkpoint_metrics, is_complete

        found = set()
        for directory in checkpoint_dirs(self.run_dir):
            if directory not in self.verified:
                if not is_complete(directory):
                    continue
                try:
                    self.verified[directory] = int(checkpoint_metrics(directory)["epoch"])
                except (OSError, ValueError, KeyError):  # pruned since it was hashed
                    continue
            found.add(self.verified[directory])
        return found


def after_checkpoint(
    run_dir: Path,
    epoch: int,
    pids: Callable[[], list[int]],
    fault: Callable[[], object],
    timeout_s: float = 600,
    settled: Callable[[], bool] | None = None,
) -> threading.Thread:
    """Start a thread that injects `fault` with the training processes paused, as soon as the checkpoint of
    `epoch` is complete under `run_dir` and before the next one is written.

    The driver hears of an epoch only after the workers have gone on to the next, so a fault injected from
    progress reports can land one checkpoint late; watching the storage and pausing the writers cannot.
    `settled`: what must hold before the fault, e.g. that the Train controller, which polls the workers for their
    reports, has passed an epoch on to the driver. From the first complete checkpoint until it holds, the writers
    run in short slices between pauses: the controller needs them to answer its polls (it cannot while they are
    paused), and a loaded machine can starve it for longer than an epoch takes.
    """
    epochs = CheckpointEpochs(run_dir)

    def watch() -> None:
        workers: list[int] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not workers:
                workers = pids()
            elif epoch in (written := epochs.complete()):
                with paused(workers):
                    fault()
                return
            elif written and settled is not None and not settled():
                with paused(workers):
                    time.sleep(0.05)
            # Finding the workers scans /proc, and they start seconds before their first checkpoint: only the
            # checkpoint needs the short interval.
            time.sleep(0.005 if workers else 0.1)

    thread = threading.Thread(target=watch, name="after-checkpoint", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- storage


def tmpfs_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here (None when it can): mounting needs root with CAP_SYS_ADMIN."""
    probe = Path(f"/tmp/rayline-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
        if done.returncode != 0:
            return f"cannot mount a tmpfs to fill up: {done.stderr.decode().strip() or done.returncode}"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    except OSError as err:
        return f"cannot mount a tmpfs to fill up: {err}"
    finally:
        probe.rmdir()


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A size-limited filesystem at `path` for as long as the block runs."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: a Ray worker may still hold a file open here; the mount goes once it lets go.
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem has no space left; delete the file to free it."""
    ballast = directory / "ballast.bin"
    chunk = b"\0" * (1 << 16)
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    return ballast


# ---------------------------------------------------------------- HTTP load


@dataclass
class LoadReport:
    """What clients saw while a fault happened: every request's final outcome and every retry.

    A retry hides a failed attempt from `failed`, so a test that promises no dropped request asserts
    `retried == 0` as well, and one that allows some says how many and why (`retry_errors` has each).
    """

    requests: int = 0
    failed: int = 0
    """Requests that still failed after their retries."""
    retried: int = 0
    """Attempts that failed and were tried again."""
    timeouts: int = 0
    """Attempts that got no answer within the client's timeout: hangs, as far as a client can tell."""
    latencies_s: list[float] = field(default_factory=list)
    """Wall time of every request, retries included."""
    statuses: Counter = field(default_factory=Counter)
    """Final HTTP status of every request (0: no answer at all)."""
    errors: list[str] = field(default_factory=list)
    """What each failed request finally got."""
    retry_errors: list[str] = field(default_factory=list)
    """What each retried attempt got, in order."""

    @property
    def error_rate(self) -> float:
        return self.failed / max(self.requests, 1)

    @property
    def slowest_s(self) -> float:
        return max(self.latencies_s, default=0.0)

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {self.failed} failed ({self.error_rate:.2%}), {self.retried} retried, "
            f"{self.timeouts} client timeouts, slowest {self.slowest_s:.2f} s, statuses {dict(self.statuses)}; "
            f"first errors: {self.errors[:3]}; first retried attempts: {self.retry_errors[:3]}"
        )


RETRYABLE_STATUS = {500, 502, 503, 504}


async def steady_load(
    url: str,
    body: dict,
    *,
    stop: asyncio.Event,
    concurrency: int = 4,
    timeout_s: float = 10.0,
    retries: int = 3,
    headers: dict[str, str] | None = None,
    report: LoadReport | None = None,
    pause_s: float = 0.0,
) -> LoadReport:
    """Closed-loop clients POSTing `body` to `url` until `stop` is set, each waiting `pause_s` between requests.

    Predict is idempotent, so a connection error, a timeout or a 5xx is retried (after a short pause)
    up to `retries` times; a 4xx is a final answer.
    """
    report = report if report is not None else LoadReport()

    async def one_request(client: httpx.AsyncClient) -> None:
        began = time.monotonic()
        outcome, status = "", 0
        for attempt in range(retries + 1):
            try:
                response = await client.post(url, json=body, headers=headers)
                status = response.status_code
                if status == 200:
                    outcome = ""
                    break
                outcome = f"HTTP {status}: {response.text[:200]}"
                if status not in RETRYABLE_STATUS:
                    break
            except httpx.HTTPError as err:
                status, outcome = 0, f"{type(err).__name__}: {err}"
                if isinstance(err, httpx.TimeoutException):
                    report.timeouts += 1
            if attempt < retries:
                report.retried += 1
                report.retry_errors.append(outcome)
                await asyncio.sleep(0.2 * (attempt + 1))
        report.requests += 1
        report.latencies_s.append(time.monotonic() - began)
        report.statuses[status] += 1
        if outcome:
            report.failed += 1
            report.errors.append(outcome)

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            while not stop.is_set():
                await one_request(client)
                if pause_s:
                    await asyncio.sleep(pause_s)

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return report


class BackgroundLoad:
    """`steady_load` on its own thread and event loop, so a test can inject a fault while clients run.

    with BackgroundLoad(url, body) as load:
        load.wait_for(50)        # requests answered so far
        ...fault...
    load.report
    """

    def __init__(self, url: str, body: dict, **options):
        self.url, self.body, self.options = url, body, options
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.report = LoadReport()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._load())

    async def _load(self) -> None:
        self.report = await steady_load(self.url, self.body, stop=self.stop, report=self.report, **self.options)

    def wait_for(self, requests: int, timeout_s: float = 120) -> None:
        wait_until(lambda: self.report.requests >= requests, timeout_s, f"{requests} answered requests", 0.05)

    def __enter__(self) -> BackgroundLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the load's clients did not stop"


# ---------------------------------------------------------------- Serve apps


def replica_states(app: str, deployment: str = "ModelServer") -> dict[str, int]:
    """How many replicas of a deployment are in each state (STARTING, RUNNING, STOPPING, ...), from
    serve.status(); {} while the app is not deployed."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {str(state): n for state, n in status.deployments[deployment].replica_states.items() if n}


# ---------------------------------------------------------------- a model to serve


TINY_FEATURES = ["x0", "x1", "x2", "x3"]


def register_tiny_model(root: Path, *, name: str = "tiny"):
    """Register an untrained 4-feature, 3-class MLP under `root` as model `name`; returns its ModelVersion.
    No Ray needed."""
    import torch

    from rayline.checkpoint import save_checkpoint
    from rayline.config import validate_config
    from rayline.data.preprocess import NumericStat, Preprocessor
    from rayline.models import build_model
    from rayline.registry import Registry

    config = validate_config(
        {
            "name": name,
            "data": {"source": "unused.csv", "task": "classification", "label": "y", "features": TINY_FEATURES},
            "model": {"kind": "mlp", "hidden_sizes": [8]},
        }
    )
    pre = Preprocessor(
        "classification", "y", [NumericStat(f, 0.0, 1.0) for f in TINY_FEATURES], ["a", "b", "c"], None, None
    )
    torch.manual_seed(0)
    model = build_model(config.model, num_inputs=len(TINY_FEATURES), num_outputs=3)
    checkpoint = root / f"checkpoint-{name}"
    metrics = {"epoch": 0, "val_loss": 1.0}
    save_checkpoint(
        checkpoint,
        model_state=model.state_dict(),
        optimizer_state={},
        epoch=0,
        metrics=metrics,
        history=[metrics],
        preprocessor=pre,
        config=config,
    )
    return Registry(root).register(checkpoint, run_name=name, data_fingerprint="sha256:tiny")
