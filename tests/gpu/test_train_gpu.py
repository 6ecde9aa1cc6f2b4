"""The CUDA path of every strategy: nccl process groups, device meshes on cuda, bf16 steps on the GPU.

Skipped without CUDA. The single-process tests run one rank on GPU 0; the Ray test trains a shipped pipeline
with use_gpu on as many GPUs as the machine has (strategies that split the model need two).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rayline.config import CompressionConfig, ModelConfig, OptimizerConfig, TrainConfig, load_config
from rayline.models import build_model
from rayline.runtime import free_port
from rayline.train.checkpointing import full_model_state
from rayline.train.loop import make_optimizer, memory_metrics, optimizer_step
from rayline.train.step import forward_backward, forward_eval, make_loss_fn
from rayline.train.strategies import make_mesh, parallelize

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(kind="transformer", token_size=8, d_model=64, n_heads=4, n_layers=2, ffn_size=128, dropout=0.0)
ONE_RANK = {
    "ddp": {"strategy": "ddp"},
    "fsdp": {"strategy": "fsdp"},
    "tensor": {"strategy": "tensor"},
    "pipeline": {"strategy": "pipeline", "batch_size": 8},
}


@pytest.fixture
def nccl_rank():
    """A one-rank nccl process group on GPU 0."""
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield torch.device("cuda", 0)
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ONE_RANK)
def test_mesh_is_a_cuda_mesh_over_nccl(nccl_rank, name):
    mesh = make_mesh(TrainConfig(num_workers=1, **ONE_RANK[name]), "cuda")
    assert mesh.device_type == "cuda"
    assert dist.get_backend(mesh.get_group()) == "nccl"


@pytest.mark.parametrize("name", ONE_RANK)
def test_each_strategy_steps_in_bf16_on_the_gpu(nccl_rank, name):
    train = TrainConfig(num_workers=1, precision="bf16", grad_clip_norm=1.0, **ONE_RANK[name])
    torch.manual_seed(0)
    model = build_model(MODEL, num_inputs=64, num_outputs=10).to(nccl_rank)
    loss_fn = make_loss_fn(classification=True)
    pm = parallelize(model, train, loss_fn=loss_fn, device=nccl_rank)
    optimizer = make_optimizer(OptimizerConfig(lr=0.01), pm.module.parameters())
    x_bf, y_b = torch.randn(8, 64, device=nccl_rank), torch.randint(0, 10, (8,), device=nccl_rank)
    losses = []
    for _ in range(5):
        losses.append(float(forward_backward(pm, x_bf, y_b, loss_fn, accumulation=1, sync=True, bf16=True)))
        optimizer_step(pm, optimizer, train.grad_clip_norm)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in pm.module.parameters()), "parameters stay fp32 under autocast"
    assert forward_eval(pm, x_bf, y_b, batch_size=8, bf16=True).shape == (8, 10)
    assert memory_metrics(pm, optimizer, nccl_rank)["peak_memory_mb"] > 0
    state = full_model_state(pm)
    assert all(t.device.type == "cpu" for t in state.values()), "the consolidated copy is for CPU serving"


@pytest.mark.parametrize("kind", ["fp16", "powersgd"])
def test_ddp_compression_hooks_step_in_bf16_over_nccl(nccl_rank, kind):
    compression = CompressionConfig(kind=kind, start_step=2)
    train = TrainConfig(num_workers=1, precision="bf16", compression=compression)
    torch.manual_seed(0)
    model = build_model(MODEL, num_inputs=64, num_outputs=10).to(nccl_rank)
    loss_fn = make_loss_fn(classification=True)
    pm = parallelize(model, train, loss_fn=loss_fn, device=nccl_rank)
    optimizer = make_optimizer(OptimizerConfig(lr=0.01), pm.module.parameters())
    x_bf, y_b = torch.randn(8, 64, device=nccl_rank), torch.randint(0, 10, (8,), device=nccl_rank)
    losses, ratios = [], []
    for _ in range(5):
        losses.append(float(forward_backward(pm, x_bf, y_b, loss_fn, accumulation=1, sync=True, bf16=True)))
        optimizer_step(pm, optimizer, train.grad_clip_norm)
        ratios.append(pm.traffic.epoch_metrics(1)["compression_ratio"])
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    if kind == "fp16":
        assert ratios == [2.0] * 5
    else:  # two plain steps, then the low-rank factors (12.2x fewer bytes for this transformer on CPU/gloo)
        assert ratios[:2] == [1.0, 1.0] and min(ratios[2:]) > 10, ratios


@pytest.mark.slow
@pytest.mark.parametrize(
    "pipeline", ["digits_transformer.yaml", "digits_transformer_fsdp.yaml", "digits_transformer_tensor.yaml"]
)
def test_shipped_pipeline_trains_on_gpus(ray_cluster, tmp_path, pipeline):
    import ray

    from rayline.data import write_digits
    from rayline.pipeline import train_and_register
    from rayline.registry import Registry

    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = 2 if pipeline != "digits_transformer.yaml" else min(gpus, 2)
    if gpus < workers or workers == 0:
        pytest.skip(f"needs {max(workers, 1)} GPUs in the Ray cluster, has {gpus}")
    write_digits(str(tmp_path / "digits.parquet"))
    cfg = load_config(
        REPO / "pipelines" / pipeline,
        [
            f"data.source={tmp_path / 'digits.parquet'}",
            f"storage.root={tmp_path / 'store'}",
            "train.use_gpu=true",
            f"train.num_workers={workers}",
            "train.precision=bf16",
            "train.epochs=6",
            "train.cpus_per_worker=0.5",
        ],
    )
    report = train_and_register(cfg, log=lambda _: None)
    assert report.test_metrics["test_accuracy"] >= 0.85
    loaded = Registry(cfg.storage.root).load(report.version)
    assert next(loaded.model.parameters()).device.type == "cpu"
