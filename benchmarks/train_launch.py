"""The command-to-model half of train_bench.py: `rayline train` and `torchrun` each launched as a command, nothing
started beforehand, on the same Parquet file, model, optimizer, batch size and 2 processes.

Per run: launch to the first training step, epoch 0 (time and samples/s), steady-state samples/s (median of the
epochs after the first) and the wall time from the command to its end product (rayline: exit 0 with a registered
model version; torchrun: the model's state_dict saved to a file and every process exited). The times come from
the epochs' own epoch_started_at (wall clock) set against the time.time() taken just before the launch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = {
    "launch_to_first_step_s": 8.0,  # rayline, seconds, at most
    "epoch0_samples_per_s_ratio": 0.8,  # rayline / torchrun, at least
    "end_to_end_ratio": 1.2,  # rayline / torchrun, at most
    "steady_state_ratio": 0.95,  # rayline / torchrun, at least
}
MARKERS = {
    "cluster_up_s": "training ",  # interpreter, imports, config, embedded Ray cluster started
    "data_ready_s": "data: ",  # preflight, read, split, preprocessor fitted
    "first_epoch_line_s": "epoch 1/",
    "registered_s": "registered model ",  # test split scored, baseline fitted, version registered
}
"""rayline's phases: the start of the line `rayline train` prints when each has ended."""


@dataclass(frozen=True)
class Job:
    pipeline: Path
    source: Path
    epochs: int
    rayline_sets: list[str] = field(default_factory=list)
    """Extra `--set`s for rayline beyond the data file, storage root and epochs (e.g. train.baseline=false)."""
    torchrun_niceness: int = 15
    timeout_s: float = 1800.0

    def rayline_command(self, root: Path) -> list[str]:
        sets = [
            f"data.source={self.source}",
            f"storage.root={root}",
            f"train.epochs={self.epochs}",
            *self.rayline_sets,
        ]
        return [str(BIN / "rayline"), "train", str(self.pipeline), *(a for s in sets for a in ("--set", s))]

    def torchrun_command(self, output: Path, model_file: Path) -> list[str]:
        return [
            # Ray starts its workers at niceness RAY_worker_niceness (15); the training processes of both sides run
            # at the same priority on a machine shared with other work.
            *["nice", "-n", str(self.torchrun_niceness)],
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "benchmarks" / "torchrun_ddp.py"),
            f"--pipeline={self.pipeline}",
            f"--source={self.source}",
            f"--epochs={self.epochs}",
            f"--output={output}",
            f"--save={model_file}",
        ]


@dataclass
class Launch:
    launched_at: float
    wall_s: float
    lines: list[tuple[float, str]]
    """(seconds after launch, line) of everything the command printed, stdout and stderr."""


class CommandFailed(RuntimeError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def launch(command: list[str], env: dict[str, str], timeout_s: float, log: Path) -> Launch:
    """Run `command` in a session of its own, stamping its output lines; SIGTERM then SIGKILL to that session (by
    its id) if it runs past `timeout_s`. Raises with the last lines when it exits non-zero."""
    launched = time.time()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    watchdog = threading.Timer(timeout_s, stop_session, args=(proc,))
    watchdog.start()
    try:
        lines = [(round(time.time() - launched, 2), line.rstrip("\n")) for line in proc.stdout]
        status = proc.wait()
    except BaseException:  # Ctrl-C here does not reach the command: it runs in a session of its own
        watchdog.cancel()
        stop_session(proc)
        raise
    wall_s = time.time() - launched
    watchdog.cancel()
    log.write_text("".join(f"{t:8.2f}  {line}\n" for t, line in lines))
    if status != 0:
        tail = "\n".join(line for _, line in lines[-15:])
        raise CommandFailed(f"{command[0]} ... exited {status} after {wall_s:.0f} s (log: {log}):\n{tail}", status)
    return Launch(launched, wall_s, lines)


def stop_session(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


def epoch_figures(epochs: list[dict], launched_at: float) -> dict:
    steady = statistics.median(m["samples_per_s"] for m in epochs[1:]) if len(epochs) > 1 else None
    return {
        "launch_to_first_step_s": round(epochs[0]["epoch_started_at"] - launched_at, 2),
        "epoch0_time_s": round(epochs[0]["epoch_time_s"], 2),
        "epoch0_samples_per_s": round(epochs[0]["samples_per_s"], 1),
        "steady_samples_per_s": None if steady is None else round(steady, 1),
        "epoch_samples_per_s": [round(m["samples_per_s"], 1) for m in epochs],
        "epoch_time_s": [round(m["epoch_time_s"], 2) for m in epochs],
    }


def run_rayline(job: Job, work: Path) -> dict:
    from rayline.registry import Registry

    root = work / "rayline-store"
    load_before = os.getloadavg()[0]
    run = launch(
        job.rayline_command(root), {**os.environ, "PYTHONUNBUFFERED": "1"}, job.timeout_s, work / "rayline.log"
    )
    version = Registry(root).resolve()  # raises if `rayline train` exited 0 without registering a model
    epochs = latest_history(root)
    phases = {}
    for phase, start in MARKERS.items():
        phases[phase] = next((t for t, line in run.lines if line.startswith(start)), None)
    figures = epoch_figures(epochs, run.launched_at)
    phases["first_step_s"] = figures["launch_to_first_step_s"]
    return {
        **figures,
        "end_to_end_s": round(run.wall_s, 2),
        "registered": str(version),
        "val_accuracy": round(epochs[-1]["val_accuracy"], 4),
        "phases": phases,
        "startup_breakdown": startup_breakdown(phases),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def startup_breakdown(phases: dict) -> dict[str, float | None]:
    """Command to first step in three consecutive parts, from the phases `rayline train` marks."""
    up, data, first = phases["cluster_up_s"], phases["data_ready_s"], phases["first_step_s"]
    known = up is not None and data is not None
    return {
        "cli_imports_and_cluster_start_s": up,  # interpreter, imports, config, embedded Ray cluster
        "data_preparation_s": round(data - up, 2) if known else None,  # preflight, read, split, preprocessor
        "trainer_start_to_first_step_s": round(first - data, 2) if known else None,  # controller, workers, shards
    }


def latest_history(root: Path) -> list[dict]:
    """Every epoch's metrics: the history in the run's newest checkpoint (Ray Train keeps the latest checkpoint
    whatever train.checkpoint.keep says; the registered one is the best, which may be an earlier epoch)."""
    from rayline.checkpoint import STATE_FILE
    from rayline.registry_layout import read_json

    states = [read_json(path) for path in (root / "runs").rglob(STATE_FILE)]
    if not states:
        raise RuntimeError(f"no checkpoint with a {STATE_FILE} under {root / 'runs'}")
    return max(states, key=lambda state: state["epoch"])["history"]


def run_torchrun(job: Job, work: Path) -> dict:
    output, model_file = work / "torchrun.json", work / "torchrun_model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    run = launch(job.torchrun_command(output, model_file), env, job.timeout_s, work / "torchrun.log")
    if not model_file.is_file():
        raise RuntimeError(f"torchrun exited 0 but wrote no model to {model_file}")
    written = json.loads(output.read_text())
    figures = epoch_figures(written["epochs"], run.launched_at)
    return {
        **figures,
        "end_to_end_s": round(run.wall_s, 2),
        "model_file_bytes": model_file.stat().st_size,
        "phases": {k.removesuffix("_at") + "_s": round(v - run.launched_at, 2) for k, v in written["phases"].items()},
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def run_pair(job: Job, work: Path, number: int) -> dict:
    """One round (numbered from 0): rayline first in rounds 1, 3, ..., torchrun first in rounds 2, 4, ..., so
    neither side always runs first into whatever the machine is doing."""
    runs, failed = {}, []
    order = ("rayline", "torchrun") if number % 2 == 0 else ("torchrun", "rayline")
    for side in order:
        run = functools.partial(run_rayline if side == "rayline" else run_torchrun, job)
        runs[side] = run_side(side, run, work / side, failed)
        print(f"[round {number + 1}] {side}: {brief(runs[side])}", flush=True)
    a, b = runs["rayline"], runs["torchrun"]
    return {
        "order": list(order),
        "failed_attempts": failed,
        "rayline": a,
        "torchrun": b,
        "epoch0_samples_per_s_ratio": round(a["epoch0_samples_per_s"] / b["epoch0_samples_per_s"], 3),
        "end_to_end_ratio": round(a["end_to_end_s"] / b["end_to_end_s"], 3),
        "steady_state_ratio": ratio(a["steady_samples_per_s"], b["steady_samples_per_s"]),
    }


def run_side(side: str, run, work: Path, failed: list[dict], attempts: int = 2) -> dict:
    """`run(work)` for one side; a command that failed (another Ray instance on a shared machine taking the port
    the embedded cluster had chosen, say) is recorded in `failed` and run again, up to `attempts` in all."""
    for attempt in range(1, attempts + 1):
        attempt_dir = work if attempt == 1 else work.with_name(f"{work.name}-attempt-{attempt}")
        attempt_dir.mkdir(parents=True, exist_ok=True)
        try:
            return run(attempt_dir)
        except CommandFailed as err:
            failed.append({"side": side, "attempt": attempt, "error": str(err)[-2000:]})
            print(f"{side} attempt {attempt} failed: {str(err).splitlines()[0]}", flush=True)
            if attempt == attempts or err.status == 2:  # 2: rayline's exit for a user error, the same every time
                raise
    raise AssertionError("unreachable")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a / b, 3)


def brief(run: dict) -> str:
    return (
        f"first step {run['launch_to_first_step_s']:.1f} s, epoch 0 {run['epoch0_time_s']:.1f} s "
        f"({run['epoch0_samples_per_s']:.0f} samples/s), steady {run['steady_samples_per_s'] or 0:.0f} samples/s, "
        f"end to end {run['end_to_end_s']:.1f} s, load {run['load_avg_1m']}"
    )


def spread(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "rounds": values}


def run_timeline(job: Job, work: Path) -> dict:
    """Where rayline's start-up goes: train_timeline.py runs the same `rayline train` command line in its own
    process and reads its embedded cluster's actor creation events before the cluster goes away."""
    failed: list[dict] = []
    found = run_side("timeline", functools.partial(timeline_once, job), work, failed)
    parts = timeline_breakdown(found["phases"], found["actors"])
    return {"epochs": job.epochs, "startup_breakdown": parts, **found, "failed_attempts": failed}


def timeline_breakdown(phases: dict, actors: list[dict]) -> dict[str, float | None]:
    """Command to first step in consecutive parts (they add up to first_step_s), from the phases and the actors'
    creation events (FINISHED: the actor's __init__ returned)."""

    def ready(name: str) -> float | None:
        return max((a["FINISHED"] for a in actors if a["actor"].startswith(name) and "FINISHED" in a), default=None)

    marks = [
        ("cli_imports_and_cluster_start_s", phases["cluster_up_s"]),
        ("data_preparation_s", phases["data_ready_s"]),
        ("train_controller_ready_s", ready("TrainController.")),
        ("worker_group_ready_s", ready("RayTrainWorker.")),  # with the placement group and its helpers
        ("workers_ready_to_first_step_s", phases["first_step_s"]),  # process group, shards, model, optimizer
    ]
    parts, previous = {}, 0.0
    for name, mark in marks:
        parts[name] = None if mark is None or previous is None else round(mark - previous, 2)
        previous = mark
    return parts


def timeline_once(job: Job, work: Path) -> dict:
    root, output = work / "rayline-store", work / "timeline.json"
    since = time.time()
    script = [sys.executable, str(REPO / "benchmarks" / "train_timeline.py"), f"--since={since}"]
    command = [*script, f"--json={output}", f"--root={root}", "--", *job.rayline_command(root)[1:]]
    launch(command, {**os.environ, "PYTHONUNBUFFERED": "1"}, job.timeout_s, work / "timeline.log")
    return json.loads(output.read_text())


def summarise(rounds: list[dict]) -> dict:
    """Medians and spread over the rounds, and each target met or not (on the medians)."""
    keys = ("launch_to_first_step_s", "epoch0_time_s", "epoch0_samples_per_s", "steady_samples_per_s", "end_to_end_s")
    sides = {side: {k: spread([r[side][k] for r in rounds]) for k in keys} for side in ("rayline", "torchrun")}
    parts = rounds[0]["rayline"]["startup_breakdown"]
    sides["rayline"]["startup_breakdown"] = {
        k: spread([r["rayline"]["startup_breakdown"][k] for r in rounds]) for k in parts
    }
    ratios = {k: spread([r[k] for r in rounds]) for k in TARGETS if k != "launch_to_first_step_s"}
    startup = sides["rayline"]["launch_to_first_step_s"]["median"]
    torchrun_e2e = sides["torchrun"]["end_to_end_s"]["median"]

    def at_least(key: str) -> dict:
        value = ratios[key] and ratios[key]["median"]
        return {"value": value, "target": f">= {TARGETS[key]}", "met": value is not None and value >= TARGETS[key]}

    end_to_end = ratios["end_to_end_ratio"]["median"]
    targets = {
        "launch_to_first_step_s": {
            "value": startup,
            "target": f"<= {TARGETS['launch_to_first_step_s']} s (rayline, command to first step)",
            "met": startup <= TARGETS["launch_to_first_step_s"],
        },
        "epoch0_samples_per_s_ratio": at_least("epoch0_samples_per_s_ratio"),
        "end_to_end_ratio": {
            "value": end_to_end,
            "target": f"<= {TARGETS['end_to_end_ratio']} on a job torchrun finishes in about 60 s",
            "met": end_to_end <= TARGETS["end_to_end_ratio"],
            "torchrun_end_to_end_s": torchrun_e2e,
            "torchrun_about_60_s": 45 <= torchrun_e2e <= 75,
        },
        "steady_state_ratio": at_least("steady_state_ratio"),
    }
    return {**sides, "ratios": ratios, "targets": targets}
