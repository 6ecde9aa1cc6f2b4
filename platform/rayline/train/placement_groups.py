"""One placement-group janitor per cluster, in place of the cleaner actor Ray Train starts for every run.

A run's workers hold a placement group that its Train controller removes when it ends. A controller that dies
instead (its Tune trial stopped by ASHA, its driver killed) leaves the group reserved, and nothing else would
free those CPUs. Ray Train 2.60 starts a detached PlacementGroupCleaner actor per run for this: one more process
started with every run and every Tune trial (about 1.4 CPU-seconds on this machine), which the run waits for
before its first step, and which asks the dashboard's State API every second whether its controller lives.

The janitor does the same for every run on the cluster from one long-lived actor, and reads the controllers'
states from the GCS directly, so no run depends on the dashboard, and only a cluster's first run waits for its
process to start (begun with that run's controller). It leaves by itself after IDLE_EXIT_S without a run to
watch, and the next run starts it again (rayline.train.janitor).
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

from rayline.train.janitor import JANITOR_NAME, NAMESPACE, janitor

logger = logging.getLogger(__name__)

REGISTER_ATTEMPTS = 20
REGISTER_TIMEOUT_S = 30.0


class PlacementGroupJanitorCallback(ControllerCallback, WorkerGroupCallback):
    """Runs in the Train controller: hands each worker group's placement group to the janitor, and takes it back
    when the controller ends normally (the controller then removes the group itself)."""

    def __init__(self):
        self._controller_id: str | None = None

    def after_controller_start(self, train_run_context) -> None:
        self._controller_id = ray.get_runtime_context().get_actor_id()
        # Started now (if none runs), its process starts beside the workers' instead of after them: the worker
        # group registers with it before the run's first step. Only a head start: registering tries again.
        try:
            janitor()
        except Exception as err:
            logger.debug("placement-group janitor not started early: %s", err)

    def after_worker_group_start(self, worker_group) -> None:
        placement_group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        for _ in range(REGISTER_ATTEMPTS):
            try:
                watching = janitor().watch.remote(self._controller_id, placement_group)
                if ray.get(watching, timeout=REGISTER_TIMEOUT_S):
                    return
            except RayActorError:
                pass  # the janitor left between the lookup and the call: the next lookup starts another
            except GetTimeoutError:
                break  # a janitor the cluster cannot place must not hold up the run's start
            time.sleep(0.1)
        logger.warning(
            "no placement-group janitor took placement group %s: if this run's controller dies, its workers' "
            "CPUs stay reserved until the cluster stops",
            placement_group.id,
        )

    async def before_controller_shutdown(self):
        self._forget()

    def before_controller_abort(self):
        self._forget()

    def _forget(self) -> None:
        if self._controller_id is None:
            return
        try:
            ray.get(ray.get_actor(JANITOR_NAME, namespace=NAMESPACE).forget.remote(self._controller_id), timeout=10)
        except Exception as err:  # no janitor: nothing watches this controller
            logger.debug("janitor not told that controller %s ended: %s", self._controller_id, err)
