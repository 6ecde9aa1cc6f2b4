"""Per-trial timings of a finished Tune search, read back from its results folder; shared by tune_asha.py and
tune_overhead.py.

A trial's start is what Ray Tune 2.60 records for it: `Trial.run_metadata.start_time`, the driver's
time.time() when the trial's actor has been created and the trial turns RUNNING (tune/experiment/trial.py
set_status), saved in the experiment state. Its first training step is epoch 0's `epoch_started_at`, which
rayline's training loop reports (time.time() on rank 0 just before the first batch). Start-up is the gap:
the trial function building its TorchTrainer, the Train controller, the worker group's placement group and
processes, the dataset shards and the model. The wait for a free slot before the actor is created is not
in it. As a cross-check each trial also carries Tune's own time_total_s of the first result (its actor's
first train() call to the first report) less epoch 0's epoch_time_s.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any


def trial_timings(experiment_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: Tune's start, start-up to the first step, epochs and the seconds they took."""
    from ray import tune

    analysis = tune.ExperimentAnalysis(str(experiment_dir))
    rows = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        started = trial.run_metadata.start_time
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status, "tune_started_at": started}
        if frame is not None and len(frame) and "epoch_started_at" in frame:
            first = frame.iloc[0]
            row["epochs"] = int(frame["epochs_done"].max())
            row["training_s"] = round(float(frame["epoch_time_s"].sum()), 3)
            row["tune_time_total_s"] = round(float(frame["time_total_s"].iloc[-1]), 3)
            row["first_step_at"] = float(first["epoch_started_at"])
            row["startup_s"] = None if started is None else round(row["first_step_at"] - started, 3)
            row["first_result_less_epoch_s"] = round(float(first["time_total_s"] - first["epoch_time_s"]), 3)
        else:
            row.update(epochs=0, training_s=0.0, tune_time_total_s=None, startup_s=None)
        rows.append(row)
    return sorted(rows, key=lambda r: r["tune_started_at"] or 0.0)


def spread(values: list[float], digits: int = 3) -> dict[str, float | int | None]:
    """Median, min, max and count of the values that are there (None left out)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(present), digits),
        "min": round(min(present), digits),
        "max": round(max(present), digits),
        "n": len(present),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages of this machine."""
    return [round(v, 2) for v in os.getloadavg()]
