"""Faults in a hyperparameter search: the `rayline tune` driver is stopped with Ctrl-C, resumed, then crashes
mid-search (its process group and every process it started SIGKILLed) and is resumed again; and one trial's workers
hit a real failed allocation while the others train on."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from faults import CheckpointEpochs, crash_process_group, kill_processes_with_env, wait_until
from pipelines import digits_pipeline, write_pipeline
from rayline.checkpoint import checkpoint_metrics, complete_checkpoints
from rayline.config import load_config
from rayline.pipeline import TrainReport, search_and_register
from rayline.registry import Registry
from rayline.tracking.tracker import PARENT_TAG

pytestmark = pytest.mark.slow

IMPOSSIBLE = 2**40
"""A hidden width whose first layer needs 64 x 2^40 float32 weights (256 TiB): no machine can allocate it."""


def search_pipeline(
    tmp_path: Path, space: dict, max_t: int = 3, train: dict | None = None, tracking: dict | None = None, **tune
) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    pipeline = digits_pipeline(
        tmp_path,
        "search",
        train={"cpus_per_worker": 0.5, **(train or {})},
        tracking=tracking or {},
        tune={
            "search_space": str(tmp_path / "space.yaml"),
            "metric": "val_accuracy",
            "mode": "max",
            "scheduler": {"kind": "fifo", "max_t": max_t},
            **tune,
        },
    )
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline)


def tracked_runs(uri: str, experiment: str) -> list[dict]:
    """Every MLflow run of an experiment: id, name, tags and the steps of its val_accuracy history."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [
        {
            "id": r.info.run_id,
            "name": r.info.run_name,
            "tags": r.data.tags,
            "steps": sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")),
        }
        for r in runs
    ]


def trial_results(experiment: Path) -> list[list[dict]]:
    """Each trial's results from Tune's result.json (which Tune may write only when the trial ends). A trial
    directory with none is left out: a crashed driver can leave one for a trial it created but never ran."""
    trials = []
    for result in experiment.glob("*/result.json"):
        with contextlib.suppress(ValueError):
            lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if lines:
                trials.append(lines)
    return trials


def trial_epochs(runs: Path, watched: dict[Path, CheckpointEpochs]) -> list[int]:
    """Epochs each trial has checkpointed so far, from its Train run (Tune's own files reach storage late).
    `watched` keeps each run's verified checkpoints between calls: a test polls this every 20 ms."""
    return [
        max(watched.setdefault(run, CheckpointEpochs(run)).complete(), default=-1) + 1 for run in runs.glob("search-*")
    ]


def table_rows(experiment: Path) -> list[str]:
    return (experiment / "trials.txt").read_text().splitlines()[1:]


def cpus_all_free(timeout_s: float = 60) -> bool:
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
            return True
        time.sleep(1)
    return False


# ---------------------------------------------------------------- 4. the driver is stopped, then crashes


def test_a_search_stopped_then_crashed_resumes_to_every_trial_and_one_best_model(tmp_path, mlflow_server):
    """One search, interrupted twice: `rayline tune` is stopped with Ctrl-C once a trial has finished and
    resumed; the resumed driver then crashes with a trial in flight (its process group and every process it
    started SIGKILLed, like a machine losing power) and is resumed again. Nothing is registered until the
    search is whole; then exactly one best model is, and MLflow holds exactly one run per trial under one
    parent run (Ray's own MLflow integration starts a new run on each restore)."""
    space = {"train.optimizer.lr": {"loguniform": [0.001, 0.01]}}
    # Batches of 4 rows make an epoch last a few tenths of a second (a trial's epochs 1 and 2 are the window
    # the crash must land in); reports collected every 2 s keep a finished trial in flight a while longer.
    train = {"poll_interval_s": 2.0, "batch_size": 4}
    tracking = {"mlflow": {"uri": mlflow_server.uri, "experiment": "resumed-search"}}
    pipeline = search_pipeline(tmp_path, space, train=train, tracking=tracking, num_samples=2, max_concurrent_trials=1)
    # Its own embedded cluster under its own Ray temp dir (short: Ray's socket paths live under it), so the
    # crashed cluster's files, and any process it leaves, are told apart from every other Ray on the machine.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlf-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_TMPDIR"] = str(ray_tmp)
    command = [sys.executable, "-m", "rayline.cli", "tune", str(pipeline)]
    experiment, runs = tmp_path / "store" / "tune" / "search", tmp_path / "store" / "runs"
    watched: dict[Path, CheckpointEpochs] = {}
    registry = Registry(tmp_path / "store")

    def start(log_name: str, *flags: str) -> subprocess.Popen:
        with (tmp_path / log_name).open("w") as out:
            return subprocess.Popen(
                [*command, *flags], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def running(process: subprocess.Popen, log_name: str) -> None:
        assert process.poll() is None, f"`rayline tune` exited early:\n{(tmp_path / log_name).read_text()[-3000:]}"

    try:
        first = start("first.log")

        def a_trial_finished() -> bool:
            running(first, "first.log")
            return 3 in trial_epochs(runs, watched)

        wait_until(a_trial_finished, 600, "a finished trial")
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
        printed = (tmp_path / "first.log").read_text()
        assert first.returncode == 130 and "--resume" in printed, printed[-3000:]
        at_interrupt = trial_epochs(runs, watched)
        assert sum(at_interrupt) < 6, "the search was stopped before its end"
        assert not registry.versions(), "an interrupted search registers nothing"

        second = start("second.log", "--resume")

        def progress_then_one_in_flight() -> bool:
            running(second, "second.log")
            epochs = trial_epochs(runs, watched)
            return sum(epochs) > sum(at_interrupt) and any(0 < e < 3 for e in epochs)

        wait_until(progress_then_one_in_flight, 600, "progress after the resume and a trial in flight", 0.02)
        at_crash = trial_epochs(runs, watched)
        crashed = crash_process_group(second)
        print(f"stopped at epochs {sorted(at_interrupt)}; crashed with {len(crashed)} processes at {sorted(at_crash)}")
        assert len(crashed) > 5, "the driver and its embedded cluster went down together"
        assert not registry.versions(), "nothing was registered before the crash"

        resumed = subprocess.run(
            [*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
        )
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        tracked = tracked_runs(mlflow_server.uri, "resumed-search")
    finally:
        kill_processes_with_env("RAY_TMPDIR", str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)

    parents = [r for r in tracked if PARENT_TAG not in r["tags"]]
    children = [r for r in tracked if PARENT_TAG in r["tags"]]
    assert len(parents) == 1 and len(children) == 2, [(r["name"], r["tags"].get(PARENT_TAG)) for r in tracked]
    assert {c["tags"][PARENT_TAG] for c in children} == {parents[0]["id"]}
    for child in children:
        assert child["steps"] == [0, 1, 2], f"{child['name']}: each epoch once across the stop, crash and resumes"
    assert parents[0]["tags"]["rayline.version"] == "search/v1"
    rows = table_rows(experiment)
    assert len(rows) == 2, "the resumed search ran the remaining trial, not a new search"
    assert not [r for r in rows if "ERROR" in r], rows
    assert [t[-1]["epochs_done"] for t in trial_results(experiment)] == [3, 3], "every trial finished"
    assert "registered model search/v1" in resumed.stdout
    assert registry.model("search").versions() == ["v1"] and registry.names() == ["search"], "one best model"
    assert registry.model("search").serving_version() == "v1"
    # The registered model is the best checkpoint of one trial, which need not be its last epoch. Tune ranks trials
    # by the results it saw, and a crash can lose a trial's last reports before Tune wrote them while their
    # checkpoints stayed in storage: the registered metric is a trial's best checkpoint, and at least the best
    # result Tune recorded.
    registered = registry.model("search").record("v1")["metrics"]["val_accuracy"]
    best_checkpoints = [
        max(checkpoint_metrics(c)["val_accuracy"] for c in complete_checkpoints(run)) for run in runs.glob("search-*")
    ]
    assert any(registered == pytest.approx(b) for b in best_checkpoints), (registered, best_checkpoints)
    assert registered >= max(epoch["val_accuracy"] for t in trial_results(experiment) for epoch in t)


# ---------------------------------------------------------------- 7. one trial cannot allocate its model


@dataclass(frozen=True)
class ImpossibleTrial:
    experiment: Path
    report: TrainReport | None
    error: BaseException | None
    """What search_and_register raised, if it did not return."""
    printed: str


@pytest.fixture(scope="module")
def impossible_trial(ray_cluster, tmp_path_factory) -> ImpossibleTrial:
    tmp_path = tmp_path_factory.mktemp("impossible")
    space = {"model.hidden_sizes": {"grid": [[32], [IMPOSSIBLE]]}}
    cfg = load_config(search_pipeline(tmp_path, space, searcher="grid", num_samples=1, max_t=2))
    printed = io.StringIO()
    report = error = None
    with contextlib.redirect_stdout(printed):  # Tune's progress callback prints in this process
        try:
            report = search_and_register(cfg, log=print)
        except Exception as err:
            error = err
    return ImpossibleTrial(Path(cfg.storage.root) / "tune" / "search", report, error, printed.getvalue())


def test_only_the_trial_that_cannot_allocate_fails_and_keeps_its_cause(impossible_trial):
    trials = trial_results(impossible_trial.experiment)
    finished = sorted(t[-1]["config"]["model.hidden_sizes"] for t in trials if t and t[-1]["epochs_done"] == 2)
    assert finished == ["[32]"], "the other trial trained to the end"
    errors = list(impossible_trial.experiment.glob("*/error.txt"))
    assert len(errors) == 1 and str(IMPOSSIBLE) in errors[0].parent.name, "only the impossible trial failed"
    assert f"you tried to allocate {64 * IMPOSSIBLE * 4} bytes" in errors[0].read_text()
    assert cpus_all_free(), "the failed trial's workers gave their CPUs back"


def test_a_search_with_a_failed_trial_still_registers_its_best_model(impossible_trial):
    assert impossible_trial.error is None, repr(impossible_trial.error)
    rows = table_rows(impossible_trial.experiment)
    assert len(rows) == 2 and len([r for r in rows if "ERROR" in r]) == 1, rows
    record = Registry(impossible_trial.experiment.parents[1]).record(impossible_trial.report.version)
    assert record["params"]["model.hidden_sizes"] == [32]


def test_the_failed_trials_cause_is_printed_where_the_user_looks(impossible_trial):
    failed = [line for line in impossible_trial.printed.splitlines() if "FAILED" in line]
    assert failed and "can't allocate memory" in failed[0], impossible_trial.printed[-2000:]
