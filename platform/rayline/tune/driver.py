"""Ray Tune over distributed trials: every trial builds and fits its own Ray Train V2 trainer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayline.checkpoint import MANIFEST_FILE, STATE_FILE, checkpoint_metrics, is_complete
from rayline.config import ConfigError, PipelineConfig, TuneConfig
from rayline.data import PreparedData
from rayline.evaluation import validation_metric_names
from rayline.storage import ObjectPath, cached_copy, join, location, ray_storage
from rayline.tracking.runs import search_key
from rayline.train.auto import resolve_strategy
from rayline.train.driver import build_trainer, check_batch_fits
from rayline.train.weights import class_weights_for
from rayline.tune.plan import Plan, cluster_resources, plan_trials
from rayline.tune.space import (
    apply_params,
    decode_params,
    encode,
    load_search_space,
    to_tune_space,
)

SUMMARY_FILE = "rayline_search.json"

# Trials that started in this process and whose end Tune has not reported. On Ctrl-C Tune marks its running trials
# TERMINATED, as if they had finished, so only this set tells an interrupted search from a finished one. Module
# state, not the callback's own: Tuner.restore brings back an unpickled copy of the callback.
UNFINISHED_TRIALS: set[str] = set()


@dataclass(frozen=True)
class SearchOutcome:
    experiment_dir: Path | ObjectPath
    best_trial_id: str
    best_params: dict[str, Any]
    best_checkpoint: Path
    best_metrics: dict[str, Any]


def run_search(
    cfg: PipelineConfig, data: PreparedData, *, resume: bool = False, verbose: bool = False, log=print
) -> SearchOutcome:
    """Search cfg.tune's space with its scheduler and searcher; return the best trial's best checkpoint.
    Whether every searched model value takes the data's inputs is checked while the data is prepared
    (rayline.pipeline.search_and_register), before any split is transformed."""
    from ray import tune

    assert cfg.tune is not None, "run_search needs a tune: section"
    params = load_search_space(cfg.tune.search_space, cfg)
    space = to_tune_space(params, cfg.tune.searcher)
    check_points_to_evaluate(cfg, [p.path for p in params])
    plan = plan_trials(cfg, *cluster_resources())
    check_batch_fits(cfg.train, data.num_rows["train"])
    check_search_metric(cfg, data)
    class_weights = search_class_weights(cfg, data, [p.path for p in params])
    log(f"search: {cfg.tune.num_samples} trials, {plan.describe()}")

    experiment_dir = location(join(cfg.storage.uri, "tune", cfg.run_name))
    path, filesystem = ray_storage(experiment_dir)
    trainable = make_trainable(cfg, data, plan, verbose, class_weights)
    if resume:
        if not tune.Tuner.can_restore(path, storage_filesystem=filesystem):
            raise ConfigError(f"--resume: no search to resume at {experiment_dir}")
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
            raise ConfigError(
                f"a search named {cfg.run_name!r} already exists at {experiment_dir}; pass --resume to "
                "continue it, or set storage.run_name to start another"
            )
        tuner = build_tuner(cfg, trainable, space, plan, experiment_dir, verbose)
    write_summary(experiment_dir, cfg)
    UNFINISHED_TRIALS.clear()
    results = tuner.fit()
    ended = results.num_terminated + results.num_errors
    if ended < cfg.tune.num_samples or UNFINISHED_TRIALS:
        # On Ctrl-C Tune saves its state and returns what it has, as if the search were over; registering its
        # best so far would leave a second "best" model once the search is resumed.
        raise SearchInterrupted(
            f"search stopped after {ended} of {cfg.tune.num_samples} trials; its state is saved in "
            f"{experiment_dir}: continue it with `rayline tune PIPELINE --resume`"
        )
    return best_of(results, cfg.tune, experiment_dir)


class SearchInterrupted(KeyboardInterrupt):
    """The search was stopped before every trial ended; nothing was registered."""


def check_search_metric(cfg: PipelineConfig, data: PreparedData) -> None:
    """tune.metric ranks every trial's checkpoints, so it must be a metric every epoch reports."""
    allowed = validation_metric_names(data.preprocessor.task, len(data.preprocessor.classes or ()))
    if cfg.tune.metric not in allowed:
        raise ConfigError(
            f"tune.metric={cfg.tune.metric!r} is not a metric a {data.preprocessor.task} run reports; "
            f"use one of {allowed}"
        )


def search_class_weights(cfg: PipelineConfig, data: PreparedData, paths: list[str]) -> list[float] | None:
    """Balanced class weights, counted once for every trial, when any trial may use them."""
    if cfg.train.class_weight != "balanced" and "train.class_weight" not in paths:
        return None
    balanced = cfg.model_copy(update={"train": cfg.train.model_copy(update={"class_weight": "balanced"})})
    return class_weights_for(balanced, data.label_counts)


def make_trainable(
    cfg: PipelineConfig, data: PreparedData, plan: Plan, verbose: bool, class_weights: list[float] | None = None
):
    from ray import tune

    base = cfg.model_dump(mode="json")
    trial = tune.with_parameters(run_trial, base=base, data=data, verbose=verbose, class_weights=class_weights)
    return tune.with_resources(trial, plan.trial_driver_resources)


def run_trial(
    params: dict[str, Any],
    *,
    base: dict,
    data: PreparedData,
    verbose: bool,
    class_weights: list[float] | None = None,
) -> None:
    """One trial: the pipeline with these parameters, trained by its own distributed Ray Train run. Early
    stopping inside it just ends the trial sooner, as if ASHA had stopped it."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg, choice = resolve_strategy(
        trial_config(PipelineConfig.model_validate(base), params), data.preprocessor.model_shape()
    )
    if choice is not None:
        print(f"strategy auto -> {choice.strategy}: {choice.reason}")
    # Propagated to the Train controller: a worker group that cannot be placed fails, never waits silently.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.tune.trial_start_timeout_s)
    trainer = build_trainer(
        cfg,
        data,
        callbacks=[TuneReportCallback()],
        run_name=f"{cfg.run_name}-{tune.get_context().get_trial_id()}",
        verbose=verbose,
        controller_failure_limit=1,
        class_weights=class_weights,
        parent_key=search_key(cfg),
    )
    trainer.fit()


def trial_config(base: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """Trial parameters applied; the epoch budget and checkpoint ranking follow the search."""
    tune_cfg = base.tune
    return apply_params(
        base,
        {
            **decode_params(params),
            "train.epochs": tune_cfg.scheduler.max_t,
            "train.checkpoint.metric": tune_cfg.metric,
            "train.checkpoint.mode": tune_cfg.mode,
        },
    )


def build_tuner(
    cfg: PipelineConfig, trainable, space: dict, plan: Plan, experiment_dir: Path | ObjectPath, verbose: bool
):
    from ray import tune

    t = cfg.tune
    storage_path, storage_filesystem = ray_storage(experiment_dir.parent)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            num_samples=t.num_samples,
            max_concurrent_trials=plan.max_concurrent_trials,
            search_alg=make_searcher(t, plan.max_concurrent_trials),
            scheduler=make_scheduler(t),
            # Not reuse_actors: Tune resets a reused function trainable only if the last trial's thread ends within
            # 2 s, and an ASHA-stopped trial is still inside its trainer's fit() then: the next trial is failed
            # with "Trainable runner reuse requires reset_config()" (seen in benchmarks/tune_asha.py).
        ),
        run_config=tune.RunConfig(
            name=experiment_dir.name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            verbose=1 if verbose else 0,
            callbacks=[progress_printer(t)],  # also exports trial metrics, so keep it with --verbose
        ),
    )


def progress_printer(t: TuneConfig):
    """A Tune callback (it runs in this driver process) that prints one line per trial event and exports
    the trial counts and each trial's epoch metrics (rayline.metrics)."""
    from ray.tune import Callback

    from rayline.metrics import TrialCounts, record_epoch, record_trials

    class TrialProgress(Callback):
        def __init__(self):
            self.counts = TrialCounts()

        def export(self, trials, trial) -> None:
            record_trials(trial.experiment_dir_name, self.counts.counts(trials))

        def on_trial_start(self, iteration, trials, trial, **info):
            unfinished_trials().add(trial.trial_id)
            self.export(trials, trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            epochs = int(result.get("epochs_done", 0))
            print(f"  trial {trial.trial_id} epoch {epochs}/{t.scheduler.max_t}  {t.metric} {result[t.metric]:.4f}")
            record_epoch(f"{trial.experiment_dir_name}/{trial.trial_id}", result)
            self.export(trials, trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            epochs = int((trial.last_result or {}).get("epochs_done", 0))
            finished = epochs >= t.scheduler.max_t
            stopped_itself = bool((trial.last_result or {}).get("stopped_early"))
            how = (
                "finished"
                if finished
                else "stopped by early stopping"
                if stopped_itself
                else "stopped early by the scheduler"
            )
            print(f"  trial {trial.trial_id} {how} after {epochs} epochs", flush=True)
            unfinished_trials().discard(trial.trial_id)
            self.counts.end(trial.trial_id, "finished" if finished else "stopped")
            self.export(trials, trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            cause = last_error_line(trial)
            print(f"  trial {trial.trial_id} FAILED: {cause} (full trace in {trial.local_path})", flush=True)
            unfinished_trials().discard(trial.trial_id)
            self.counts.end(trial.trial_id, "errored")
            self.export(trials, trial)

    return TrialProgress()


def unfinished_trials() -> set[str]:
    """This module's set, looked up at call time: a callback restored from a pickle holds copies of its globals."""
    from rayline.tune import driver

    return driver.UNFINISHED_TRIALS


def last_error_line(trial) -> str:
    """The line of a failed trial's trace that says what went wrong (its last), as Tune stored it: in the
    trial's local folder at once, in storage only after the next sync."""
    try:
        local = getattr(trial, "error_file", None)
        trace = Path(local).read_text() if local and Path(local).is_file() else trial.get_error() or ""
    except OSError as err:
        return f"its error could not be read ({err})"
    lines = [line.strip() for line in str(trace).splitlines() if line.strip()]
    return lines[-1] if lines else "no error text was stored"


def make_searcher(t: TuneConfig, max_concurrent: int):
    """Tune applies max_concurrent_trials to a Searcher (Optuna) itself but ignores it, with only a log warning,
    for a search algorithm such as BasicVariantGenerator (random, grid): that one is given the cap directly, or
    more trials start than the cluster holds and their worker groups time out."""
    if t.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        return OptunaSearch(
            sampler=optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=random_startup_trials(t.num_samples)),
            points_to_evaluate=encoded_points(t) or None,
        )
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(
        points_to_evaluate=encoded_points(t) or None, max_concurrent=max_concurrent, random_state=t.seed
    )


def random_startup_trials(num_samples: int) -> int:
    """How many trials TPE samples at random before it models the results: a quarter of the budget, 2 to 10.
    Optuna's fixed default of 10 would leave TPE almost nothing to propose in a search of 8 or 12 trials."""
    return max(2, min(10, num_samples // 4))


def encoded_points(t: TuneConfig) -> list[dict[str, Any]]:
    return [{key: encode(value) for key, value in point.items()} for point in t.points_to_evaluate]


def make_scheduler(t: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if t.scheduler.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epochs_done",
        max_t=t.scheduler.max_t,
        grace_period=t.scheduler.grace_period,
        reduction_factor=t.scheduler.reduction_factor,
    )


def check_points_to_evaluate(cfg: PipelineConfig, paths: list[str]) -> None:
    for i, point in enumerate(cfg.tune.points_to_evaluate):
        unknown = sorted(set(point) - set(paths))
        if unknown:
            raise ConfigError(f"tune.points_to_evaluate.{i}: {unknown} are not in the search space")
        apply_params(cfg, point)


def best_of(results, t: TuneConfig, experiment_dir: Path | ObjectPath) -> SearchOutcome:
    """The best trial by the search metric, and the best of its checkpoints still in storage (a local folder: on
    an object store, this node's copy of it)."""
    finished = [r for r in results if r.metrics and "checkpoint_path" in r.metrics]
    if not finished:
        errors = "; ".join(f"{type(r.error).__name__}: {r.error}" for r in results if r.error)[:2000]
        raise RuntimeError(f"no trial of the search at {experiment_dir} reported a result. {errors}")
    best = results.get_best_result(metric=t.metric, mode=t.mode, scope="all")
    path = best.metrics["checkpoint_path"]  # a path on the experiment's filesystem
    if isinstance(experiment_dir, ObjectPath):
        run_dir = ObjectPath(experiment_dir.fs, path, experiment_dir.root_uri).parent
    else:
        run_dir = Path(path).parent
    checkpoint = best_checkpoint_in(run_dir, t.metric, t.mode)
    params = decode_params(best.config)
    return SearchOutcome(experiment_dir, best.metrics["trial_id"], params, checkpoint, checkpoint_metrics(checkpoint))


def best_checkpoint_in(run_dir: Path | ObjectPath, metric: str, mode: str) -> Path:
    """The best checkpoint of a trial by its own metric, among those that pass verification: a kill inside the
    upload can leave whole metrics next to a cut-short model, and such a checkpoint must never win. A run on an
    object store is read from this node's verified copy of it."""
    sign = 1 if mode == "max" else -1
    for _, folder in sorted(scored_checkpoints(run_dir, metric), key=lambda c: (-sign * c[0], c[1].name)):
        local = folder if isinstance(folder, Path) else cached_copy(folder, (folder / MANIFEST_FILE).read_text())
        if is_complete(local):
            return local
    raise RuntimeError(f"the best trial's run {run_dir} kept no complete checkpoint")


def scored_checkpoints(run_dir: Path | ObjectPath, metric: str) -> list[tuple[float, Path | ObjectPath]]:
    """(metric, folder) of each checkpoint of a run whose state and manifest can be read."""
    scored = []
    for folder in run_dir.iterdir():
        if not folder.name.startswith("checkpoint_"):
            continue
        try:
            if (folder / MANIFEST_FILE).is_file():
                scored.append((float(json.loads((folder / STATE_FILE).read_text())["metrics"][metric]), folder))
        except (OSError, ValueError, KeyError):  # cut short while it was written
            continue
    return scored


def write_summary(experiment_dir: Path | ObjectPath, cfg: PipelineConfig) -> None:
    """What `rayline tune-report` needs to redraw the report from the results folder alone."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.tune
    summary = {
        "metric": t.metric,
        "mode": t.mode,
        "scheduler": t.scheduler.model_dump(),
        "pipeline": cfg.name,
    }
    (experiment_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
