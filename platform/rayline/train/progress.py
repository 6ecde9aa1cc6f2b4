"""Epoch reports from the Train controller to the driver, through a Ray queue.

This module is loaded by every run's Train controller (it unpickles the callback), so it imports Ray only: a
torch import here would cost every run's controller about a second and a half of CPU."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError
from ray.train.v2.api.callback import UserCallback


class ProgressCallback(UserCallback):
    """Runs on the Train controller; forwards rank-0 metrics to the driver through a Ray queue.

    Progress is a convenience: if the queue is lost (its node died), reports are dropped and training goes on.
    """

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        if self.queue is None:
            return
        try:
            self.queue.put(dict(metrics[0]))
        except RayActorError:
            self.queue = None


def drain(queue, on_epoch: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    from ray.util.queue import Empty

    while not stop.is_set():
        try:
            on_epoch(queue.get(timeout=0.5))
        except Empty:
            continue
        except RayActorError:
            return  # the queue is gone: no more progress, training itself goes on


def remaining(queue) -> list[dict[str, Any]]:
    try:
        return queue.get_nowait_batch(queue.qsize())
    except RayActorError:
        return []
