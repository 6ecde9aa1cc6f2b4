"""Same results, less memory: every strategy's first steps on the same data, measured inside Ray Train workers.

One seed, one stream of global batches (each data-parallel replica takes its slice), dropout off. ddp,
fsdp, tensor and pipeline are the same computation in a different layout, so their losses agree to fp32
reduction-order noise; gradient accumulation and clipping are on, so they are covered too.
"""

from __future__ import annotations

import sys

import pytest
import ray.cloudpickle
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer

from rayline.config import ModelConfig, OptimizerConfig, TrainConfig
from rayline.models import build_model
from rayline.train.loop import make_optimizer, memory_metrics, optimizer_step
from rayline.train.step import forward_backward, make_loss_fn
from rayline.train.strategies import parallelize

pytestmark = pytest.mark.slow

STEPS = 6
GLOBAL_BATCH = 16
FP32_TOLERANCE = 1e-4
"""Largest difference between two strategies' fp32 losses at any step (they differ in summation order only)."""
BF16_TOLERANCE = 3e-2
"""Largest difference between a bf16 run's losses and fp32 ddp's (bf16 keeps 8 bits of mantissa)."""
MODEL = ModelConfig(kind="transformer", token_size=8, d_model=64, n_heads=4, n_layers=2, ffn_size=256, dropout=0.0)

# The workers unpickle run_steps from here; this module is not importable on their side.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run_steps(train: TrainConfig) -> dict:
    """STEPS optimizer steps of the rayline step functions under train.strategy; a collective on every rank."""
    torch.manual_seed(0)
    model = build_model(MODEL, num_inputs=64, num_outputs=10)
    loss_fn = make_loss_fn(classification=True)
    accumulation = train.grad_accumulation_steps
    device = torch.device("cpu")
    pm = parallelize(model, train, loss_fn=lambda o, y: loss_fn(o, y) / accumulation, device=device)
    optimizer = make_optimizer(OptimizerConfig(name="adamw", lr=0.01), pm.module.parameters())
    batches = torch.Generator().manual_seed(1)
    losses = []
    for step in range(STEPS * accumulation):
        x_bf = torch.randn(GLOBAL_BATCH, 64, generator=batches)
        y_b = torch.randint(0, 10, (GLOBAL_BATCH,), generator=batches)
        rows = GLOBAL_BATCH // pm.dp_size
        x_bf, y_b = x_bf[pm.dp_rank * rows :][:rows], y_b[pm.dp_rank * rows :][:rows]
        sync = (step + 1) % accumulation == 0
        loss = forward_backward(
            pm, x_bf, y_b, loss_fn, accumulation=accumulation, sync=sync, bf16=train.precision == "bf16"
        )
        if sync:
            optimizer_step(pm, optimizer, train.grad_clip_norm)
        # Mean over replicas of each replica's mean loss (equal-sized slices): the global batch's mean loss.
        total = torch.tensor([loss.item() if pm.reports else 0.0, float(pm.reports)], dtype=torch.float64)
        torch.distributed.all_reduce(total)
        losses.append(float(total[0] / total[1]))
    return {"losses": losses, **memory_metrics(pm, optimizer, device)}


def worker(config: dict) -> dict:
    """Rank 0's return value is the run's (Result.return_value)."""
    return {
        name: run_steps(TrainConfig(num_workers=config["num_workers"], **fields))
        for name, fields in config["runs"].items()
    }


def measure(tmp_path, num_workers: int, runs: dict[str, dict]) -> dict[str, dict]:
    trainer = TorchTrainer(
        worker,
        train_loop_config={"num_workers": num_workers, "runs": runs},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="equivalence", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    return result.return_value


COMMON = {"grad_accumulation_steps": 2, "grad_clip_norm": 1.0, "batch_size": 8}


@pytest.fixture(scope="module")
def two_workers(ray_cluster, tmp_path_factory):
    runs = {s: {"strategy": s, **COMMON} for s in ("ddp", "fsdp", "tensor", "pipeline")}
    runs |= {f"{s}-bf16": {"strategy": s, "precision": "bf16", **COMMON} for s in ("ddp", "fsdp", "tensor", "pipeline")}
    return measure(tmp_path_factory.mktemp("eq2"), 2, runs)


def assert_close(losses: list[float], reference: list[float], tolerance: float) -> None:
    assert len(losses) == len(reference)
    worst = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
    assert worst <= tolerance, f"losses {losses} differ from {reference} by up to {worst:.2e}"


@pytest.mark.parametrize("strategy", ["fsdp", "tensor", "pipeline"])
def test_first_step_losses_match_ddp(two_workers, strategy):
    ddp = two_workers["ddp"]["losses"]
    assert ddp[-1] != ddp[0], "the optimizer moved the weights"
    assert_close(two_workers[strategy]["losses"], ddp, FP32_TOLERANCE)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "tensor", "pipeline"])
def test_bf16_autocast_tracks_fp32(two_workers, strategy):
    assert_close(two_workers[f"{strategy}-bf16"]["losses"], two_workers["ddp"]["losses"], BF16_TOLERANCE)


def test_fsdp_holds_a_half_share_of_parameters_and_optimizer_state(two_workers):
    ddp, fsdp = two_workers["ddp"]["worker_state_mb"], two_workers["fsdp"]["worker_state_mb"]
    # 1/N of ddp's, plus FSDP's padding of parameters whose first dimension does not split evenly.
    assert 0.45 <= fsdp / ddp <= 0.55, (fsdp, ddp)
    assert two_workers["tensor"]["worker_state_mb"] < 0.8 * ddp, "tensor parallelism splits the projections"


@pytest.mark.slow
def test_hybrid_meshes_match_ddp_on_four_workers(two_workers, tmp_path):
    runs = {
        "fsdp+tensor": {"strategy": "hybrid", "hybrid": "fsdp+tensor", "mesh": (2, 2), **COMMON},
        "fsdp+pipeline": {"strategy": "hybrid", "hybrid": "fsdp+pipeline", "mesh": (2, 2), **COMMON},
    }
    four = measure(tmp_path, 4, runs)
    for name in runs:
        assert_close(four[name]["losses"], two_workers["ddp"]["losses"], FP32_TOLERANCE)
        assert four[name]["worker_state_mb"] < 0.3 * two_workers["ddp"]["worker_state_mb"], name
