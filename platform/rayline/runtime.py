"""Connecting to Ray: an embedded local cluster by default, an existing one when RAY_ADDRESS is set."""

from __future__ import annotations

import logging
import os


def quiet_environment(verbose: bool) -> None:
    """Progress bars and INFO noise off unless asked for; must run before Ray is imported by workers."""
    if verbose:
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


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
            # An embedded cluster gets Ray's default token auth; its banner about that is noise here.
            # (Setting RAY_AUTH_MODE now would be too late: Ray reads it when it is imported.)
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        ray.init(
            address=address,
            logging_level=logging.INFO if verbose else logging.WARNING,
            log_to_driver=verbose,
            **embedded,
        )
    quiet_data(verbose)
    return dashboard_url()


def quiet_data(verbose: bool) -> None:
    from ray.data import DataContext
    from ray.data._internal.logging import SessionFileHandler

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if verbose:
        return
    # Ray Data prints an INFO line per executed dataset to the console; its log file keeps them all.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.WARNING)
            handler.addFilter(lambda record: not record.getMessage().startswith("Progress bars disabled"))


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
