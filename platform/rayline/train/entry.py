"""The function Ray Train runs on every worker, importable without torch.

The trainer pickles its loop function by reference, so whatever module holds it is imported by the driver that
builds the trainer (every run, every Tune trial). The loop itself (loop.py) imports torch, models and strategies:
about a CPU-second that only the workers need.
"""

from __future__ import annotations

from typing import Any


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs rayline.train.loop.train_loop_per_worker on the worker (its docstring says what it returns)."""
    from rayline.train.loop import train_loop_per_worker as run

    return run(loop_config)
