"""train.strategy auto on the session cluster: the strategy it picks trains, is printed and recorded, and a
re-run of the run name picks it again and resumes."""

from __future__ import annotations

import pytest

from pipelines import digits_config
from rayline.checkpoint import checkpoint_config
from rayline.pipeline import train_and_register
from rayline.registry import Registry

pytestmark = pytest.mark.slow

TRANSFORMER = {"kind": "transformer", "token_size": 8, "d_model": 64, "n_heads": 4, "n_layers": 2, "ffn_size": 128}
TIGHT_GB = 0.003
"""Between what tensor parallelism needs per worker for this model at batch 64 (about 2.1 MB) and fsdp (3.7 MB)."""


def config(root, epochs: int):
    train = {"strategy": "auto", "memory_per_worker_gb": TIGHT_GB, "epochs": epochs, "cpus_per_worker": 0.5}
    return digits_config(root, "digits-auto", model=TRANSFORMER, train=train)


def test_auto_picks_tensor_for_a_tight_budget_records_why_and_resumes_with_it(ray_cluster, tmp_path):
    lines: list[str] = []
    report = train_and_register(config(tmp_path, 2), log=lines.append)
    printed = [line for line in lines if line.startswith("train.strategy auto:")]
    assert printed and printed[0].startswith("train.strategy auto: tensor, as even sharded"), lines
    registry = Registry(tmp_path / "store")
    choice = registry.record(report.version)["evaluation"]["strategy_choice"]
    assert (choice["strategy"], choice["workers"]) == ("tensor", 2)
    assert choice["needs_bytes"]["tensor"] <= choice["budget_bytes"] < choice["needs_bytes"]["fsdp"]
    assert checkpoint_config(registry.checkpoint_dir(report.version)).train.strategy == "tensor"
    assert report.test_metrics["test_accuracy"] > 0.3, "chance is 0.1"

    seen: list[dict] = []
    train_and_register(config(tmp_path, 3), on_epoch=seen.append, log=lambda _: None)
    assert [m["epoch"] for m in seen] == [2], "the same choice again: the run resumes instead of being refused"
