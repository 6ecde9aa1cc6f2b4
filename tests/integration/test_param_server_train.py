"""Strategy parameter_server on a test cluster: sync with one worker is plain SGD step for step, async and
bounded learn digits like ddp (their workers sharing each epoch's rows), bounded never applies a gradient staler
than max_staleness, the checkpoint is registered, served and batch-predicted like any other and resumes, and a
killed worker and then a killed shard in one run end in a finished run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from faults import KillOnEpoch, kill_actor, live_actors, wait_until
from pipelines import PIXELS, digits_config, digits_source, quiet, train_once
from rayline.checkpoint import MODEL_FILE, OPTIMIZER_FILE
from rayline.config import PipelineConfig, TrainConfig
from rayline.data.split import TEST, assign_splits
from rayline.pipeline import TrainReport, format_epoch, train_and_register
from rayline.predict import predict_files
from rayline.registry import Registry
from rayline.serve.model import ServedModel
from rayline.train.ps_worker import ServerOptimizer

# On a cluster of its own in the second pytest process of make test: it balances the two (the session
# cluster's process ran about 4 minutes longer).
pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]

EPOCHS = 4
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
EXACT = {"model": {"kind": "mlp", "hidden_sizes": [32], "dropout": 0.0}}
RUNS = {
    "ddp-1": {"num_workers": 1},
    "ps-sync-1": {"num_workers": 1, "strategy": "parameter_server", "parameter_server": {"shards": 2}},
    "ddp": {},
    "ps-async": {"strategy": "parameter_server", "parameter_server": {"shards": 2, "mode": "async"}},
    "ps-bounded": {
        "strategy": "parameter_server",
        "parameter_server": {"shards": 2, "mode": "bounded", "max_staleness": 1},
    },
}
ACCURACY_GAP = 0.01
"""How far below ddp's test accuracy an async run may land (the task's bound: 1 point)."""


def config(root: Path, name: str, epochs: int = EPOCHS, **train) -> PipelineConfig:
    settings = {
        "epochs": epochs,
        "optimizer": SGD,
        "baseline": False,
        "early_stopping": None,
        "cpus_per_worker": 0.5,
        **RUNS[name],
        **train,
    }
    return digits_config(root, f"digits-{name}", train=settings, **EXACT)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("param-server")
    digits_source(root)
    return root


@pytest.fixture(scope="module")
def trained(ray_cluster, store):
    """Train each run once, on first use, into one registry."""
    return train_once(lambda name: config(store, name))


def weights(cfg: PipelineConfig, report: TrainReport) -> dict[str, torch.Tensor]:
    checkpoint = Registry(cfg.storage.root).checkpoint_dir(report.version)
    return torch.load(checkpoint / MODEL_FILE, weights_only=True)


def test_sync_with_one_worker_trains_exactly_like_plain_sgd(trained):
    ddp_cfg, ddp, ddp_epochs = trained("ddp-1")
    ps_cfg, ps, ps_epochs = trained("ps-sync-1")
    assert [m["train_loss"] for m in ps_epochs] == pytest.approx([m["train_loss"] for m in ddp_epochs], abs=1e-6)
    expected, got = weights(ddp_cfg, ddp), weights(ps_cfg, ps)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0)
    assert ps_epochs[-1]["ps_staleness_counts"] == [ps_epochs[-1]["ps_applied"]], "sync: every update of staleness 0"


def test_async_two_workers_reach_ddps_accuracy(trained):
    _, ddp, _ = trained("ddp")
    cfg, ps, epochs = trained("ps-async")
    reached, target = ps.test_metrics["test_accuracy"], ddp.test_metrics["test_accuracy"]
    print(f"test accuracy: ps async {reached:.4f}, ddp {target:.4f}; staleness {epochs[-1]['ps_staleness_counts']}")
    assert reached >= target - ACCURACY_GAP
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    pushes = epochs[-1]["ps_pushes_by_worker"]
    batches = EPOCHS * math.ceil(ps.num_rows["train"] / cfg.train.batch_size)
    assert sum(pushes) == batches and min(pushes) > 0, f"the workers share each epoch's rows: {pushes}"
    assert "staleness mean" in format_epoch(epochs[-1], EPOCHS)


def test_bounded_never_applies_a_gradient_staler_than_max_staleness(trained):
    cfg, report, epochs = trained("ps-bounded")
    noted = Registry(cfg.storage.root).record(report.version)["evaluation"]["parameter_server"]
    histogram = {int(k): n for k, n in noted["staleness_histogram"].items()}
    print(f"bounded: staleness {histogram}, refused {noted['refused']}")
    assert max(histogram) <= 1 and noted["staleness_max"] <= 1
    assert max(histogram) == 1 or noted["refused"] > 0, "two workers pushing in turn make gradients stale"
    assert (noted["mode"], noted["max_staleness"], noted["shards"]) == ("bounded", 1, 2)
    assert sum(histogram.values()) == noted["applied"] > 0
    assert report.test_metrics["test_accuracy"] >= 0.8, "chance is 0.1"


def test_a_shard_over_rays_inline_limit_steps_exactly_through_pieces(ray_cluster):
    """A 131 KB layer (more than one call may carry inline as one object) travels in pieces both ways, and the
    parameters that come back are exactly one SGD step from those pushed from."""
    import ray

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    server = {"shards": 2, "mode": "async"}
    train = TrainConfig(optimizer={**SGD, "momentum": 0.0}, strategy="parameter_server", parameter_server=server)
    optimizer = ServerOptimizer(model, train, rank=0, world=1)
    assert max(layout.parts for layout in optimizer.layouts) > 1, "the largest shard goes in several pieces"
    try:
        optimizer.connect()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(torch.randn(16, 64)).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), before[name] - SGD["lr"] * grads[name], atol=1e-6, rtol=0)
        assert optimizer.versions == [1, 1]
    finally:
        for shard in optimizer.shards:
            ray.kill(shard)


def test_a_parameter_server_checkpoint_is_served_batch_predicted_and_resumes(trained, store, tmp_path):
    cfg, first, first_epochs = trained("ps-async")
    checkpoint = Registry(cfg.storage.root).checkpoint_dir(first.version)
    saved = torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True)["parameter_server"]
    assert len(saved["shards"]) == 2 and all(s["optimizer"]["state"] for s in saved["shards"]), "momentum saved"

    source = pd.read_parquet(cfg.data.source)
    digits = source[assign_splits(source, cfg.data.split) == TEST].sample(40, random_state=0)
    served = ServedModel.load(cfg.storage.root, first.version.name, first.version.version)
    body = json.dumps({"rows": digits[PIXELS].to_numpy().tolist()}).encode()
    labels = [str(p["label"]) for p in served.predictions(served.forward(served.inputs(body, "application/json")))]
    assert sum(a == str(b) for a, b in zip(labels, digits["label"], strict=True)) >= 0.8 * len(digits)
    digits[PIXELS].to_csv(tmp_path / "in.csv", index=False)
    used, written = predict_files(cfg.storage.uri, str(first.version), str(tmp_path / "in.csv"), str(tmp_path / "o.pq"))
    assert (used, written) == (first.version, len(digits))
    assert pd.read_parquet(tmp_path / "o.pq")["prediction"].astype(str).tolist() == labels

    seen: list[dict] = []
    train_and_register(config(store, "ps-async", epochs=EPOCHS + 1), on_epoch=seen.append, log=quiet)
    assert [m["epoch"] for m in seen] == [EPOCHS], "the re-run continues after the last epoch"
    assert seen[0]["train_loss"] < 0.5 * first_epochs[0]["train_loss"], "from the saved weights, not from scratch"
    assert seen[0]["ps_applied"] > first_epochs[-1]["ps_applied"], "the shards' counters continue"
    assert seen[0]["ps_version"] > first_epochs[-1]["ps_version"], "and their versions"


def test_a_killed_worker_then_a_killed_shard_each_restart_from_the_last_checkpoint_and_the_run_finishes(
    ray_cluster, store, tmp_path
):
    """One run, two faults: a training worker is killed once epoch 0 is reported (so checkpointed), then one of the
    shards the restarted worker group started, at the next epoch reported; each time the worker group restarts
    with shards of its own from the last checkpoint, and the run ends with every epoch trained. Four epochs leave
    the second kill two epochs to land in."""
    worker = KillOnEpoch(1, lambda: kill_actor("RayTrainWorker"), shard_pids, "new shards after the worker's death")
    shard = KillOnEpoch(2, lambda: kill_actor("ServerShard"), shard_pids, "new shards after the shard's death")
    digits_source(tmp_path)
    cfg = config(tmp_path, "ps-async", epochs=4, max_failures=2)
    report = train_and_register(cfg, on_epoch=lambda m: (worker(m), shard(m)), log=quiet)
    seen = shard.seen
    print(f"worker killed: {worker.fault}; shard killed: {shard.fault}; epochs reported {seen}")
    assert "replaced_in_s" in worker.fault and "replaced_in_s" in shard.fault, (worker.fault, shard.fault)
    assert seen[-1] == 3 and sorted(set(seen)) == [0, 1, 2, 3], seen
    assert report.test_metrics["test_accuracy"] >= 0.8
    wait_until(lambda: not shard_pids(), 60, "the run's shards to end with it")


def shard_pids() -> set[int]:
    return {a.pid for a in live_actors("ServerShard")}
