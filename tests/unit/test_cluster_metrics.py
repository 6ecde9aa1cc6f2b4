"""rayline.metrics without a cluster, and the Grafana dashboard that reads what it exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from rayline import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "monitoring" / "grafana-rayline.json"


class FakeGauge:
    def __init__(self):
        self.values: dict[tuple, float] = {}

    def set(self, value, tags):
        self.values[tuple(sorted(tags.items()))] = value


@pytest.fixture
def gauges(monkeypatch):
    made: dict[str, FakeGauge] = {}
    monkeypatch.setattr(metrics, "_gauges", made)
    monkeypatch.setattr(metrics, "_latest", {})
    monkeypatch.setattr(metrics, "start_refresher", lambda: None)
    monkeypatch.setattr(metrics, "exporting", lambda: True)
    monkeypatch.setattr(metrics, "gauge", lambda name, description, tag_keys: made.setdefault(name, FakeGauge()))
    return made


def test_an_epoch_report_sets_every_training_gauge(gauges):
    report = {"epoch": 2, "epochs_done": 3, "samples_per_s": 512.5, "train_loss": 0.25}
    report |= {"val_loss": 0.3, "val_accuracy": 0.9, "epoch_time_s": 1.5}
    metrics.record_epoch("digits", report)

    run = (("run", "digits"),)
    assert gauges["rayline_train_epoch"].values == {run: 3.0}
    assert gauges["rayline_train_samples_per_second"].values == {run: 512.5}
    assert gauges["rayline_train_loss"].values == {run: 0.25}
    assert gauges["rayline_train_validation"].values == {
        (("metric", "val_accuracy"), ("run", "digits")): 0.9,
        (("metric", "val_loss"), ("run", "digits")): 0.3,
    }


def test_the_refresher_sets_the_last_values_again(gauges):
    """Ray's agent drops a gauge value nobody set again for two report intervals; epochs can be longer."""
    metrics.record_epoch("a", {"epoch": 0, "train_loss": 2.0})
    metrics.record_epoch("a", {"epoch": 1, "train_loss": 1.0})
    for gauge in gauges.values():
        gauge.values.clear()
    metrics.refresh()
    assert gauges["rayline_train_epoch"].values == {(("run", "a"),): 2.0}
    assert gauges["rayline_train_loss"].values == {(("run", "a"),): 1.0}


def test_missing_and_non_finite_values_are_skipped(gauges):
    metrics.record_epoch("r", {"epoch": 0, "train_loss": float("nan"), "val_accuracy": float("nan"), "val_x": True})
    assert gauges["rayline_train_epoch"].values == {(("run", "r"),): 1.0}, "epoch is 0-based in reports"
    assert set(gauges) == {"rayline_train_epoch"}, "no loss, throughput or validation gauge without a number"


def test_nothing_is_recorded_outside_a_ray_process(monkeypatch):
    # The suite's session cluster may be up in this process; what is tested is a process without Ray.
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    monkeypatch.setattr(metrics, "gauge", lambda *a: pytest.fail("no gauge without Ray"))
    metrics.record_epoch("r", {"epoch": 0, "train_loss": 1.0})
    metrics.record_trials("e", {"running": 1})


def trial(trial_id: str, status: str):
    return SimpleNamespace(trial_id=trial_id, status=status)


def test_trial_counts_follow_tune_and_the_ends_the_callback_saw(gauges):
    counts = metrics.TrialCounts()
    trials = [trial("a", "RUNNING"), trial("b", "RUNNING"), trial("c", "PENDING")]
    assert counts.counts(trials) == {"running": 2, "finished": 0, "stopped": 0, "errored": 0}
    counts.end("a", "finished")
    counts.end("b", "stopped")  # Tune may still list a trial as RUNNING while its completion is reported
    trials[2].status = "RUNNING"
    assert counts.counts(trials) == {"running": 1, "finished": 1, "stopped": 1, "errored": 0}
    counts.end("c", "errored")
    metrics.record_trials("search", counts.counts(trials))
    assert gauges["rayline_tune_trials"].values == {
        (("experiment", "search"), ("state", state)): value
        for state, value in {"running": 0, "finished": 1, "stopped": 1, "errored": 1}.items()
    }


def test_the_grafana_dashboard_reads_only_metrics_that_exist():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {f"ray_{name}" for name in [*metrics.TRAIN_GAUGES, metrics.VALIDATION_GAUGE, metrics.TRIALS_GAUGE]}
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", "the data source is picked on import"
        for target in panel["targets"]:
            used |= set(re.findall(r"\bray_[a-z_]+", target["expr"]))
    serve = {name for name in used if name.startswith("ray_serve_")}
    assert used - serve == exported, "every rayline metric has a panel, and panels read nothing else of ours"
    assert serve <= {
        "ray_serve_num_http_requests_total",
        "ray_serve_num_http_error_requests_total",
        "ray_serve_http_request_latency_ms_bucket",
    }
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "rayline"
