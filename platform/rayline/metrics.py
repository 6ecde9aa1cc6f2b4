"""Training and search progress exported through Ray's metrics agent.

Every Ray node serves what its processes record at http://<node>:<--metrics-export-port>/metrics
(Prometheus text, no auth); the dashboard's Metrics view and monitoring/grafana-rayline.json read
it from there. Ray prefixes custom metric names with `ray_`, so `rayline_train_epoch` is scraped as
`ray_rayline_train_epoch`.

Ray's metrics agent forgets a gauge value that was not set again within two report intervals, so an
epoch longer than that would leave gaps. A daemon thread therefore sets every recorded value again
each second, for as long as the recording process (the driver) lives.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

TRAIN_GAUGES = {
    "rayline_train_epoch": "Epochs completed by a training run",
    "rayline_train_samples_per_second": "Training samples per second over the last epoch, all workers together",
    "rayline_train_loss": "Mean training loss over the last epoch",
    "rayline_train_ps_staleness": "Parameter server: mean staleness (versions) of the updates its shards applied",
    "rayline_train_ps_refused": "Parameter server: gradients bounded mode refused as too stale, so far",
}
VALIDATION_GAUGE = "rayline_train_validation"
VALIDATION_DESCRIPTION = "Validation metrics of the last epoch, by name"
TRIALS_GAUGE = "rayline_tune_trials"
TRIALS_DESCRIPTION = "Trials of a hyperparameter search by state"
TRIAL_STATES = ("running", "finished", "stopped", "errored")
FEDERATED_GAUGES = {
    "rayline_federated_round": ("round", "Rounds completed by a federated run"),
    "rayline_federated_clients_answered": ("clients_answered", "Clients whose update the last round averaged"),
    "rayline_federated_bytes_moved": ("bytes_moved", "Bytes the last round moved: global model out, updates in"),
    "rayline_federated_epsilon": ("epsilon", "Privacy budget spent so far (epsilon at the run's delta)"),
}

REFRESH_S = 1.0

_gauges: dict[str, Any] = {}
_latest: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_lock = threading.Lock()
_refresher: threading.Thread | None = None


def gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    """One Gauge per name and process: Ray registers a metric when it is constructed."""
    if name not in _gauges:
        from ray.util.metrics import Gauge

        _gauges[name] = Gauge(name, description=description, tag_keys=tag_keys)
    return _gauges[name]


def set_gauge(name: str, description: str, value: float, tags: dict[str, str]) -> None:
    """Set a gauge and remember the value, so the refresher keeps it alive in the agent."""
    gauge(name, description, tuple(tags)).set(value, tags=tags)
    with _lock:
        _latest[(name, tuple(tags.items()))] = value
    start_refresher()


def start_refresher() -> None:
    global _refresher
    with _lock:
        if _refresher is None:
            _refresher = threading.Thread(target=refresh_forever, name="rayline-metrics", daemon=True)
            _refresher.start()


def refresh_forever() -> None:
    while True:
        time.sleep(REFRESH_S)
        refresh()


def refresh() -> None:
    """Set every remembered value again (a no-op once this process has left Ray)."""
    if not exporting():
        return
    with _lock:
        latest = list(_latest.items())
    for (name, tags), value in latest:
        gauge(name, "", ()).set(value, tags=dict(tags))


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
        "rayline_train_ps_staleness": metrics.get("ps_staleness_mean"),
        "rayline_train_ps_refused": metrics.get("ps_refused"),
    }
    for name, value in values.items():
        if is_number(value):
            set_gauge(name, TRAIN_GAUGES[name], float(value), {"run": run})
    for key, value in metrics.items():
        if key.startswith("val_") and is_number(value):
            set_gauge(VALIDATION_GAUGE, VALIDATION_DESCRIPTION, float(value), {"run": run, "metric": key})


def record_round(run: str, metrics: Mapping[str, Any]) -> None:
    """Export a federated round's own figures (its validation metrics go through record_epoch)."""
    if not exporting():
        return
    for name, (key, description) in FEDERATED_GAUGES.items():
        if is_number(metrics.get(key)):
            set_gauge(name, description, float(metrics[key]), {"run": run})


def record_trials(experiment: str, counts: Mapping[str, int]) -> None:
    """Export how many trials of a search are running, finished, stopped early and errored."""
    if not exporting():
        return
    for state in TRIAL_STATES:
        tags = {"experiment": experiment, "state": state}
        set_gauge(TRIALS_GAUGE, TRIALS_DESCRIPTION, float(counts.get(state, 0)), tags)


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
