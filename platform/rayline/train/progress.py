"""Epoch reports from the Train controller to the driver, through a Ray queue that later runs of the same driver
reuse.

This module is loaded by every run's Train controller (it unpickles the callback), so it imports Ray only: a
torch import here would cost every run's controller about a second and a half of CPU."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ray
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


class EpochProgress:
    """One run's epoch reports handed to `on_epoch` on the driver, in order, as the controller puts them in a queue.

    The queue is an actor, and an actor's process costs about a CPU-second to start: a run takes a spare queue
    that this driver's earlier runs on the same cluster left, and leaves its own behind for the next one when it
    ends normally (a driver that runs many, like a test session or a notebook, starts one)."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None], actor_options: dict[str, Any]):
        self.on_epoch = on_epoch
        self.queue = borrow_queue(actor_options)
        self.stop = threading.Event()
        self.printer = threading.Thread(target=drain, args=(self.queue, on_epoch, self.stop), daemon=True)
        self.printer.start()

    def callback(self) -> ProgressCallback:
        return ProgressCallback(self.queue)

    def finish(self, run_ended_normally: bool) -> None:
        """Hand over what the printer has not taken yet (fit() returns after the controller's last put, so it is
        all in the queue), then keep the queue for the next run, or stop it after a run that did not end
        normally (its controller might still put)."""
        self.stop.set()
        self.printer.join()
        leftovers = remaining(self.queue)
        for metrics in leftovers or []:
            self.on_epoch(metrics)
        if not (run_ended_normally and leftovers is not None and keep_spare(self.queue)):
            self.queue.shutdown()


_spares: dict[tuple[str, str], Any] = {}
"""The empty progress queue a run that ended left, by the cluster connection it belongs to: one at most, so runs
that ran at the same time do not leave idle actors behind."""
_spares_lock = threading.Lock()


def keep_spare(queue) -> bool:
    """Keep `queue` for the next run unless a spare is kept already; whether it was kept."""
    with _spares_lock:
        return _spares.setdefault(connection_key(), queue) is queue


def connection_key() -> tuple[str, str]:
    """This driver's node and job: a queue is an actor of one job on one cluster, and a process that reconnects
    (to a new cluster, or as a new job) cannot use the ones it had."""
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def borrow_queue(actor_options: dict[str, Any]):
    """A spare queue of this driver that is still alive and empty (its node may have died, or someone killed
    it since), else a new one."""
    from ray.util.queue import Queue

    with _spares_lock:
        spare = _spares.pop(connection_key(), None)
    if spare is not None:
        try:
            if spare.qsize() == 0:
                return spare
            spare.shutdown()  # alive but not empty: never handed to a run that would read another's epochs
        except RayActorError:
            pass
    return Queue(actor_options=actor_options)


def drain(queue, on_epoch: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    from ray.util.queue import Empty

    while not stop.is_set():
        try:
            on_epoch(queue.get(timeout=0.5))
        except Empty:
            continue
        except RayActorError:
            return  # the queue is gone: no more progress, training itself goes on


def remaining(queue) -> list[dict[str, Any]] | None:
    """What is left in the queue; None when the queue is gone."""
    try:
        return queue.get_nowait_batch(queue.qsize())
    except RayActorError:
        return None
