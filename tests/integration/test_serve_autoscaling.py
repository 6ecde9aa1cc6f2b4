"""Autoscaling over real HTTP on the session cluster: load on a deployment of 1 to 2 replicas adds one, and
taking the load away removes it again, with every request of both transitions answered 200."""

from __future__ import annotations

import time

import pytest

from faults import BackgroundLoad, register_tiny_model, replica_states, wait_until
from rayline.config import ServeConfig
from rayline.serve.control import wait_until_serving

PORT = 8133
APP = "autoscale"
ROW = {"rows": [[0.1, 0.2, 0.3, 0.4]]}
TARGET_ONGOING = 2
HEAVY_CLIENTS = 6
"""Closed-loop clients of the load phase: about 6 requests in flight against a target of 2 per replica asks
for 3 replicas, capped at max_replicas=2."""
LIGHT_PAUSE_S = 0.05
"""The load kept on while the extra replica goes: one client that pauses between requests, well under the
target of one replica, so that the scale-down is not waited out on an idle app (where no request could fail)."""
SCALE_TIMEOUT_S = 90
"""Serve's autoscaler acts on the mean load of the last look_back_period_s, reported by replicas every 10 s, so
each transition takes 10-20 s here."""

SERVE = ServeConfig(
    port=PORT,
    route_prefix=f"/{APP}",
    app_name=APP,
    cpus_per_replica=0.25,
    # Each pass of several rows waits 0.2 s for more: concurrent requests stay in flight inside the replica
    # (queued for a batch), which is the load the autoscaler measures, without a model that burns the cores.
    max_batch_size=64,
    batch_wait_timeout_s=0.2,
    autoscaling={
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": TARGET_ONGOING,
        "upscale_delay_s": 1,
        "downscale_delay_s": 2,
        "look_back_period_s": 12,
    },
)


@pytest.fixture(scope="module")
def autoscaled(ray_cluster, tmp_path_factory):
    from rayline.serve import deploy, shutdown

    root = tmp_path_factory.mktemp("serve-autoscaling")
    register_tiny_model(root)
    url = deploy(str(root), serve_cfg=SERVE, wait=False)
    wait_until_serving(APP, url, 180)
    yield url
    shutdown()


def running(states: dict[str, int], n: int) -> bool:
    """Exactly n replicas, all RUNNING: none starting, none still stopping."""
    return states == {"RUNNING": n}


def test_load_adds_a_replica_and_its_removal_takes_it_away_without_a_failed_request(autoscaled):
    url = f"{autoscaled}/predict"
    assert running(replica_states(APP), 1), replica_states(APP)

    began = time.monotonic()
    with BackgroundLoad(url, ROW, concurrency=HEAVY_CLIENTS, timeout_s=30, retries=2) as heavy:
        wait_until(lambda: running(replica_states(APP), 2), SCALE_TIMEOUT_S, "a second RUNNING replica", 0.5)
        up_s = time.monotonic() - began
        heavy.wait_for(heavy.report.requests + 20)  # both replicas answer load for a moment

    began = time.monotonic()
    with BackgroundLoad(url, ROW, concurrency=1, pause_s=LIGHT_PAUSE_S, timeout_s=30, retries=2) as light:
        wait_until(lambda: running(replica_states(APP), 1), SCALE_TIMEOUT_S, "one RUNNING replica again", 0.5)
        down_s = time.monotonic() - began
        light.wait_for(light.report.requests + 20)  # and the one left goes on answering
    print(f"scaled up in {up_s:.1f} s under {heavy.report.summary()}")
    print(f"scaled down in {down_s:.1f} s under {light.report.summary()}")

    # Clients may retry (retries=2), so a dropped request would show as a retry, not a failure: both must be 0.
    for phase, report in (("scale-up", heavy.report), ("scale-down", light.report)):
        assert report.requests > 0 and report.statuses == {200: report.requests}, f"{phase}: {report.summary()}"
        assert report.failed == 0 and report.retried == 0 and report.timeouts == 0, f"{phase}: {report.summary()}"
