"""Connecting to Ray: an embedded local cluster by default, an existing one when --address or RAY_ADDRESS says so."""

from __future__ import annotations

import logging
import os
import socket
import time


def quiet_environment(verbose: bool) -> None:
    """Progress bars and INFO noise off unless asked for; must run before Ray is imported by workers."""
    if verbose:
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def connect(*, verbose: bool = False, address: str | None = None) -> str:
    """Join the cluster named by `address`/RAY_ADDRESS, else start an embedded one with the dashboard on.

    The dashboard is not optional: Ray Train frees a stopped run's placement group through the
    State API it serves, and without it stopped Tune trials keep their CPUs forever.
    Returns the dashboard URL.
    """
    import ray

    quiet_environment(verbose)
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        # Cluster-wide options may only be given when this process starts the cluster.
        embedded = {"include_dashboard": True, "dashboard_host": "127.0.0.1"} if not address else {}
        if not verbose:
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            # An embedded cluster gets Ray's default token auth; its banner about that is noise here.
            # (Setting RAY_AUTH_MODE now would be too late: Ray reads it when it is imported.)
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        if not address:
            embedded["dashboard_port"] = point_state_api_at_own_dashboard()
            # Distributed trials start many small-CPU actors at once; the raylet's default cap (one
            # starting worker per core) serialises their start-up and warns about it on every search.
            os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
        ray.init(
            # "local", not None: ray.init(None) would join whatever cluster `ray start` last started on
            # this machine; joining one is asked for with --address (auto, or host:port).
            address=address or "local",
            logging_level=logging.INFO if verbose else logging.WARNING,
            log_to_driver=verbose,
            **embedded,
        )
    wait_for_resources()
    quiet_data(verbose)
    return dashboard_url()


def wait_for_resources(timeout_s: float = 15.0) -> None:
    """Right after start-up the node's CPUs are not yet reported; planners and Ray Data would see zero."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) <= 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def point_state_api_at_own_dashboard(preferred: int = 8265) -> int:
    """Choose the embedded cluster's dashboard port and tell every Ray process started from here about it.

    Ray Train's PlacementGroupCleaner finds the State API by RAY_API_SERVER_ADDRESS, else RAY_ADDRESS,
    else by looking for Ray on this machine. With a second Ray instance on the machine (another
    user's session, a test cluster) that look-up fails, the cleaner never frees a stopped trial's
    workers, and the next trial waits for CPUs that never come. Raylet-started workers inherit this
    process's environment, so setting it before ray.init fixes the look-up for all of them.
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


def free_port() -> int:
    with socket.socket() as sock:
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
    # The no-free-CPUs warning fires while trainers hold every CPU; rayline's datasets are materialized
    # before training for exactly that reason, so it would only alarm people. A task that fails in our code
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


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
