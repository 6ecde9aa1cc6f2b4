"""The stages of a pipeline run, composed: ingest → train → evaluate → register (→ serve, in the CLI)."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rayline import baseline as linear
from rayline.checkpoint import checkpoint_config, load_checkpoint
from rayline.config import ConfigError, PipelineConfig, check_model_inputs, features_phrase
from rayline.data import PreparedData, Preprocessor, prepare_datasets
from rayline.data.infer import resolve_features
from rayline.evaluation import confusion_matrix_png, learning_curves_png
from rayline.registry import ModelVersion, Registry
from rayline.storage import display, open_root
from rayline.tracking.runs import log_registration, run_tracker, search_tracker
from rayline.train.auto import resolve_strategy
from rayline.train.driver import TrainOutcome, batch_for_small_data, fit
from rayline.train.evaluate import SplitResult, evaluate
from rayline.train.resources import check_cluster_fits
from rayline.train.weights import check_class_weight, class_weights_for

CONFUSION_PNG = "confusion_matrix.png"
"""The held-out split's confusion matrix, written beside the registry record."""


@dataclass(frozen=True)
class TrainReport:
    version: ModelVersion
    best_metrics: dict[str, float]
    test_metrics: dict[str, float]
    num_rows: dict[str, int]
    evaluation: dict[str, Any] = field(default_factory=dict)
    """What the registry record holds under "evaluation": confusion matrix, baseline, early stopping."""
    summary: list[str] = field(default_factory=list)
    """The lines printed after training: early stopping, model vs baseline, and a warning if it is worse."""


def assessment_modules(cfg: PipelineConfig) -> list[str]:
    """What scoring and registering a run imports after training: matplotlib for its charts, scikit-learn for the
    baseline (about 1.6 CPU-seconds together)."""
    return ["matplotlib.pyplot", *(["sklearn.linear_model"] if cfg.train.baseline else [])]


def import_in_background(modules: list[str]) -> None:
    """Import `modules` in a thread while training runs, so the work after it does not wait for them.

    The driver only waits on the cluster while it trains, and Ray Train's start-up leaves cores idle. An import
    that is still running when the main thread needs the module makes it wait for that one (Python's import
    locks); one that fails is raised again where the module is used."""

    def load() -> None:
        with contextlib.suppress(ImportError):  # a missing package is reported where it is used, not from here
            import matplotlib

            matplotlib.use("Agg")  # before pyplot, as evaluation.py sets it: this thread must not pick a GUI
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    threading.Thread(target=load, name="rayline-imports", daemon=True).start()


def train_and_register(
    cfg: PipelineConfig,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> TrainReport:
    """Train the pipeline's model, score its best checkpoint on the test split, and register it."""
    if cfg.federated is not None:
        return federated_and_register(cfg, log=log)
    cfg = preflight(cfg)
    wait_for_nodes = check_cluster_fits(cfg.train, log)
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, check=model_takes_inputs(cfg), log=log)
    cfg = cfg.model_copy(update={"data": data.data_cfg})  # features: auto resolved, for workers and checkpoints
    log_preparation(data, log)
    log(
        f"data: {data.num_rows['train']} train / {data.num_rows['validation']} validation / "
        f"{data.num_rows['test']} test rows, {data.preprocessor.num_inputs} inputs, "
        f"fingerprint {data.fingerprint[:19]}…"
    )
    cfg = fit_batch_to_data(cfg, data, log)
    cfg, choice = resolve_strategy(cfg, data.preprocessor.model_shape())
    if choice is not None:
        log(f"strategy auto -> {choice.strategy}: {choice.reason}")
    class_weights = class_weights_for(cfg, data.label_counts)  # counted once: model, baseline
    import_in_background(assessment_modules(cfg))
    outcome = fit(
        cfg, data, on_epoch=on_epoch, verbose=verbose, class_weights=class_weights, wait_for_nodes=wait_for_nodes
    )
    summary = early_stopping_summary(outcome, cfg)
    test_metrics, evaluation, artifacts = assess(outcome.best_checkpoint, cfg, data, class_weights, summary)
    evaluation.update(training_notes(outcome, cfg, class_weights, data))
    if choice is not None:
        evaluation["strategy_choice"] = choice.record()
    for line in summary:
        log(line)
    version = register_run(cfg, outcome.best_checkpoint, data, test_metrics, evaluation, artifacts)
    return TrainReport(version, outcome.best_metrics, test_metrics, data.num_rows, evaluation, summary)


def register_run(
    cfg: PipelineConfig,
    checkpoint,
    data: PreparedData,
    test_metrics: dict[str, float],
    evaluation: dict[str, Any],
    artifacts: dict[str, bytes],
) -> ModelVersion:
    """Register a run's checkpoint; with tracking on, tag the run's MLflow run (the one its epochs or rounds
    were logged to) with the version and add the record, curves and artifacts to it."""
    tracker = run_tracker(cfg, cfg.run_name, tensorboard=False)
    registry = Registry(cfg.storage.uri)
    version = registry.register(
        checkpoint,
        run_name=cfg.run_name,
        data_fingerprint=data.fingerprint,
        test_metrics=test_metrics,
        evaluation=evaluation,
        artifacts=artifacts,
        tracking=tracked_as(tracker),
    )
    if tracker is not None:
        record = registry.record(version)
        curves = {"learning_curves.png": learning_curves_png(record["history"], f"{version} ({cfg.run_name})")}
        log_registration(tracker, str(version), record, {**artifacts, **curves})
    return version


def federated_and_register(cfg: PipelineConfig, *, log: Callable[[str], None] = print) -> TrainReport:
    """Train by federated rounds over the pipeline's clients, score the final global model on the test split,
    and register it with its federated settings, per-client metrics and privacy budget."""
    from rayline.federated import client_column, train_federated, with_client_column

    cfg = preflight(with_client_column(cfg))
    data = prepare_datasets(
        cfg.data,
        storage_root=cfg.storage.uri,
        check=model_takes_inputs(cfg),
        log=log,
        client_column=client_column(cfg),
    )
    cfg = cfg.model_copy(update={"data": data.data_cfg})
    log_preparation(data, log)
    log(f"data: {data.num_rows['train']} train / {data.num_rows['validation']} validation rows (global splits)")
    class_weights = class_weights_for(cfg, data.label_counts)
    outcome = train_federated(cfg, data, class_weights=class_weights, log=log)
    summary = outcome.summary()
    test_metrics, evaluation, artifacts = assess(outcome.final_checkpoint, cfg, data, class_weights, summary)
    evaluation["federated"] = {
        "settings": cfg.federated.model_dump(mode="json"),
        "clients": outcome.clients,
        "privacy": outcome.privacy,
    }
    for line in summary:
        log(line)
    version = register_run(cfg, outcome.final_checkpoint, data, test_metrics, evaluation, artifacts)
    return TrainReport(version, outcome.final_metrics, test_metrics, data.num_rows, evaluation, summary)


def preflight(cfg: PipelineConfig) -> PipelineConfig:
    """Checks that read no data through Ray, so a mistake costs seconds: storage, class weights, and whether the
    model takes the features (features: auto resolved here from the source's first rows)."""
    require_writable_storage(cfg.storage.uri)
    check_class_weight(cfg)
    cfg = cfg.model_copy(update={"data": resolve_features(cfg.data)})
    check_model_inputs(cfg)
    return cfg


def model_takes_inputs(cfg: PipelineConfig) -> Callable[[Preprocessor], None]:
    """The check of the fitted preprocessor's width (categorical features), before any split is transformed."""

    def check(preprocessor: Preprocessor) -> None:
        inputs = f"{features_phrase(cfg.data)} (after encoding)"
        check_model_inputs(cfg, preprocessor.num_inputs, inputs)

    return check


def trials_take_inputs(cfg: PipelineConfig, params) -> Callable[[Preprocessor], None]:
    """model_takes_inputs for the base config and every model value the search may try."""
    from rayline.tune.space import check_model_inputs_of_trials

    def check(preprocessor: Preprocessor) -> None:
        inputs = f"{features_phrase(cfg.data)} (after encoding)"
        check_model_inputs_of_trials(cfg, params, preprocessor.num_inputs, inputs)

    return check


def log_preparation(data: PreparedData, log: Callable[[str], None]) -> None:
    where = data.train.root
    if data.reused:
        log(f"data: reused the data prepared in {data.seconds:.1f} s at {where} (the source is unchanged)")
    else:
        log(f"data: prepared in {data.seconds:.1f} s, stored at {where}")
    if data.rows_without_label:
        log(f"left out {data.rows_without_label} rows whose label is missing")
    if data.rows_dropped:
        log(f"left out {data.rows_dropped} rows with a missing cell in a drop_row feature")


def fit_batch_to_data(cfg: PipelineConfig, data: PreparedData, log: Callable[[str], None]) -> PipelineConfig:
    cfg, note = batch_for_small_data(cfg, data.num_rows["train"])
    if note:
        log(note)
    return cfg


def require_writable_storage(root: str) -> None:
    """Fail in a second, naming storage.root, rather than after data preparation inside Ray Train's controller."""
    try:
        filesystem, path = open_root(root)
        filesystem.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.rayline-write-probe-{os.getpid()}"
        with filesystem.open_output_stream(probe) as f:
            f.write(b"ok")
        filesystem.delete_file(probe)
    except (OSError, ValueError) as err:  # StorageError is an OSError
        raise ConfigError(f"storage.root={display(root)!r}: cannot write there ({err})") from None


def search_and_register(
    cfg: PipelineConfig, *, resume: bool = False, log: Callable[[str], None] = print, verbose: bool = False
) -> TrainReport:
    """Search hyperparameters with distributed trials, report them, and register the best checkpoint."""
    import ray

    from rayline.tune import run_search
    from rayline.tune.plan import cluster_resources, plan_trials
    from rayline.tune.report import report_from_dir
    from rayline.tune.space import load_search_space

    cfg = preflight(cfg)
    params = load_search_space(cfg.tune.search_space, cfg)  # every searched model value against the features
    if ray.is_initialized():
        plan_trials(cfg, *cluster_resources())  # planned again, for concurrency, once the data is ready
    data = prepare_datasets(cfg.data, storage_root=cfg.storage.uri, check=trials_take_inputs(cfg, params), log=log)
    cfg = cfg.model_copy(update={"data": data.data_cfg})
    log_preparation(data, log)
    log(f"data: {data.num_rows['train']} train / {data.num_rows['validation']} validation rows")
    cfg = fit_batch_to_data(cfg, data, log)
    parent = search_tracker(cfg)
    if parent is not None:
        parent.run_id()  # the parent run exists before any trial looks for it
    outcome = run_search(cfg, data, resume=resume, verbose=verbose, log=log)
    log(report_from_dir(outcome.experiment_dir))
    log(f"report: {outcome.experiment_dir / 'trials.txt'}, {outcome.experiment_dir / 'learning_curves.png'}")
    best_cfg = checkpoint_config(outcome.best_checkpoint)  # the best trial's own settings
    class_weights = class_weights_for(best_cfg, data.label_counts)
    summary: list[str] = []
    test_metrics, evaluation, artifacts = assess(outcome.best_checkpoint, cfg, data, class_weights, summary)
    for line in summary:
        log(line)
    registry = Registry(cfg.storage.uri)
    version = registry.register(
        outcome.best_checkpoint,
        run_name=f"{cfg.run_name}/{outcome.best_trial_id}",
        data_fingerprint=data.fingerprint,
        test_metrics=test_metrics,
        params=outcome.best_params,
        evaluation=evaluation,
        artifacts=artifacts,
        tracking=tracked_as(parent),
    )
    if parent is not None:
        report = {
            f: (outcome.experiment_dir / f).read_bytes()
            for f in SEARCH_REPORT
            if (outcome.experiment_dir / f).is_file()
        }
        log_registration(parent, str(version), registry.record(version), {**artifacts, **report})
    log(f"best trial {outcome.best_trial_id}: {outcome.best_params}")
    return TrainReport(version, outcome.best_metrics, test_metrics, data.num_rows, evaluation, summary)


SEARCH_REPORT = ("trials.txt", "learning_curves.png")
"""The search report's files (tune/report.py), logged to the search's parent run."""


def tracked_as(tracker) -> dict[str, Any] | None:
    """What the registry record says about a run's tracking: its MLflow run id (None when MLflow is off or
    down, which never stops a registration)."""
    run_id = tracker.run_id() if tracker is not None else None
    return {"mlflow_run_id": run_id} if run_id else None


def score_split(checkpoint_dir, data: PreparedData, split: str) -> SplitResult | None:
    """Metrics (and confusion matrix) of a checkpoint on one prepared split, streamed through the same
    evaluation as validation; None when the split is empty."""
    dataset = getattr(data, split)
    if dataset is None or data.num_rows.get(split, 0) == 0:
        return None
    loaded = load_checkpoint(checkpoint_dir)
    return evaluate(loaded.model, dataset, loaded.preprocessor, batch_size=1024, device=torch.device("cpu"))


def held_out_split(data: PreparedData) -> str:
    """Where the final model is judged: the test split, or validation when data.split.test is 0."""
    return "test" if data.test is not None and data.num_rows.get("test", 0) > 0 else "validation"


def assess(
    checkpoint_dir, cfg: PipelineConfig, data: PreparedData, class_weights: list[float] | None, summary: list[str]
) -> tuple[dict[str, float], dict[str, Any], dict[str, bytes]]:
    """Score the checkpoint on the held-out split and set it against the linear baseline.

    Returns (test metrics, the record's evaluation, artifacts beside the record); appends what to print to
    `summary`."""
    split = held_out_split(data)
    scored = score_split(checkpoint_dir, data, split)
    test_metrics = scored.named("test") if split == "test" else {}
    evaluation: dict[str, Any] = {"split": split, "metrics": scored.named(split)}
    artifacts: dict[str, bytes] = {}
    classes = data.preprocessor.classes
    if scored.confusion is not None:
        evaluation["confusion_matrix"] = {"labels": classes, "counts": scored.confusion.tolist()}
        title = f"{cfg.name}: {split} split ({int(scored.confusion.sum())} rows)"
        artifacts[CONFUSION_PNG] = confusion_matrix_png(scored.confusion, classes, title)
    if cfg.train.baseline:
        evaluation.update(baseline_comparison(scored.named(split), data, split, class_weights, cfg, summary))
    return test_metrics, evaluation, artifacts


def baseline_comparison(
    model_metrics: dict[str, float],
    data: PreparedData,
    split: str,
    class_weights: list[float] | None,
    cfg: PipelineConfig,
    summary: list[str],
) -> dict[str, Any]:
    """Fit the linear baseline on the training split, score it on `split`, and compare."""
    train = linear.split_arrays(data.train, max_rows=linear.MAX_ROWS, seed=cfg.data.split.seed)
    # Every held-out row, as the model was scored on: only the baseline's training rows are sampled.
    held_out = linear.split_arrays(getattr(data, split), max_rows=data.num_rows[split], seed=cfg.data.split.seed)
    fitted = linear.fit_baseline(train, held_out, data.preprocessor, split=split, class_weights=class_weights)
    comparison = linear.compare(model_metrics, fitted, data.preprocessor.task)
    summary.append(linear.describe(comparison))
    if comparison["worse_than_baseline"]:
        summary.append(linear.warning(comparison, fitted))
    return {
        "baseline": fitted.to_dict(),
        "comparison": comparison,
        "worse_than_baseline": comparison["worse_than_baseline"],
    }


def early_stopping_summary(outcome: TrainOutcome, cfg: PipelineConfig) -> list[str]:
    line = outcome.early_stopping_line(cfg)
    return [line] if line else []


def training_notes(
    outcome: TrainOutcome, cfg: PipelineConfig, class_weights: list[float] | None, data: PreparedData
) -> dict[str, Any]:
    """How training ran, for the record: early stopping's verdict and the class weights used."""
    notes: dict[str, Any] = {"validation_loss": "unweighted"}
    if cfg.train.early_stopping is not None:
        last = outcome.last_metrics or {}
        notes["early_stopping"] = {
            **cfg.train.early_stopping.model_dump(),
            "stopped_early": outcome.stopped_early,
            "epochs_run": int(last.get("epochs_done", 0)),
            "best_epoch": last.get("best_epoch"),
        }
    if class_weights is not None:
        notes["class_weights"] = dict(zip(data.preprocessor.classes, class_weights, strict=True))
    if (compression := compression_note(outcome, cfg)) is not None:
        notes["compression"] = compression
    if (server := parameter_server_note(outcome, cfg)) is not None:
        notes["parameter_server"] = server
    return notes


def parameter_server_note(outcome: TrainOutcome, cfg: PipelineConfig) -> dict[str, Any] | None:
    """train.parameter_server and the staleness of every update its shards applied over the run."""
    last = outcome.last_metrics or outcome.best_metrics
    if "ps_staleness_counts" not in last:
        return None
    counts = last["ps_staleness_counts"]
    return {
        **cfg.train.server.model_dump(),
        "staleness_histogram": {str(k): int(n) for k, n in enumerate(counts) if n},
        "applied": int(last["ps_applied"]),
        "refused": int(last["ps_refused"]),
        "staleness_mean": last["ps_staleness_mean"],
        "staleness_max": int(last["ps_staleness_max"]),
        "pushes_by_worker": last["ps_pushes_by_worker"],
        "measured": "over the whole run, every shard's applied updates counted (a gradient pushed to n shards counts "
        "n times); pushes_by_worker: the gradients each worker pushed (under async and bounded the workers share "
        "each epoch's rows, so a faster worker pushes more); staleness = the shard's version when the gradient "
        "arrived - the version it was computed from",
    }


def compression_note(outcome: TrainOutcome, cfg: PipelineConfig) -> dict[str, Any] | None:
    """train.compression and what the last epoch's gradient all-reduce sent per step (ddp runs only)."""
    last = outcome.last_metrics or outcome.best_metrics
    if "grad_bytes_per_step" not in last:
        return None
    return {
        **cfg.train.compression.model_dump(),
        "grad_bytes_per_step": last["grad_bytes_per_step"],
        "compression_ratio": last["compression_ratio"],
        "measured": "bytes of the tensors each worker hands to the gradient all-reduce per optimizer step, mean "
        "over the last epoch; compression_ratio = fp32 gradient bytes / those bytes",
    }


def format_epoch(metrics: dict[str, Any], total_epochs: int) -> str:
    """One progress line a person can follow."""
    shown = [f"epoch {int(metrics['epoch']) + 1}/{total_epochs}"]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc", "val_rmse", "val_r2"):
        if key in metrics:
            shown.append(f"{key} {metrics[key]:.4f}")
    if "lr" in metrics:
        shown.append(f"lr {metrics['lr']:.2g}")
    shown.append(f"{metrics['samples_per_s']:,.0f} samples/s")
    if "grad_bytes_per_step" in metrics:
        shown.append(gradient_traffic(metrics["grad_bytes_per_step"], metrics["compression_ratio"]))
    if "ps_staleness_mean" in metrics:
        refused = int(metrics["ps_refused"])
        shown.append(
            f"staleness mean {metrics['ps_staleness_mean']:.2f} max {int(metrics['ps_staleness_max'])}"
            + (f" ({refused} refused)" if refused else "")
        )
        shown.append("pushes by worker " + "/".join(f"{n:,}" for n in metrics["ps_pushes_by_worker"]))
    return "  ".join(shown)


def gradient_traffic(bytes_per_step: float, ratio: float) -> str:
    """e.g. "grads 1.2 KiB/step (7.6x less)": what each worker sent to the gradient all-reduce per step."""
    size = f"{bytes_per_step / 2**20:.1f} MiB" if bytes_per_step >= 2**20 else f"{bytes_per_step / 2**10:.1f} KiB"
    return f"grads {size}/step" + (f" ({ratio:.1f}x less)" if round(ratio, 1) != 1.0 else "")
