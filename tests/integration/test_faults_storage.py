"""Storage faults under a running training job: the disk fills up or turns read-only between two
checkpoints (a real tmpfs mount), and a storage root that cannot be created at all."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from faults import after_checkpoint, fill, remount_read_only, tmpfs, tmpfs_unavailable, train_worker_pids
from pipelines import digits_config, digits_source, quiet
from rayline.checkpoint import checkpoint_metrics, complete_checkpoints, verify_checkpoint
from rayline.config import PipelineConfig
from rayline.pipeline import train_and_register
from rayline.registry import Registry, RegistryError
from rayline.train.driver import RUN_SNAPSHOT

pytestmark = pytest.mark.slow

EPOCHS = 5
FAULT_AFTER = 2
"""Epochs that complete (and are checkpointed) before the storage goes bad."""
MESSAGES = {"full": "No space left on device", "read-only": "Read-only file system"}


def pipeline(directory: Path, root: Path, **train) -> PipelineConfig:
    return digits_config(
        directory,
        "storage-faults",
        model={"kind": "mlp", "hidden_sizes": [64]},
        # keep: every checkpoint written before the fault stays, so each can be checked.
        train={"epochs": EPOCHS, "batch_size": 32, "checkpoint": {"keep": 10}, **train},
        storage={"root": str(root), "run_name": "run"},
    )


def require_tmpfs() -> None:
    """Skip where a tmpfs cannot be mounted (no root or CAP_SYS_ADMIN); under CI=true that is a failure, so a
    CI job that lost the capability cannot pass with these scenarios unrun."""
    if reason := tmpfs_unavailable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the storage-fault scenarios cannot run: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """One digits file for every scenario here."""
    directory = tmp_path_factory.mktemp("digits")
    digits_source(directory)
    return directory


@dataclass
class StorageFault:
    kind: str
    mount: Path
    cfg: PipelineConfig
    seen: list[int]
    error: BaseException

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.storage.root) / "runs" / "run"


@pytest.fixture(scope="module")
def storage_fault(request, ray_cluster, digits, tmp_path_factory) -> Iterator[StorageFault]:
    """A run whose storage (a 16 MiB tmpfs) fills up or is remounted read-only after FAULT_AFTER epochs."""
    require_tmpfs()
    tmp = tmp_path_factory.mktemp(f"storage-{request.param}")
    with tmpfs(tmp / "mount", 16 << 20) as mount:
        # The controller polls the workers often, so it passes reports on soon after each epoch.
        cfg = pipeline(digits, mount / "store", poll_interval_s=0.05)
        seen: list[int] = []
        fault = (lambda: fill(mount)) if request.param == "full" else (lambda: remount_read_only(mount))
        both_workers = lambda: p if len(p := train_worker_pids()) == 2 else []  # noqa: E731
        # Epochs here take a fraction of a second, faster than a loaded controller may pass reports on; the
        # workers are held back until the driver has seen an epoch, so it has seen training before the storage
        # goes bad (the controller records a checkpoint before it passes the report on, and dies on bad storage).
        injector = after_checkpoint(
            mount / "store" / "runs" / "run", FAULT_AFTER - 1, both_workers, fault, settled=lambda: bool(seen)
        )
        with pytest.raises(Exception) as err:
            train_and_register(cfg, on_epoch=lambda m: seen.append(int(m["epoch"])), log=quiet)
        injector.join(timeout=5)
        yield StorageFault(request.param, mount, cfg, seen, err.value)


def readable_checkpoint_epochs(run_dir: Path) -> list[int]:
    return sorted(int(checkpoint_metrics(d)["epoch"]) for d in complete_checkpoints(run_dir))


@pytest.mark.parametrize("storage_fault", ["full", "read-only"], indirect=True)
def test_bad_storage_stops_training_with_a_clear_error_and_earlier_checkpoints_intact(storage_fault):
    # Progress reaches the driver asynchronously (the controller may die on the bad storage first, so the last
    # good epoch may go unreported), but the fault waited for the first epoch's report.
    assert storage_fault.seen, "no epoch was reported: the run never trained before the fault"
    assert storage_fault.seen == list(range(len(storage_fault.seen))) and len(storage_fault.seen) <= FAULT_AFTER
    assert MESSAGES[storage_fault.kind] in str(storage_fault.error)
    assert readable_checkpoint_epochs(storage_fault.run_dir) == list(range(FAULT_AFTER))
    assert not Registry(storage_fault.cfg.storage.root).versions(), "nothing was registered from the failed run"


@pytest.mark.parametrize("storage_fault", ["full"], indirect=True)
def test_the_checkpoint_cut_short_by_bad_storage_is_refused_as_partial(storage_fault):
    directories = [p for p in storage_fault.run_dir.glob("checkpoint_*") if p.is_dir()]
    # The write the fault cut short may be a checkpoint, or Ray Train's record of them (see the resume test).
    assert len(directories) >= FAULT_AFTER
    refused = 0
    for directory in directories:
        try:
            verify_checkpoint(directory)
        except RegistryError as err:
            assert re.search("partial|corrupt|do not match", str(err)), err
            refused += 1
    assert refused == len(directories) - FAULT_AFTER, "only the complete checkpoints pass"
    record = storage_fault.run_dir / RUN_SNAPSHOT
    assert refused or not parses(record), "the fault cut a checkpoint, or Ray Train's record of them, short"


def parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def test_a_storage_root_that_cannot_be_created_is_refused_before_training(ray_cluster, digits, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the storage root's parent should be")
    cfg = pipeline(digits, blocker / "store")
    with pytest.raises((ValueError, OSError), match=r"storage\.root") as err:
        train_and_register(cfg, log=quiet)
    assert str(blocker) in str(err.value)


@pytest.mark.parametrize("storage_fault", ["full"], indirect=True)
def test_once_space_is_freed_the_run_resumes_from_its_last_complete_checkpoint(storage_fault):
    (storage_fault.mount / "ballast.bin").unlink()
    seen: list[int] = []
    report = train_and_register(storage_fault.cfg, on_epoch=lambda m: seen.append(int(m["epoch"])), log=quiet)
    assert seen == list(range(FAULT_AFTER, EPOCHS)), "the epoch count continues where the good checkpoints end"
    Registry(storage_fault.cfg.storage.root).load(report.version)
