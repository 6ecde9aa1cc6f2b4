"""Servers a test session starts end with it, even when pytest itself is killed (an interrupted `make test` once
left an MLflow and a moto server listening on their ports, with nothing left to stop them)."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def end_with_parent() -> None:
    """subprocess.Popen's preexec_fn: the kernel sends the child SIGTERM when the thread that started it exits."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
