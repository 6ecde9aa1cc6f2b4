"""What the driver asks Ray Train for, per config (no cluster needed)."""

import ray.train

from rayline.config import TrainConfig
from rayline.train.driver import scaling_config, torch_config


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


def test_the_poll_interval_and_the_preemption_watcher_setting_reach_the_run_controller(monkeypatch):
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from rayline.train.driver import POLL_INTERVAL_ENV, PREEMPTION_WATCHER_ENV, set_controller_environment

    monkeypatch.setenv(POLL_INTERVAL_ENV, "2")  # restored after the test
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    set_controller_environment(TrainConfig(poll_interval_s=0.5))
    assert get_env_vars_to_propagate()[POLL_INTERVAL_ENV] == "0.5"
    assert get_env_vars_to_propagate()[PREEMPTION_WATCHER_ENV] == "0"
    monkeypatch.setenv(PREEMPTION_WATCHER_ENV, "1")  # a spot-instance cluster turns it on
    set_controller_environment(TrainConfig())
    assert get_env_vars_to_propagate()[PREEMPTION_WATCHER_ENV] == "1"


def test_progress_is_dropped_not_fatal_once_its_queue_is_gone():
    from ray.exceptions import RayActorError

    from rayline.train.progress import ProgressCallback, remaining

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
    assert remaining(queue) is None, "nothing to hand over, and the lost queue is not kept for the next run"


def test_the_trainer_starts_no_dataset_manager_nor_cleaner_per_run_but_keeps_ray_trains_other_callbacks(tmp_path):
    from ray.train.v2._internal.callbacks import BackendSetupCallback, DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from rayline.train.driver import Trainer
    from rayline.train.placement_groups import PlacementGroupJanitorCallback

    def loop(_config):
        pass

    trainer = Trainer(loop, run_config=ray.train.RunConfig(name="x", storage_path=str(tmp_path)))
    kinds = {type(c) for c in trainer._create_default_callbacks()}
    assert DatasetsCallback not in kinds
    assert PlacementGroupCleanerCallback not in kinds, "the cluster's janitor frees a dead controller's group"
    assert {BackendSetupCallback, PlacementGroupJanitorCallback} <= kinds


def test_what_the_train_controller_unpickles_loads_no_torch():
    """Every run's (and every Tune trial's) controller unpickles the backend config and the progress callback;
    torch there would cost each one over a second of CPU for nothing."""
    import pickle
    import subprocess
    import sys

    from rayline.train.placement_groups import PlacementGroupJanitorCallback
    from rayline.train.progress import ProgressCallback

    payload = pickle.dumps([torch_config(TrainConfig()), ProgressCallback(None), PlacementGroupJanitorCallback()])
    check = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", check], input=payload, capture_output=True, check=True)
    assert loaded.stdout.strip() == b"False"


def test_the_janitors_process_loads_no_ray_train():
    """A cluster's first run registers its worker group with the janitor before its first step, so the janitor's
    process starting (unpickling its class) is on that path; Ray Train's imports would add over a second to it."""
    import pickle
    import subprocess
    import sys

    from rayline.train.janitor import PlacementGroupJanitor

    check = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print('ray.train' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", check], input=pickle.dumps(PlacementGroupJanitor), capture_output=True, check=True
    )
    assert loaded.stdout.strip() == b"False"


def test_a_runs_and_a_trials_driver_import_no_torch():
    """The driver of every run and of every Tune trial builds its trainer from these modules and only waits on it;
    torch (imported on the workers, through rayline.train.entry) would cost each about a CPU-second."""
    import subprocess
    import sys

    check = "import sys, rayline.train.driver, rayline.tune.driver; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
