"""Training and search progress exported through Ray's metrics agent.

Every Ray node serves what its processes record at http://<node>:<--metrics-export-port>/metrics
(Prometheus text, no auth); the dashboard's Metrics view and monitoring/grafana-rayline.json read
it from there. Ray prefixes custom metric names with `ray_`, so `rayline_train_epoch` is scraped as
`ray_rayline_train_epoch`. Gauges live as long as the process that sets them: scrape while a run
is going (Prometheus' default 15 s interval is enough for epochs of a second or more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

TRAIN_GAUGES = {
    "rayline_train_epoch": "Epochs completed by a training run",
    "rayline_train_samples_per_second": "Training samples per second over the last epoch, all workers together",
    "rayline_train_loss": "Mean training loss over the last epoch",
}
VALIDATION_GAUGE = "rayline_train_validation"
TRIALS_GAUGE = "rayline_tune_trials"
TRIAL_STATES = ("running", "finished", "stopped", "errored")

_gauges: dict[str, Any] = {}


def gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    """One Gauge per name and process: Ray registers a metric when it is constructed."""
    if name not in _gauges:
        from ray.util.metrics import Gauge

        _gauges[name] = Gauge(name, description=description, tag_keys=tag_keys)
    return _gauges[name]


def exporting() -> bool:
    """Metrics reach an exporter only from a process connected to Ray."""
    import ray

    return ray.is_initialized()


def record_epoch(run: str, metrics: Mapping[str, Any]) -> None:
    """Export one epoch's rank-0 report of `run`: epochs done, samples/s, train loss, every val_* metric."""
    if not exporting():
        return
    values = {
        "rayline_train_epoch": metrics.get("epochs_done", metrics.get("epoch", -1) + 1),
        "rayline_train_samples_per_second": metrics.get("samples_per_s"),
        "rayline_train_loss": metrics.get("train_loss"),
    }
    for name, value in values.items():
        if is_number(value):
            gauge(name, TRAIN_GAUGES[name], ("run",)).set(float(value), tags={"run": run})
    validation = gauge(VALIDATION_GAUGE, "Validation metrics of the last epoch, by name", ("run", "metric"))
    for key, value in metrics.items():
        if key.startswith("val_") and is_number(value):
            validation.set(float(value), tags={"run": run, "metric": key})


def record_trials(experiment: str, counts: Mapping[str, int]) -> None:
    """Export how many trials of a search are running, finished, stopped early and errored."""
    if not exporting():
        return
    trials = gauge(TRIALS_GAUGE, "Trials of a hyperparameter search by state", ("experiment", "state"))
    for state in TRIAL_STATES:
        trials.set(float(counts.get(state, 0)), tags={"experiment": experiment, "state": state})


class TrialCounts:
    """Trial states as a Tune callback sees them; `running` is read off Tune's own trial list."""

    def __init__(self) -> None:
        self.ended: dict[str, str] = {}

    def end(self, trial_id: str, state: str) -> None:
        assert state in TRIAL_STATES, state
        self.ended[trial_id] = state

    def counts(self, trials: Iterable[Any]) -> dict[str, int]:
        result = dict.fromkeys(TRIAL_STATES, 0)
        for state in self.ended.values():
            result[state] += 1
        result["running"] = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended)
        return result


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
