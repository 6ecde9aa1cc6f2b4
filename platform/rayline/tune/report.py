"""The search report: a table of trials and a PNG of every learning curve with the ASHA rungs marked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayline.config import ConfigError
from rayline.storage import ObjectPath, location, ray_storage
from rayline.tune.driver import SUMMARY_FILE


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    best: float | None
    epochs: int
    stopped_early: bool
    status: str
    curve: list[tuple[int, float]]


def collect_trials(results, metric: str, mode: str, max_t: int) -> list[TrialRow]:
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        curve: list[tuple[int, float]] = []
        if frame is not None and metric in frame and "epochs_done" in frame:
            curve = [(int(e), float(v)) for e, v in zip(frame["epochs_done"], frame[metric], strict=True)]
        values = [v for _, v in curve]
        best = (max(values) if mode == "max" else min(values)) if values else None
        epochs = max((e for e, _ in curve), default=0)
        status = "ERROR" if result.error else "OK"
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        rows.append(
            TrialRow(trial_id, trial_params(result), best, epochs, status == "OK" and 0 < epochs < max_t, status, curve)
        )
    return sorted(rows, key=lambda r: (r.best is None, -(r.best or 0) if mode == "max" else (r.best or 0)))


def trial_params(result) -> dict[str, Any]:
    """A trial's parameters; a trial that failed before reporting has no Result.config, but Tune wrote them to
    params.json in its folder (local or on an object store) when it started."""
    if result.config is not None:
        return dict(result.config)
    try:
        with result.filesystem.open_input_stream(f"{result.path}/params.json") as params:
            return json.loads(params.read())
    except (OSError, ValueError):
        return {}


def format_table(rows: list[TrialRow], metric: str) -> str:
    names = sorted({k for r in rows for k in r.params})
    header = ["trial", *[n.split(".")[-1] for n in names], f"best {metric}", "epochs", "stopped early"]
    lines = [header]
    for r in rows:
        shown = [format_value(r.params.get(n)) for n in names]
        best = r.status if r.best is None else f"{r.best:.4f}" + (f" ({r.status})" if r.status != "OK" else "")
        lines.append([r.trial_id, *shown, best, str(r.epochs), "yes" if r.stopped_early else "no"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def asha_rungs(scheduler: dict[str, Any]) -> list[float]:
    """Epoch counts at which ASHA compares trials: grace_period * reduction_factor^k, below max_t."""
    if scheduler.get("kind") != "asha":
        return []
    rungs, milestone = [], float(scheduler["grace_period"])
    while milestone < scheduler["max_t"]:
        rungs.append(milestone)
        milestone *= scheduler["reduction_factor"]
    return rungs


def plot_curves(rows: list[TrialRow], metric: str, rungs: list[float]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if r.curve:
            epochs, values = zip(*r.curve, strict=True)
            style = "--" if r.stopped_early else "-"
            ax.plot(epochs, values, style, marker="o", markersize=3, label=r.trial_id)
    for i, rung in enumerate(rungs):
        ax.axvline(rung, color="grey", linestyle=":", linewidth=1, label="ASHA rung" if i == 0 else None)
    ax.set_xlabel("epochs trained")
    ax.set_ylabel(metric)
    ax.set_title(f"{len(rows)} trials (dashed: stopped early by ASHA)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return png.getvalue()


def write_report(results, experiment_dir: Path | ObjectPath) -> str:
    """Write trials.txt and learning_curves.png next to the results; return the table."""
    summary = json.loads((experiment_dir / SUMMARY_FILE).read_text())
    metric, mode, scheduler = summary["metric"], summary["mode"], summary["scheduler"]
    rows = collect_trials(results, metric, mode, scheduler["max_t"])
    table = format_table(rows, metric)
    (experiment_dir / "trials.txt").write_text(table + "\n")
    (experiment_dir / "learning_curves.png").write_bytes(plot_curves(rows, metric, asha_rungs(scheduler)))
    return table


def report_from_dir(experiment_dir: str | Path | ObjectPath) -> str:
    """Regenerate the report of a finished (or interrupted) search from its results folder alone: a local path,
    or an object-store folder (as an ObjectPath or a URI)."""
    if not isinstance(experiment_dir, ObjectPath):
        experiment_dir = location(str(experiment_dir))
    if isinstance(experiment_dir, Path):
        experiment_dir = experiment_dir.resolve()
    if not (experiment_dir / SUMMARY_FILE).is_file():
        raise ConfigError(f"{experiment_dir} is not a rayline search folder (no {SUMMARY_FILE})")
    from ray import tune

    path, filesystem = ray_storage(experiment_dir)
    results = tune.ResultGrid(tune.ExperimentAnalysis(path, storage_filesystem=filesystem))
    return write_report(results, experiment_dir)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
