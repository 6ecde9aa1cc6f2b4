"""What the driver asks Ray Train for, per config (no cluster needed)."""

import pytest

from rayline.config import TrainConfig
from rayline.train.driver import dataset_config, scaling_config, torch_config


def test_use_gpu_selects_nccl_and_a_gpu_per_worker():
    train = TrainConfig(use_gpu=True, num_workers=4, cpus_per_worker=2)
    assert torch_config(train).backend == "nccl"
    scaling = scaling_config(train)
    assert scaling.use_gpu and scaling.num_workers == 4
    assert scaling.resources_per_worker == {"CPU": 2, "GPU": 1}


def test_cpu_training_uses_gloo():
    train = TrainConfig()
    assert torch_config(train).backend == "gloo"
    assert scaling_config(train).resources_per_worker == {"CPU": 1.0}


@pytest.mark.parametrize(
    ("train", "split"),
    [
        (TrainConfig(strategy="ddp"), "all"),
        (TrainConfig(strategy="fsdp"), "all"),
        (TrainConfig(strategy="tensor"), []),
        (TrainConfig(strategy="pipeline", batch_size=8), []),
        (TrainConfig(strategy="hybrid", num_workers=4, mesh=(2, 2)), []),
    ],
)
def test_ray_data_splits_per_worker_only_when_every_worker_is_a_replica(train, split):
    assert dataset_config(train)._datasets_to_split == split


def test_the_poll_interval_reaches_the_run_controller(monkeypatch):
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from rayline.train.driver import POLL_INTERVAL_ENV, set_poll_interval

    monkeypatch.setenv(POLL_INTERVAL_ENV, "2")  # restored after the test
    set_poll_interval(TrainConfig(poll_interval_s=0.5))
    assert get_env_vars_to_propagate()[POLL_INTERVAL_ENV] == "0.5"


def test_progress_is_dropped_not_fatal_once_its_queue_is_gone():
    from ray.exceptions import RayActorError

    from rayline.train.driver import ProgressCallback, remaining

    class LostQueue:
        puts = 0

        def put(self, item):
            self.puts += 1
            raise RayActorError()

        def qsize(self):
            raise RayActorError()

        def get_nowait_batch(self, n):
            raise RayActorError()

    queue = LostQueue()
    callback = ProgressCallback(queue)
    callback.after_report(None, [{"epoch": 0}], None)
    callback.after_report(None, [{"epoch": 1}], None)
    assert queue.puts == 1, "a lost queue is not called again"
    assert remaining(queue) == []
