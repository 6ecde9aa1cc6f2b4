"""Pipelines as Ray Jobs on a `ray start --head` cluster with token auth: `ray job submit`, `rayline submit`.

The cluster is this module's own (own ports, temp dir and token), stopped by the PIDs it started.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from clusters import REPO, VENV_BIN, Lines, metric_samples, read_metrics, start_cluster, wait_for_samples
from http_client import http
from pipelines import PIXELS, digits_source
from rayline.registry import Registry
from rayline.runtime import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=4)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    return str(digits_source(tmp_path_factory.mktemp("data")))


def run(command: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_a_pipeline_with_the_rayline_cli(cluster, digits, tmp_path):
    store = tmp_path / "store"
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", "."]
    command += ["--", "rayline", "run", "pipelines/digits_mlp.yaml", "--no-serve"]
    command += ["--set", f"data.source={digits}", "--set", f"storage.root={store}", "--set", "train.epochs=2"]

    done = run(command, cluster.client_env())

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch 2/2" in done.stdout
    assert "registered model digits-mlp/v1" in done.stdout
    assert Registry(store).model("digits-mlp").serving_version() == "v1"


def test_rayline_submit_searches_serves_exports_tune_metrics_and_stops(cluster, digits, tmp_path):
    """One job: a Tune search (trial metrics on the Prometheus endpoint), then serving until stopped."""
    port = free_port()
    env = cluster.client_env()
    overrides = [f"data.source={digits}", f"storage.root={tmp_path / 'store'}", f"serve.port={port}"]
    overrides += ["tune.num_samples=2", "tune.searcher=random", "tune.scheduler.max_t=2"]
    overrides += ["tune.scheduler.grace_period=1", "train.num_workers=1", "model.channels=[8, 16]"]
    command = [str(VENV_BIN / "rayline"), "submit", "pipelines/digits_tune.yaml", "--serve", "--job-id", "tune-1"]
    command += ["--dashboard", cluster.dashboard_url]
    for override in overrides:
        command += ["--set", override]

    submitted = run(command, env, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "submitted job tune-1" in submitted.stdout
    logs = Lines(follow_logs(env, "tune-1"))
    running_seen = watch_trials_until(logs, cluster.nodes[0].metrics_port, "serving model")

    def all_ended(samples) -> bool:
        by_state = {labels["state"]: value for labels, value in samples if labels["experiment"] == "digits-tune"}
        return by_state.get("finished", 0) + by_state.get("stopped", 0) == 2

    trials = wait_for_samples(cluster.nodes[0].metrics_port, "ray_rayline_tune_trials", all_ended)
    by_state = {labels["state"]: value for labels, value in trials if labels["experiment"] == "digits-tune"}
    assert by_state["finished"] + by_state["stopped"] == 2, trials
    assert by_state["errored"] == 0 and by_state["running"] == 0
    assert running_seen, "the endpoint showed trials running during the search"
    epochs = wait_for_samples(cluster.nodes[0].metrics_port, "ray_rayline_train_epoch", lambda samples: samples)
    assert {labels["run"].split("/")[0] for labels, _ in epochs} == {"digits-tune"}, "per-trial training gauges"
    answer = http.post(f"http://127.0.0.1:{port}/predict", json={"rows": [[0.0] * len(PIXELS)]}, timeout=30)
    assert answer.status_code == 200, answer.text

    listed = run([str(VENV_BIN / "rayline"), "jobs", "list", "--dashboard", cluster.dashboard_url], env)
    assert "tune-1" in listed.stdout and "RUNNING" in listed.stdout, listed.stdout + listed.stderr
    stopped = run([str(VENV_BIN / "rayline"), "jobs", "stop", "tune-1", "--dashboard", cluster.dashboard_url], env)
    assert "stopping job tune-1" in stopped.stdout, stopped.stdout + stopped.stderr
    assert wait_for_status(env, cluster.dashboard_url, "tune-1", "STOPPED")


def follow_logs(env: dict, job_id: str) -> subprocess.Popen:
    address = env["RAY_API_SERVER_ADDRESS"]
    command = [str(VENV_BIN / "rayline"), "jobs", "logs", job_id, "--follow", "--dashboard", address]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def tune_trials(metrics_port: int) -> list[tuple[dict[str, str], float]]:
    samples = metric_samples(read_metrics(metrics_port), "ray_rayline_tune_trials")
    return [(labels, value) for labels, value in samples if labels["experiment"] == "digits-tune"]


def watch_trials_until(logs: Lines, metrics_port: int, prefix: str, timeout: float = 400) -> bool:
    """Poll the trial gauges while the job runs; True if any poll showed a running trial."""
    running_seen = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(line.startswith(prefix) for line in logs.lines):
        assert logs.process.poll() is None, "the job ended early:\n" + logs.text[-4000:]
        running = [value for labels, value in tune_trials(metrics_port) if labels["state"] == "running"]
        running_seen = running_seen or any(value > 0 for value in running)
        time.sleep(0.5)
    logs.wait_for(prefix, timeout=1)
    return running_seen


def wait_for_status(env: dict, address: str, job_id: str, status: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = run([str(VENV_BIN / "rayline"), "jobs", "status", job_id, "--dashboard", address], env).stdout
        if f"{job_id} {status}" in shown:
            return True
        time.sleep(1)
    return False


def test_rayline_submit_without_the_token_is_refused_with_a_fix(cluster, tmp_path):
    env = cluster.client_env()
    env.pop("RAY_AUTH_TOKEN_PATH")
    env.update({"RAY_AUTH_MODE": "token", "HOME": str(tmp_path)})  # no ~/.ray/auth_token either
    command = [str(VENV_BIN / "rayline"), "submit", "pipelines/digits.yaml", "--dashboard", cluster.dashboard_url]

    done = run(command + ["--set", f"storage.root={tmp_path}"], env, timeout=60)

    assert done.returncode == 2
    assert "RAY_AUTH_MODE=token but no token" in done.stderr

    env["RAY_AUTH_TOKEN"] = "not-the-token"
    done = run(command + ["--set", f"storage.root={tmp_path}"], env, timeout=60)
    assert done.returncode == 2
    assert "refused" in done.stderr and "not its token" in done.stderr
