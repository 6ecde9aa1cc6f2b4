"""The placement-group janitor (rayline.train.janitor) on the session cluster, apart from any run: it
removes the group of a controller the GCS does not report alive, leaves a live one's alone, and leaves by itself
once it has watched nothing for its idle time, all without the State API. A real run whose controller is killed:
test_faults_train.py."""

from __future__ import annotations

import pytest

from faults import wait_until

pytestmark = pytest.mark.slow


def reserved(placement_group) -> bool:
    import ray

    return ray.util.placement_group_table(placement_group)["state"] != "REMOVED"


def test_the_janitor_frees_only_a_dead_controllers_group_and_then_leaves(ray_cluster):
    import ray
    from ray.exceptions import RayActorError
    from ray.util.placement_group import placement_group, remove_placement_group

    from rayline.train.janitor import PlacementGroupJanitor

    @ray.remote(num_cpus=0)
    class Controller:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    # The State API's address points at a closed port: the janitor must not need it (nor the dashboard).
    no_state_api = {"env_vars": {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9"}}
    janitor = (
        ray.remote(PlacementGroupJanitor)
        .options(num_cpus=0, max_concurrency=4, runtime_env=no_state_api)
        .remote(0.2, 3.0)
    )
    alive, doomed = Controller.remote(), Controller.remote()
    kept, orphaned = placement_group([{"CPU": 0.01}]), placement_group([{"CPU": 0.01}])
    ray.get([kept.ready(), orphaned.ready()])
    alive_id, doomed_id = ray.get([alive.actor_id.remote(), doomed.actor_id.remote()])
    assert ray.get(janitor.watch.remote(alive_id, kept)) and ray.get(janitor.watch.remote(doomed_id, orphaned))

    ray.kill(doomed)
    wait_until(lambda: not reserved(orphaned), 15, "the dead controller's placement group removed")
    assert ray.get(janitor.watched.remote()) == [alive_id]
    assert reserved(kept), "a live controller's group is left alone"

    ray.get(janitor.forget.remote(alive_id))  # as a controller that ends normally does
    remove_placement_group(kept)

    def left() -> bool:
        try:
            ray.get(janitor.watched.remote(), timeout=5)
            return False
        except RayActorError:
            return True

    wait_until(left, 30, "the idle janitor to leave")
    ray.kill(alive)
