"""Builds and fits the Ray Train trainer for one pipeline config; reports progress on the driver.

No torch here: the driver of every run and every Tune trial imports this module, and only the workers train.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import ControllerError
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.train.v2.api.callback import UserCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayline.checkpoint import MANIFEST_FILE, checkpoint_metrics, last_complete_checkpoint, require_same_strategy
from rayline.config import ConfigError, PipelineConfig, TrainConfig
from rayline.data import PreparedData
from rayline.data.preprocess import Preprocessor
from rayline.evaluation import validation_metric_names
from rayline.storage import ObjectPath, cached_copy, is_remote, join, open_root
from rayline.train.entry import train_loop_per_worker
from rayline.train.placement_groups import PlacementGroupJanitorCallback
from rayline.train.process_group import ProcessGroupConfig
from rayline.train.progress import EpochProgress
from rayline.train.resources import cluster_state, start_timed_out
from rayline.train.weights import class_weights_for


@dataclass(frozen=True)
class TrainOutcome:
    best_checkpoint: Path
    """Local directory of the best checkpoint by train.checkpoint.metric."""
    best_metrics: dict[str, float]
    run_dir: str
    """The Train run's folder on storage.root's filesystem."""
    last_metrics: dict[str, Any] | None = None
    """The last epoch's report; it holds stopped_early, best_epoch and epochs_without_improvement when early
    stopping ended the run."""

    @property
    def stopped_early(self) -> bool:
        return bool((self.last_metrics or {}).get("stopped_early"))

    def early_stopping_line(self, cfg: PipelineConfig) -> str | None:
        """What the run prints when early stopping ended it, e.g. "early stopping: val_loss did not improve by
        0 for 5 epochs; best epoch 7" (epochs counted from 1), or None."""
        if not self.stopped_early:
            return None
        rule, last = cfg.train.early_stopping, self.last_metrics
        return (
            f"early stopping: {rule.metric} did not improve by {rule.min_delta:g} for "
            f"{int(last['epochs_without_improvement'])} epochs; best epoch {int(last['best_epoch']) + 1}, "
            f"stopped after epoch {int(last['epoch']) + 1} of {cfg.train.epochs}"
        )


def fit(
    cfg: PipelineConfig,
    data: PreparedData,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    extra_callbacks: Sequence[UserCallback] = (),
    run_name: str | None = None,
    verbose: bool = False,
    class_weights: list[float] | None = None,
    wait_for_nodes: bool = False,
) -> TrainOutcome:
    """Train across cfg.train.num_workers Ray actors with cfg.train.strategy; resume if the run name exists.

    `class_weights`: the balanced loss weights when the caller has counted them already (else counted here).
    `wait_for_nodes`: the cluster cannot hold the workers yet (check_cluster_fits): they get
    train.start_timeout_s to be placed, then the run fails with a PlanError."""
    callbacks = list(extra_callbacks)
    progress = None
    if on_epoch is not None:
        progress = EpochProgress(on_epoch, {"num_cpus": 0, "scheduling_strategy": on_this_node()})
        callbacks.append(progress.callback())
    trainer = build_trainer(
        cfg,
        data,
        callbacks=callbacks,
        run_name=run_name or cfg.run_name,
        verbose=verbose,
        class_weights=class_weights,
        controller_failure_limit=0 if wait_for_nodes else -1,
    )
    ended_normally = False
    try:
        with start_timeout(cfg.train if wait_for_nodes else None):
            result = trainer.fit()
        ended_normally = True
    finally:
        if progress is not None:
            progress.finish(ended_normally)
    return outcome_of(result, cfg)


@contextmanager
def start_timeout(train: TrainConfig | None):
    """With `train`: its workers get train.start_timeout_s to be placed (Ray Train reads the timeout from the
    environment of the process that calls fit()), and a start that times out is a PlanError."""
    if train is None:
        yield
        return
    before = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = str(train.start_timeout_s)
    try:
        yield
    except ControllerError as err:
        if isinstance(err.controller_failure, WorkerGroupStartupTimeoutError):
            raise start_timed_out(train, cluster_state()) from None
        raise
    finally:
        if before is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = before


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """A zero-CPU actor could land on any node and die with it; the driver's own node lives as long as we do."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)


def build_trainer(
    cfg: PipelineConfig,
    data: PreparedData,
    *,
    callbacks: list,
    run_name: str,
    verbose: bool,
    controller_failure_limit: int = -1,
    class_weights: list[float] | None = None,
    parent_key: str | None = None,
) -> DataParallelTrainer:
    """The trainer for cfg; controller_failure_limit >= 0 makes a worker group that cannot
    start fail the run instead of being retried forever. `class_weights` as in fit; `parent_key`: the
    tracking key of the search a trial belongs to."""
    if cfg.train.strategy == "auto":
        raise ValueError("train.strategy auto reached the trainer unresolved: call train.auto.resolve_strategy first")
    check_batch_fits(cfg.train, data.num_rows["train"])
    check_metric_names(cfg, data.preprocessor)
    if class_weights is None:
        class_weights = class_weights_for(cfg, data.label_counts)
    set_controller_environment(cfg.train)
    resume_from = None
    if not is_remote(cfg.storage.uri):
        run_dir = Path(cfg.storage.uri) / "runs" / run_name
        last = last_complete_checkpoint(run_dir)  # listed (and hashed) once per start
        if last is not None:
            # Refused here, before any worker starts; each worker checks again on load (which is the only check
            # for runs on an object store, not listed from the driver).
            require_same_strategy(last, cfg)
        resume_from = recover_run_state(run_dir, last)
    storage_filesystem, runs_path = open_root(join(cfg.storage.uri, "runs"))
    keep = cfg.train.checkpoint
    return Trainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "preprocessor": data.preprocessor.to_dict(),
            "resume_from": resume_from,
            "class_weights": class_weights if cfg.train.class_weight == "balanced" else None,
            "train_rows": data.num_rows["train"],
            "splits": {"train": data.train.to_dict(), "validation": data.validation.to_dict()},
            "tracking": {"run_name": run_name, "parent_key": parent_key} if cfg.tracking.enabled else None,
        },
        backend_config=torch_config(cfg.train),
        scaling_config=scaling_config(cfg.train),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=runs_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=keep.keep,
                checkpoint_score_attribute=keep.metric,
                checkpoint_score_order=keep.mode,
            ),
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.train.max_failures, controller_failure_limit=controller_failure_limit
            ),
            callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )


class Trainer(DataParallelTrainer):
    """Ray Train's data-parallel trainer with rayline's process group (TorchTrainer adds only its own backend
    config, and a torch import); no dataset manager: the workers read the prepared splits' files named in the
    loop config, and Ray Train 2.60 starts that actor for every run even with no datasets given; and the
    cluster's placement-group janitor instead of a cleaner actor per run (rayline.train.placement_groups).
    (A private hook, so ray is pinned to one version; a unit test fails if the hook changes.)"""

    def _create_default_callbacks(self) -> list:
        replaced = (DatasetsCallback, PlacementGroupCleanerCallback)
        kept = [c for c in super()._create_default_callbacks() if not isinstance(c, replaced)]
        return [PlacementGroupJanitorCallback(), *kept]


RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def set_controller_environment(train: TrainConfig) -> None:
    """Ray Train reads these from the environment of the process that calls fit() (the driver or a Tune trial)
    and passes them on to the run's controller.

    The preemption watcher is off unless the environment turns it on: it only watches for cloud spot-instance
    preemption notices (set RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 on such a cluster), and it is one more
    process started with every run and every Tune trial. Recovery from a lost worker or node does not need it:
    train.max_failures restarts the worker group either way."""
    os.environ[POLL_INTERVAL_ENV] = str(train.poll_interval_s)
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def recover_run_state(run_dir: Path, last_complete: Path | None) -> str | None:
    """Ray Train's record of a run's checkpoints, cut short by a full disk, stops the run from ever starting
    again (its controller fails to parse it). Move it aside and name the run's last complete checkpoint, for
    the loop to resume from; None when the record is fine or absent."""
    snapshot = run_dir / RUN_SNAPSHOT
    if not snapshot.is_file():
        return None
    try:
        json.loads(snapshot.read_text())
        return None
    except ValueError:
        snapshot.rename(snapshot.with_name(RUN_SNAPSHOT + ".corrupt"))
    return None if last_complete is None else str(last_complete)


def batch_for_small_data(cfg: PipelineConfig, train_rows: int) -> tuple[PipelineConfig, str | None]:
    """A default train.batch_size larger than a replica's share of a small training split shrinks to a quarter
    of the share (a few steps per epoch) instead of refusing the run; a batch size the user set is kept, and
    check_batch_fits refuses it if it does not fit. Returns the config to train with and a line to print."""
    train = cfg.train
    share = train_rows // train.data_parallel_size
    if "batch_size" in train.model_fields_set or train.batch_size <= share or share < 1:
        return cfg, None
    batch = max(1, share // 4)
    if train.model_parallelism == "pipeline":
        micro = train.pipeline.microbatches
        batch = max(micro, batch - batch % micro)
    note = (
        f"train.batch_size: {batch} instead of the default {train.batch_size}, as each of the "
        f"{train.data_parallel_size} data-parallel replicas gets {share} training rows"
    )
    return cfg.model_copy(update={"train": train.model_copy(update={"batch_size": batch})}), note


def check_batch_fits(train: TrainConfig, train_rows: int) -> None:
    """Refuse a batch larger than a replica's share of the training split: it would train on nothing (a dropped
    short batch) or on one step per epoch, and the run would look like it worked."""
    share = train_rows // train.data_parallel_size
    if train.batch_size > share:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is more than the {share} training rows each of the "
            f"{train.data_parallel_size} data-parallel replicas gets ({train_rows} rows in the training split); "
            f"use at most {share}"
        )


def check_metric_names(cfg: PipelineConfig, preprocessor: Preprocessor) -> None:
    """train.checkpoint.metric and train.early_stopping.metric must be metrics every epoch reports."""
    validation = validation_metric_names(preprocessor.task, len(preprocessor.classes or ()))
    checks = [("train.checkpoint.metric", cfg.train.checkpoint.metric, [*validation, "train_loss"])]
    if cfg.train.early_stopping is not None:
        checks.append(("train.early_stopping.metric", cfg.train.early_stopping.metric, validation))
    for path, name, allowed in checks:
        if name not in allowed:
            raise ConfigError(
                f"{path}={name!r} is not a metric a {preprocessor.task} run reports; use one of {allowed}"
                + (" (val_roc_auc needs exactly two classes)" if name == "val_roc_auc" else "")
            )


def torch_config(train: TrainConfig) -> ProcessGroupConfig:
    """nccl between GPUs (the loop then builds CUDA device meshes), gloo between CPU workers."""
    return ProcessGroupConfig(backend="nccl" if train.use_gpu else "gloo")


def scaling_config(train: TrainConfig) -> ray.train.ScalingConfig:
    resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})}
    return ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources)


def outcome_of(result, cfg: PipelineConfig) -> TrainOutcome:
    if result.error is not None:
        raise result.error
    keep = cfg.train.checkpoint
    best = result.get_best_checkpoint(metric=keep.metric, mode=keep.mode) if result.best_checkpoints else None
    if best is None:
        raise RuntimeError(
            f"training run {result.path} produced no checkpoint with metric {keep.metric!r}; "
            "check train.checkpoint.metric against the reported metrics"
        )
    directory = local_copy(best, cfg.storage.uri)
    return TrainOutcome(
        best_checkpoint=directory,
        best_metrics=checkpoint_metrics(directory),
        run_dir=result.path,
        last_metrics=dict(result.metrics) if result.metrics else None,
    )


def local_copy(checkpoint: ray.train.Checkpoint, storage_root: str) -> Path:
    """The checkpoint as a local folder: as it is on local or shared storage, else this node's copy of it."""
    if not is_remote(storage_root):
        return Path(checkpoint.path)
    filesystem, _ = open_root(storage_root)
    remote = ObjectPath(filesystem, checkpoint.path, storage_root)
    return cached_copy(remote, (remote / MANIFEST_FILE).read_text())
