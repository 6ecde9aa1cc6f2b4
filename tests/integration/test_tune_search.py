"""Ray Tune over distributed trials on the shared cluster. Resuming a search stopped with Ctrl-C, and one whose
driver crashed, is tested in test_faults_tune.py."""

import time
from pathlib import Path

import pytest
import yaml

from pipelines import digits_pipeline
from pipelines import write_pipeline as write_yaml
from rayline.config import load_config
from rayline.pipeline import search_and_register
from rayline.registry import Registry
from rayline.tune import PlanError, run_search

# In the second pytest process of `make test` (tests/run_suite.sh), on a cluster of its own there.
pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]

SPACE = {
    "train.optimizer.lr": {"loguniform": [0.0001, 0.03]},
    "model.hidden_sizes": {"choice": [[16], [64], [128, 64]]},
}


TRIALS = 4
"""Two rounds of two trials at once: enough for ASHA to compare trials at a rung and stop the weaker ones."""


def write_pipeline(tmp_path: Path, **tune) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    pipeline = digits_pipeline(
        tmp_path,
        "search",
        # Settings of the digits pipelines, not the defaults (those are tuned for small tabular sets).
        model={"dropout": 0.1, "hidden_sizes": None},
        train={"cpus_per_worker": 0.5, "optimizer": {"name": "adamw", "weight_decay": 0.0001}},
        tracking={"tensorboard": True},
        tune={
            "search_space": str(tmp_path / "space.yaml"),
            "num_samples": TRIALS,
            "metric": "val_accuracy",
            "mode": "max",
            "searcher": "optuna",
            "scheduler": {"kind": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
            **tune,
        },
    )
    return write_yaml(tmp_path / "pipeline.yaml", pipeline)


def test_asha_optuna_search_over_ddp_trials_finishes_and_registers_the_best(ray_cluster, tmp_path):
    cfg = load_config(write_pipeline(tmp_path))
    lines = []
    report = search_and_register(cfg, log=lines.append)

    experiment = Path(cfg.storage.root) / "tune" / "search"
    table = (experiment / "trials.txt").read_text().splitlines()
    assert len(table) == 1 + TRIALS, "a row per trial under the header"
    assert "2 trial(s) at once" in "\n".join(lines)
    prepared = [line for line in lines if line.startswith("data: prepared in")]
    parts = list((Path(cfg.storage.root) / "prepared").glob("*/parts-*"))
    assert len(prepared) == len(parts) == 1, "prepared once; every trial reads that one entry"
    stopped = [row for row in table[1:] if row.rstrip().endswith("yes")]
    assert stopped, "ASHA stopped at least one trial early"
    assert (experiment / "learning_curves.png").stat().st_size > 10_000
    # Each trial's curves beside its Train run, so `tensorboard --logdir <root>/runs` shows them side by side.
    boards = sorted((Path(cfg.storage.root) / "runs").glob("search-*/tensorboard/events.out.tfevents.*"))
    assert len({b.parent.parent.name for b in boards}) == TRIALS, boards

    record = Registry(cfg.storage.root).record(report.version)
    assert set(record["params"]) == set(SPACE)
    assert record["metrics"]["val_accuracy"] >= 0.85
    assert record["test_metrics"]["test_accuracy"] >= 0.85
    assert len(record["history"]) == record["epoch"] + 1, "the learning curve comes along"
    assert ray_cluster_is_idle(), "no trial left resources behind"


def test_a_search_that_cannot_fit_is_rejected_before_any_trial(ray_cluster, tmp_path):
    cfg = load_config(write_pipeline(tmp_path), ["train.num_workers=8"])
    with pytest.raises(PlanError, match="one trial needs 4.25 CPUs"):
        run_search(cfg, data=None, log=lambda _: None)
    assert not (Path(cfg.storage.root) / "tune").exists()


def ray_cluster_is_idle() -> bool:
    import ray

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
            return True
        time.sleep(1)
    return False
