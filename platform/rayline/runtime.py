"""Connecting to Ray: an embedded local cluster by default, an existing one named by --ray-address or RAY_ADDRESS."""

from __future__ import annotations

import atexit
import fcntl
import functools
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from rayline.errors import RaylineError


class ClusterError(RaylineError, ConnectionError):
    """The Ray cluster to join is not there, or what was given is not a Ray address."""


def quiet_environment(verbose: bool) -> None:
    """Progress bars and INFO noise off unless asked for; must run before Ray is imported by workers."""
    if verbose:
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def connect(*, verbose: bool = False, address: str | None = None) -> str:
    """Join the cluster named by `address`/RAY_ADDRESS, else start an embedded one with the dashboard on.

    The embedded cluster's dashboard is where users watch runs, trials and replicas (the placement groups of
    stopped runs no longer depend on it: rayline.train.placement_groups). Returns the dashboard URL.
    """
    import ray

    quiet_environment(verbose)
    address = address or os.environ.get("RAY_ADDRESS")
    # Checked even when this process is already connected: a wrong address must not pass silently.
    check_reachable(address)
    if not ray.is_initialized():
        # Cluster-wide options may only be given when this process starts the cluster.
        embedded = {"include_dashboard": True, "dashboard_host": "127.0.0.1"} if not address else {}
        if not verbose:
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            # An embedded cluster gets Ray's default token auth; its banner about that is noise here.
            # (Setting RAY_AUTH_MODE now would be too late: Ray reads it when it is imported.)
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        try:
            with nullcontext() if address else starting_an_embedded_cluster():
                if not address:
                    embedded["dashboard_port"] = point_state_api_at_own_dashboard()
                    # Distributed trials start many small-CPU actors at once; the raylet's default cap (one
                    # starting worker per core) serialises their start-up and warns about it on every search.
                    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
                ray.init(
                    # "local", not None: ray.init(None) would join whatever cluster `ray start` last started on
                    # this machine; joining one is asked for with --ray-address (auto, or host:port).
                    address=address or "local",
                    logging_level=logging.INFO if verbose else logging.WARNING,
                    log_to_driver=verbose,
                    **embedded,
                )
                # After Ray's own exit handler, so it runs before it (atexit runs last in, first out).
                atexit.register(stop_autoscaler_monitor)
                if not address and not verbose:
                    stop_log_monitor()
        except ConnectionError as err:  # `auto` with no cluster on this machine, a GCS that went away
            raise ClusterError(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
    wait_for_resources()
    quiet_data(verbose)
    return dashboard_url()


@contextmanager
def starting_an_embedded_cluster() -> Iterator[None]:
    with one_start_at_a_time(), agent_port_chosen_by_the_os():
        yield


@contextmanager
def one_start_at_a_time() -> Iterator[None]:
    """Embedded clusters started on this machine at the same moment (two `rayline` commands) would choose the
    same free dashboard port, and all but one would fail to bind it: each holds this machine-wide lock from
    choosing the port until its dashboard listens on it. Without a lockable file, starts are not ordered."""
    path = os.path.join(tempfile.gettempdir(), f"rayline-embedded-start-{os.getuid()}.lock")
    try:
        lock = open(path, "a")  # noqa: SIM115 - held open for the block below
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def agent_port_chosen_by_the_os() -> Iterator[None]:
    """ray.init starts the node's dashboard agent on port 52365 and has no parameter to change it. With another
    Ray node on the machine already holding that port (a second `rayline` command, a test session's cluster), the
    agent retried the port for about 3.5 s, holding up ray.init, and then ran without its HTTP service: job
    submission and per-node logs on that cluster failed. Port 0 lets the OS choose; the agent publishes the port
    it got, which is where Ray's dashboard and job manager look it up."""
    import ray._private.parameter as parameter

    ray_params = parameter.RayParams
    parameter.RayParams = functools.partial(ray_params, dashboard_agent_listen_port=0)
    try:
        yield
    finally:
        parameter.RayParams = ray_params


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Refuse a dashboard URL, and a host:port nothing listens on, at once: for an unreachable GCS
    ray.init retries for minutes."""
    if not address or address in ("auto", "local") or address.startswith("ray://"):
        return
    given = f"--ray-address / RAY_ADDRESS {address!r}"
    if "://" in address:
        raise ClusterError(
            f"{given} is a URL: it takes the Ray cluster's GCS address, HOST:6379 (or auto on a node of the "
            "cluster); the dashboard URL (HOST:8265) is for `rayline submit` / `rayline jobs` --dashboard"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"{given} is not HOST:PORT (the GCS address, e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or err}): is it up (`ray start --head` "
            "prints its address), and is this its GCS port (6379 by default), not the dashboard's?"
        ) from None


def wait_for_resources(timeout_s: float = 15.0) -> None:
    """Right after start-up the node's CPUs are not yet reported; planners and Ray Data would see zero."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) <= 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def point_state_api_at_own_dashboard(preferred: int = 8265) -> int:
    """Choose the embedded cluster's dashboard port and tell every Ray process started from here about it.

    Ray's State API (ray.util.state, `ray list`, used by Ray Train's own placement-group cleaner where it runs)
    finds the dashboard by RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else by looking for Ray on this machine.
    With a second Ray instance on the machine (another user's session, a test cluster) that look-up fails.
    Raylet-started workers inherit this process's environment, so setting it before ray.init fixes the look-up
    for all of them.
    """
    port = preferred if port_is_free(preferred) else free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


LISTEN_PORTS = range(20000, 32768)
"""Where free_port looks: above Ray's worker ports (10002-19999) and below Linux's ephemeral range (32768 up),
from which the kernel picks the source port of every outgoing connection. A port asked of the kernel (bind to
0) comes from that range, and on a busy node an outgoing connection can take it before the server listens."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server started shortly after."""
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(LISTEN_PORTS)
        if port_is_free(port):
            return port
    with socket.socket() as sock:  # every try taken: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_data(verbose: bool) -> None:
    from ray.data import DataContext
    from ray.data._internal.logging import SessionFileHandler

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if verbose:
        return
    # Ray Data prints an INFO line per executed dataset to the console; its log file keeps them all.
    # The no-free-CPUs warning fires while trainers hold every CPU; rayline runs no Ray Data pipeline then
    # (workers read the prepared files themselves), so it would only alarm people. A task that fails in our code
    # (a refused cell) raises an exception rayline turns into one message; Ray Data's two ERROR lines about
    # it, and the pointer to its log, would come first (the log file still has them).
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.WARNING)
            handler.addFilter(not_noise)


USER_CODE_FAILURE = ("An exception was raised from a task of operator", "Exception occurred in user code")


def not_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if record.exc_info is None and message.startswith(USER_CODE_FAILURE):
        return False  # internal failures log with exc_info and stay
    return not (message.startswith("Progress bars disabled") or "does not have any available CPUs" in message)


def dashboard_url() -> str:
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    if not url:
        return "(dashboard not running)"
    return url if url.startswith("http") else f"http://{url}"


def quiet_serve() -> None:
    """Serve's INFO lines (Started Serve in namespace ...) off; its warnings stay. `import ray.serve` sets up
    its logger at INFO, so this runs after that import, before Serve starts."""
    import ray.serve  # noqa: F401

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def shutdown_serve(timeout_s: float = 30.0) -> None:
    """serve.shutdown(), without the warning stock Serve ends every shutdown with.

    serve.shutdown() asks the controller to shut down with a call that only ends when the controller has
    killed itself. The call inherits the controller's infinite task retries, so its expected failure reaches
    the driver as "Task ServeController.graceful_shutdown failed. There are infinite retries remaining...".
    The same call without retries ends with a plain RayActorError, which is the controller exiting.
    """
    import ray
    from ray.serve.context import _disconnect, _get_global_client

    if not ray.is_initialized():
        return
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    client.shutdown_cached_handles()
    try:
        ray.get(client._controller.graceful_shutdown.options(max_task_retries=0).remote(), timeout=timeout_s)
    except ray.exceptions.RayActorError:
        pass  # the controller exited once everything was down
    except ray.exceptions.GetTimeoutError:
        logging.getLogger(__name__).warning("Serve's controller did not shut down within %g s", timeout_s)
    client._shutdown = True
    _disconnect()


def disconnect() -> None:
    """Shut Serve down, then Ray (and with it the embedded cluster's processes, when this process started it)."""
    import ray

    if ray.is_initialized():
        shutdown_serve()
        stop_autoscaler_monitor()
        ray.shutdown()


def stop_autoscaler_monitor() -> None:
    """SIGKILL the autoscaler monitor of the cluster this process started (nothing when it joined one).

    ray.shutdown() stops the cluster's processes one by one, each with a SIGTERM and up to a second to exit. The
    monitor's SIGTERM handler reports to the GCS, which is stopped before it, so it always uses the whole second
    and is then SIGKILLed anyway: a second added to every command's exit. Killed first, it is skipped as already
    gone. It holds no state (an embedded cluster has no nodes to scale)."""
    kill_own_cluster_process("monitor")


def stop_log_monitor() -> None:
    """SIGKILL the log monitor of the cluster this process started (nothing when it joined one), for a driver
    that does not print its workers' output (log_to_driver off: rayline without --verbose, the test suite).

    It only tails every Ray process's log files to publish their lines for drivers that print them, and it
    rescans the log directory ten times a second: its cost grows with every worker the cluster has started
    (25 CPU-s, 2% of a core, over a 19-minute test session). Log files are still written, and read by the
    dashboard and `ray logs` without it; ray.shutdown() skips it as already gone."""
    kill_own_cluster_process("log_monitor")


def kill_own_cluster_process(kind: str) -> None:
    """SIGKILL the processes of this kind (Ray's process-type names) of the cluster this process started."""
    from ray._private import worker

    node = worker._global_node
    for info in node.all_processes.get(kind, []) if node is not None else []:
        if info.process.poll() is None:
            info.process.kill()
            info.process.wait(timeout=10)
