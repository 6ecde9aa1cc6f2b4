"""The search report reads trials as Tune left them, failed ones included."""

import json
from types import SimpleNamespace

import pandas as pd
from pyarrow.fs import LocalFileSystem

from rayline.tune.driver import last_error_line
from rayline.tune.report import collect_trials, format_table


def result(path, config, frame=None, error=None, metrics=None):
    return SimpleNamespace(
        path=str(path),
        config=config,
        metrics_dataframe=frame,
        error=error,
        metrics=metrics,
        filesystem=LocalFileSystem(),  # as Result.filesystem is for a local experiment
    )


def test_a_trial_that_failed_before_reporting_keeps_its_params_and_shows_as_error(tmp_path):
    failed = tmp_path / "trial_b"
    failed.mkdir()
    (failed / "params.json").write_text(json.dumps({"model.hidden_sizes": "[64]"}))
    frame = pd.DataFrame({"epochs_done": [1, 2], "val_loss": [0.5, 0.3]})
    rows = collect_trials(
        [
            result(tmp_path / "trial_a", {"model.hidden_sizes": "[32]"}, frame, metrics={"trial_id": "a"}),
            result(failed, None, error=MemoryError("can't allocate memory")),
        ],
        "val_loss",
        "min",
        max_t=4,
    )
    assert [(r.trial_id, r.status, r.best) for r in rows] == [("a", "OK", 0.3), ("trial_b", "ERROR", None)]
    assert rows[1].params == {"model.hidden_sizes": "[64]"}
    table = format_table(rows, "val_loss")
    assert "ERROR" in table.splitlines()[2]


def test_the_printed_cause_is_the_last_line_of_the_trace():
    trial = SimpleNamespace(get_error=lambda: "Traceback ...\n  File x\nMemoryError: can't allocate memory\n\n")
    assert last_error_line(trial) == "MemoryError: can't allocate memory"
    assert last_error_line(SimpleNamespace(get_error=lambda: None)) == "no error text was stored"


def test_the_cause_is_read_from_the_trials_local_error_file_first(tmp_path):
    (tmp_path / "error.txt").write_text("Traceback\nRuntimeError: can't allocate memory\n")
    trial = SimpleNamespace(error_file=str(tmp_path / "error.txt"), get_error=lambda: None)
    assert last_error_line(trial) == "RuntimeError: can't allocate memory"
