"""Which tracker a pipeline's training run, Tune trial or search gets: its key, name, params and TensorBoard folder.

A key names the run for good: the storage root (without URI options) and the run's place under it, so a
resumed run, a restarted worker and the driver registering the model all log into the same MLflow run, and
two projects with the same run name in one experiment stay apart.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rayline.config import PipelineConfig
from rayline.storage import display, join
from rayline.tracking.tracker import RunTracker, flatten

EpochLog = Callable[[int, dict[str, Any]], None]
NOT_CURVES = frozenset({"epoch", "epochs_done", "epoch_started_at"})
"""Report fields that are bookkeeping, not metrics (the epoch is each point's step)."""


def run_key(cfg: PipelineConfig, run_name: str) -> str:
    """A training run's or a trial's key (trials are Train runs named <search>-<trial id>)."""
    return f"{display(cfg.storage.root)}#runs/{run_name}"


def search_key(cfg: PipelineConfig) -> str:
    return f"{display(cfg.storage.root)}#tune/{cfg.run_name}"


def tensorboard_dir(cfg: PipelineConfig, run_name: str) -> str:
    """Beside the run's checkpoints: `tensorboard --logdir <root>/runs` shows runs and trials side by side. On an
    object store, the URI with its options (the endpoint), as the tracker opens it."""
    return join(cfg.storage.uri, "runs", run_name, "tensorboard")


def params(cfg: PipelineConfig) -> dict[str, str]:
    """The whole pipeline as MLflow params, but its tracking section (a tracking URI may hold credentials)."""
    return flatten(cfg.model_dump(mode="json", exclude={"tracking"}))


def run_tracker(
    cfg: PipelineConfig,
    run_name: str,
    *,
    parent_key: str | None = None,
    tensorboard: bool = True,
    key: str | None = None,
) -> RunTracker | None:
    """The tracker of one run (None when the pipeline tracks nothing). `tensorboard=False` for a process that
    logs no curves (the driver adding artifacts after the workers logged the epochs)."""
    tracking = cfg.tracking
    if not tracking.enabled:
        return None
    mlflow = tracking.mlflow
    return RunTracker(
        run_key=key or run_key(cfg, run_name),
        run_name=run_name,
        mlflow_uri=mlflow.uri if mlflow else None,
        experiment=(mlflow.experiment or cfg.name) if mlflow else None,
        tensorboard_dir=tensorboard_dir(cfg, run_name) if tracking.tensorboard and tensorboard else None,
        params=params(cfg),
        parent_key=parent_key,
        tags={"rayline.pipeline": cfg.name, "rayline.model_name": cfg.model_name},
    )


def search_tracker(cfg: PipelineConfig) -> RunTracker | None:
    """A search's parent run in MLflow (its trials log their own curves, to TensorBoard too)."""
    if cfg.tracking.mlflow is None:
        return None
    return run_tracker(cfg, cfg.run_name, tensorboard=False, key=search_key(cfg))


@contextmanager
def epoch_logger(
    cfg: PipelineConfig, tracking: dict[str, Any] | None, rank_zero: bool, history: list[dict[str, Any]]
) -> Iterator[EpochLog]:
    """In the worker loop: rank 0 logs each epoch's metrics (other ranks nothing); the run ends FINISHED when the
    loop returns and FAILED when it raises. A killed worker ends nothing, and what it had not yet sent is lost
    with it: its replacement reopens the run and first logs the epochs of the checkpoint it resumed from
    (`history`; epochs the run already has are skipped), so the run ends with every checkpointed epoch."""
    tracker = None
    if tracking and rank_zero:  # other ranks open nothing: no MLflow client, thread or run of their own
        tracker = run_tracker(cfg, tracking["run_name"], parent_key=tracking.get("parent_key"))
    if tracker is None:
        yield lambda epoch, metrics: None
        return

    def log_epoch(epoch: int, metrics: dict[str, Any]) -> None:
        tracker.log_epoch(epoch, {k: v for k, v in metrics.items() if k not in NOT_CURVES})

    for past in history:
        log_epoch(int(past["epoch"]), past)
    try:
        yield log_epoch
    except BaseException:
        tracker.finish("FAILED", timeout_s=5)
        raise
    tracker.finish("FINISHED")


def log_registration(
    tracker: RunTracker, version: str, record: dict[str, Any], artifacts: dict[str, bytes], status: str = "FINISHED"
) -> None:
    """The registered version as a tag, and the record and its artifacts (curves, confusion matrix) as files of
    the run; then the run ends."""
    tracker.set_tags({"rayline.version": version})
    folder = Path(tempfile.mkdtemp(prefix="rayline-artifacts-"))
    (folder / "record.json").write_text(json.dumps(record, indent=2, default=float))
    for name, content in artifacts.items():
        (folder / name).write_bytes(content)
    for path in sorted(folder.iterdir()):
        tracker.log_artifact(str(path))
    tracker.finish(status)  # uploads queued files before it returns (or gives up after its timeout)
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
