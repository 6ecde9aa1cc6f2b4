"""The stages of a pipeline run, composed: ingest → train → evaluate → register (→ serve, in the CLI)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rayline.config import ConfigError, PipelineConfig
from rayline.data import PreparedData, prepare_datasets
from rayline.registry import Registry, load_checkpoint
from rayline.train import fit
from rayline.train.loop import evaluate


@dataclass(frozen=True)
class TrainReport:
    version: str
    best_metrics: dict[str, float]
    test_metrics: dict[str, float]
    num_rows: dict[str, int]


def train_and_register(
    cfg: PipelineConfig,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> TrainReport:
    """Train the pipeline's model, score its best checkpoint on the test split, and register it."""
    require_writable_storage(cfg.storage.root)
    data = prepare_datasets(cfg.data)
    cfg = cfg.model_copy(update={"data": data.data_cfg})  # features: auto resolved, for workers and checkpoints
    log(
        f"data: {data.num_rows['train']} train / {data.num_rows['validation']} validation / "
        f"{data.num_rows['test']} test rows, {data.preprocessor.num_inputs} inputs, "
        f"fingerprint {data.fingerprint[:19]}…"
    )
    outcome = fit(cfg, data, on_epoch=on_epoch, verbose=verbose)
    test_metrics = score_checkpoint(outcome.best_checkpoint, data)
    version = Registry(cfg.storage.root).register(
        outcome.best_checkpoint,
        run_name=cfg.run_name,
        data_fingerprint=data.fingerprint,
        test_metrics=test_metrics,
    )
    return TrainReport(version, outcome.best_metrics, test_metrics, data.num_rows)


def require_writable_storage(root: str) -> None:
    """Fail in a second, naming storage.root, rather than after data preparation inside Ray Train's controller."""
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
        filesystem.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.rayline-write-probe-{os.getpid()}"
        with filesystem.open_output_stream(probe) as f:
            f.write(b"ok")
        filesystem.delete_file(probe)
    except (OSError, ValueError) as err:
        raise ConfigError(f"storage.root={root!r}: cannot write there ({err})") from None


def search_and_register(
    cfg: PipelineConfig, *, resume: bool = False, log: Callable[[str], None] = print, verbose: bool = False
) -> TrainReport:
    """Search hyperparameters with distributed trials, report them, and register the best checkpoint."""
    from rayline.tune import run_search
    from rayline.tune.report import report_from_dir

    require_writable_storage(cfg.storage.root)
    data = prepare_datasets(cfg.data)
    cfg = cfg.model_copy(update={"data": data.data_cfg})
    log(f"data: {data.num_rows['train']} train / {data.num_rows['validation']} validation rows")
    outcome = run_search(cfg, data, resume=resume, verbose=verbose, log=log)
    log(report_from_dir(outcome.experiment_dir))
    log(f"report: {outcome.experiment_dir / 'trials.txt'}, {outcome.experiment_dir / 'learning_curves.png'}")
    test_metrics = score_checkpoint(outcome.best_checkpoint, data)
    version = Registry(cfg.storage.root).register(
        outcome.best_checkpoint,
        run_name=f"{cfg.run_name}/{outcome.best_trial_id}",
        data_fingerprint=data.fingerprint,
        test_metrics=test_metrics,
        params=outcome.best_params,
    )
    log(f"best trial {outcome.best_trial_id}: {outcome.best_params}")
    return TrainReport(version, outcome.best_metrics, test_metrics, data.num_rows)


def score_checkpoint(checkpoint_dir, data: PreparedData) -> dict[str, float]:
    """Test-split metrics of a checkpoint, streamed through the same evaluation as validation."""
    if data.test is None or data.num_rows.get("test", 0) == 0:
        return {}
    loaded = load_checkpoint(checkpoint_dir)
    label_dtype = torch.int64 if loaded.preprocessor.task == "classification" else torch.float32
    metrics = evaluate(
        loaded.model,
        data.test,
        loaded.preprocessor,
        batch_size=1024,
        device=torch.device("cpu"),
        label_dtype=label_dtype,
    )
    return {name.replace("val_", "test_", 1): value for name, value in metrics.items()}


def format_epoch(metrics: dict[str, Any], total_epochs: int) -> str:
    """One progress line a person can follow."""
    shown = [f"epoch {int(metrics['epoch']) + 1}/{total_epochs}"]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_rmse", "val_mae"):
        if key in metrics:
            shown.append(f"{key} {metrics[key]:.4f}")
    shown.append(f"{metrics['samples_per_s']:,.0f} samples/s")
    return "  ".join(shown)
