"""Faults during training, injected for real on the session cluster: a Ray Train worker SIGKILLed mid-epoch,
and the checkpoint writer killed while it is uploading a checkpoint (a partial checkpoint left on disk)."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from faults import (
    KillOnEpoch,
    freeze_writer,
    kill_actor,
    kill_train_worker,
    live_actors,
    sigkill,
    train_worker_pids,
    wait_until,
)
from pipelines import digits_config, digits_source, quiet
from rayline.checkpoint import MODEL_FILE, load_checkpoint, verify_checkpoint
from rayline.config import MlflowConfig, PipelineConfig, TrackingConfig
from rayline.pipeline import TrainReport, train_and_register
from rayline.registry import Registry, RegistryError

pytestmark = pytest.mark.slow

EPOCHS = 6
REFUSED = "not a complete rayline checkpoint|is partial|tampered or corrupt"
"""What verify_checkpoint says about a checkpoint that is missing its manifest, a file, or a file's contents."""


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The directory holding the digits file every run here reads."""
    directory = tmp_path_factory.mktemp("digits")
    digits_source(directory)
    return directory


def pipeline(digits: Path, root: Path, run_name: str, *, hidden: list[int], **train) -> PipelineConfig:
    return digits_config(
        digits,
        "faults",
        # No dropout: its random masks are not checkpointed, and without them a resumed run is the same
        # computation as an undisturbed one, so their accuracies can be compared point for point.
        model={"kind": "mlp", "hidden_sizes": hidden, "dropout": 0.0},
        train={"epochs": EPOCHS, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.003}, **train},
        storage={"root": str(root), "run_name": run_name},
    )


def assert_epochs_continue(seen: list[int]) -> None:
    """Every epoch reported, in order; at most one (the one in flight at the fault) trained twice."""
    assert sorted(set(seen)) == list(range(EPOCHS)), f"an epoch is missing: {seen}"
    assert seen == sorted(seen), f"the epoch count went backwards: {seen}"
    assert len(seen) - len(set(seen)) <= 1, f"more than the in-flight epoch was trained again: {seen}"


# ---------------------------------------------------------------- 1. a worker killed mid-epoch


@dataclass(frozen=True)
class Baseline:
    report: TrainReport
    root: Path


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, digits, tmp_path_factory) -> Baseline:
    """A run whose training nothing disturbs: it loses only the queue that carries its progress to the driver,
    an actor that needs no CPU, so on a multi-node cluster Ray puts it on a random node and it dies with that
    node (seen in test_faults_cluster.py's scenario). Its model is the baseline a disturbed run must match."""
    root = tmp_path_factory.mktemp("undisturbed")
    seen: list[int] = []

    def on_epoch(metrics: dict) -> None:
        seen.append(int(metrics["epoch"]))
        if len(seen) == 1:
            sigkill([actor.pid for actor in live_actors("_QueueActor")])

    report = train_and_register(pipeline(digits, root, "undisturbed", hidden=[64]), on_epoch=on_epoch, log=quiet)
    return Baseline(report, root)


def test_losing_the_drivers_progress_queue_does_not_stop_training(undisturbed):
    history = Registry(undisturbed.root).record(undisturbed.report.version)["history"]
    assert [m["epoch"] for m in history] == list(range(len(history)))


def test_a_worker_killed_mid_epoch_is_replaced_and_the_run_ends_as_if_undisturbed(
    undisturbed, digits, tmp_path, mlflow_server
):
    # Killed once epoch 1 is checkpointed and epoch 2 is under way; Ray Train replaces the whole worker group.
    kill = KillOnEpoch(2, kill_train_worker, lambda: set(train_worker_pids()), "a new worker group", size=2)
    killed = pipeline(digits, tmp_path, "killed", hidden=[64], max_failures=1)
    # Tracked in MLflow: the replaced worker group must log into the run the first one opened.
    tracking = TrackingConfig(mlflow=MlflowConfig(uri=mlflow_server.uri, experiment="worker-killed"))
    report = train_and_register(killed.model_copy(update={"tracking": tracking}), on_epoch=kill, log=quiet)
    fault, seen = kill.fault, kill.seen
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("worker-killed").experiment_id])
    steps = [sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")) for r in runs]

    accuracy, baseline = report.test_metrics["test_accuracy"], undisturbed.report.test_metrics["test_accuracy"]
    print(f"worker killed: {fault}, epochs reported {seen}, test accuracy {accuracy:.4f} vs {baseline:.4f}")
    assert "replaced_in_s" in fault, f"no worker was killed and replaced: {fault}"
    assert_epochs_continue(seen)
    history = Registry(tmp_path).record(report.version)["history"]
    assert [m["epoch"] for m in history] == list(range(len(history))), "the learning curve has no hole"
    assert abs(accuracy - baseline) <= 0.01, f"test accuracy {accuracy:.4f} vs {baseline:.4f} undisturbed"
    assert steps == [list(range(len(history)))], "one MLflow run across the restart, each epoch once"
    assert runs[0].info.status == "FINISHED"


# ---------------------------------------------------------------- 2. killed while writing a checkpoint


@dataclass(frozen=True)
class WriteKill:
    cfg: PipelineConfig
    report: TrainReport
    seen: list[int]
    cut_file: Path
    """The file the worker was writing when it was killed."""
    partial: Path
    """The checkpoint directory it left behind."""


@pytest.fixture(scope="module")
def write_killed(ray_cluster, digits, tmp_path_factory) -> WriteKill:
    """A run whose checkpoint writer is SIGKILLed in the middle of uploading a checkpoint to storage.

    The writer is frozen (SIGSTOP) while it holds a file of the checkpoint open, then killed, so the
    kill lands inside the write. A wide model makes each checkpoint ~14 MB, so the write lasts long
    enough to be caught.
    """
    root = tmp_path_factory.mktemp("write-kill")
    cfg = pipeline(digits, root, "write-kill", hidden=[1024, 1024], batch_size=64, max_failures=1)
    run_dir = root / "runs" / "write-kill"
    seen: list[int] = []
    fault: dict[str, object] = {}

    def kill_inside_a_write() -> None:
        wait_until(lambda: seen, 600, "the first complete checkpoint")
        pid, path = freeze_writer(train_worker_pids, run_dir, timeout_s=600)
        fault.update(pid=pid, path=path)
        sigkill([pid])

    killer = threading.Thread(target=kill_inside_a_write, daemon=True)
    killer.start()
    report = train_and_register(cfg, on_epoch=lambda m: seen.append(int(m["epoch"])), log=quiet)
    killer.join(timeout=5)
    assert "pid" in fault, "the run finished before a checkpoint write could be caught"
    print(f"writer {fault['pid']} killed while writing {fault['path']}; epochs reported {seen}")
    cut_file = Path(fault["path"])
    partial = run_dir / cut_file.relative_to(run_dir).parts[0]
    return WriteKill(cfg, report, seen, cut_file, partial)


def test_a_run_killed_inside_a_checkpoint_write_resumes_from_the_last_complete_one(write_killed):
    with pytest.raises(RegistryError):
        verify_checkpoint(write_killed.partial)  # the kill really left a partial checkpoint behind
    assert_epochs_continue(write_killed.seen)
    # The cut-short checkpoint's epoch was never reported, so it is trained again rather than repeated.
    assert len(write_killed.seen) == len(set(write_killed.seen)), write_killed.seen


def test_a_partial_checkpoint_is_never_loaded_registered_or_served(write_killed, tmp_path):
    root = Path(write_killed.cfg.storage.root)
    registry = Registry(root)
    record = registry.record(write_killed.report.version)
    assert Path(record["source_checkpoint"]) != write_killed.partial
    registry.load(write_killed.report.version)  # the registered copy is whole

    with pytest.raises(RegistryError, match=REFUSED):
        load_checkpoint(write_killed.partial)
    versions = registry.versions()
    with pytest.raises(RegistryError, match=REFUSED):
        registry.register(write_killed.partial, run_name="write-kill", data_fingerprint="sha256:x")
    assert registry.versions() == versions, "a refused checkpoint left no version behind"

    # A registry copy cut short the same way is refused before any replica starts.
    from rayline.serve import build_app

    scratch = tmp_path / "scratch"
    shutil.copytree(registry.path, scratch / "registry")
    model = Registry(scratch).checkpoint_dir(write_killed.report.version) / MODEL_FILE
    with open(model, "r+b") as f:
        f.truncate(write_killed.cut_file.stat().st_size // 2)
    with pytest.raises(RegistryError, match=f"{model}: contents do not match the checkpoint manifest"):
        build_app(str(scratch), write_killed.report.version)


def test_a_search_never_picks_a_partial_checkpoint_however_good_it_looks(write_killed, tmp_path):
    """A kill inside the upload can leave manifest.json and state.json whole while model.pt is cut short (the
    files are copied in parallel); its reported metric may well be the run's best."""
    from rayline.tune.driver import best_checkpoint_in

    source = Registry(write_killed.cfg.storage.root).checkpoint_dir(write_killed.report.version)
    shutil.copytree(source, tmp_path / "checkpoint_a")
    cut = tmp_path / "checkpoint_b"
    shutil.copytree(source, cut)
    with open(cut / MODEL_FILE, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    state = json.loads((cut / "state.json").read_text())
    state["metrics"]["val_loss"] = 0.0
    (cut / "state.json").write_text(json.dumps(state))

    assert best_checkpoint_in(tmp_path, "val_loss", "min") == tmp_path / "checkpoint_a"


def test_a_checkpoint_cut_short_on_disk_stops_a_resume_with_a_clear_error(write_killed):
    """Not a crash this time: a complete checkpoint that was registered with Ray Train is damaged on disk
    afterwards. Resuming must refuse it, naming the file, rather than train on from garbage."""
    run_dir = write_killed.partial.parent
    complete = [p for p in run_dir.glob("checkpoint_*") if p.is_dir() and p != write_killed.partial]
    latest = max(complete, key=lambda p: p.name)
    with open(latest / MODEL_FILE, "r+b") as f:
        f.truncate(1024)
    more = write_killed.cfg.model_copy(
        update={"train": write_killed.cfg.train.model_copy(update={"epochs": EPOCHS + 1, "max_failures": 0})}
    )
    with pytest.raises(Exception, match="contents do not match the checkpoint manifest") as err:
        train_and_register(more, log=quiet)
    assert str(latest / MODEL_FILE) in str(err.value)


# ---------------------------------------------------------------- 3. the Train controller killed


def reserved_placement_groups() -> set[str]:
    import ray

    return {pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"}


def test_a_killed_train_controller_gives_its_workers_cpus_back(ray_cluster, digits, tmp_path):
    """What an ASHA-stopped trial or a killed driver does to a run: its controller dies without removing the
    workers' placement group. The cluster's janitor (rayline.train.janitor) removes it, and the
    CPUs return, instead of staying reserved until the cluster stops."""
    import ray
    from ray.exceptions import RayActorError

    from rayline.train.janitor import JANITOR_NAME, NAMESPACE

    held: set[str] = set()

    def kill_the_controller(metrics: dict) -> None:
        if not held:
            held.update(reserved_placement_groups())
            kill_actor("TrainController")

    with pytest.raises(RayActorError):
        train_and_register(pipeline(digits, tmp_path, "orphaned", hidden=[64]), on_epoch=kill_the_controller, log=quiet)
    assert held, "the run held a placement group while it trained"
    wait_until(lambda: not held & reserved_placement_groups(), 30, "the dead controller's placement group removed")
    wait_until(lambda: ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"], 30, "every CPU free")
    janitor = ray.get_actor(JANITOR_NAME, namespace=NAMESPACE)
    assert ray.get(janitor.watched.remote()) == [], "runs that ended, either way, are no longer watched"
