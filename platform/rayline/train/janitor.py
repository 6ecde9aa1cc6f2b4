"""The cluster's placement-group janitor: one long-lived actor that removes the placement group of every Train
controller that died without removing it (rayline.train.placement_groups hands it each run's group).

Imports Ray's core only, not Ray Train: the janitor's own process starts the sooner, and a run's first worker
group, which registers with it before its first step, waits the less for it.
"""

from __future__ import annotations

import logging
import threading
import time

import ray
from ray._common.constants import HEAD_NODE_RESOURCE_NAME
from ray.util.placement_group import PlacementGroup, remove_placement_group

logger = logging.getLogger(__name__)

JANITOR_NAME = "rayline-placement-group-janitor"
NAMESPACE = "rayline"
CHECK_INTERVAL_S = 1.0
IDLE_EXIT_S = 300.0


class PlacementGroupJanitor:
    """Maps each watched Train controller (actor id) to its workers' current placement group, and removes the
    group of a controller the GCS reports dead."""

    def __init__(self, check_interval_s: float = CHECK_INTERVAL_S, idle_exit_s: float = IDLE_EXIT_S):
        self._check_interval_s, self._idle_exit_s = check_interval_s, idle_exit_s
        self._watched: dict[str, PlacementGroup] = {}
        self._lock = threading.Lock()
        self._running = self._closing = False

    def watch(self, controller_id: str, placement_group: PlacementGroup) -> bool:
        """Watch a controller's latest placement group; False when this janitor is leaving (ask its successor)."""
        with self._lock:
            if self._closing:
                return False
            self._watched[controller_id] = placement_group
            start = not self._running
            self._running = True
        if start:  # the loop is an actor method of its own, so that it may end the actor when idle
            ray.get_runtime_context().current_actor.run.remote()
        return True

    def forget(self, controller_id: str) -> None:
        """The controller ended normally and removed its placement group itself."""
        with self._lock:
            self._watched.pop(controller_id, None)

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._watched)

    def run(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(self._check_interval_s)
            with self._lock:
                watched = list(self._watched.items())
                if not watched and time.monotonic() - idle_since > self._idle_exit_s:
                    self._closing = True
                    break
            if watched:
                idle_since = time.monotonic()
            for controller_id, placement_group in watched:
                if controller_state(controller_id) != "DEAD":
                    continue
                remove_if_reserved(placement_group, controller_id)
                with self._lock:
                    if self._watched.get(controller_id) is placement_group:
                        del self._watched[controller_id]
        ray.actor.exit_actor()


def controller_state(actor_id: str) -> str:
    """The actor's state as the GCS holds it ("ALIVE", "RESTARTING", "DEAD", ...): DEAD when the GCS does not know
    the actor, UNKNOWN when the GCS could not be asked (the janitor then leaves its group alone until next time)."""
    from ray._private.state import actors

    try:
        return actors(actor_id=actor_id).get("State", "DEAD")
    except Exception as err:  # the GCS briefly unreachable: ask again on the next check
        logger.warning("could not read Train controller %s's state from the GCS: %s", actor_id, err)
        return "UNKNOWN"


def remove_if_reserved(placement_group: PlacementGroup, controller_id: str) -> None:
    try:
        if ray.util.placement_group_table(placement_group).get("state", "REMOVED") == "REMOVED":
            return
        logger.warning("Train controller %s died; removing its placement group %s", controller_id, placement_group.id)
        remove_placement_group(placement_group)
    except Exception as err:
        logger.warning("could not remove placement group %s: %s", placement_group.id, err)


def janitor():
    """The cluster's janitor, started on the head node if none runs."""
    return (
        ray.remote(PlacementGroupJanitor)
        .options(
            name=JANITOR_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=4,  # run() never returns while runs are watched
            resources={HEAD_NODE_RESOURCE_NAME: 0.001},
            scheduling_strategy="DEFAULT",  # not in the placement group of the Tune trial that may start it
        )
        .remote()
    )
