"""Parallel strategies: each `apply_*` splits one model across a device mesh, and `parallelize` picks them from config.

Ray Train only sets up the process group; meshes and wrapping are ours (RAY_NOTES §1). Every rank builds the
whole model from the same seed first, so every strategy starts from the same weights as ddp.

FSDP, tensor and pipeline parallelism are imported where they are applied: together they cost every worker
process about a second of imports, which a ddp run (the common case) would pay at every start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from rayline.config import CompressionConfig, PipelineParallelConfig, TrainConfig
from rayline.models import Transformer
from rayline.models.transformer import Block
from rayline.train.compression import GradientTraffic, attach_compression

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Parallelized:
    """One rank's view of the parallelized model."""

    model: nn.Module
    """What runs the forward pass: the wrapped model, or (pipeline) this rank's wrapped stage."""
    module: nn.Module
    """The unwrapped module whose parameters this rank trains; its state-dict keys are the whole model's."""
    strategy: str
    dp_rank: int
    """Which data-parallel replica this rank belongs to: ranks of one replica read the same batches."""
    dp_size: int
    reports: bool
    """Whether this rank's losses and outputs count towards the metrics (one rank per replica)."""
    schedule: object | None = None
    """The pipeline schedule (pipeline parallelism only)."""
    stage_group: dist.ProcessGroup | None = None
    """The pipeline's stages: their parameters are disjoint, so a global gradient norm sums over them."""
    first_stage: bool = True
    last_stage: bool = True
    traffic: GradientTraffic | None = None
    """ddp only: the bytes this rank sends to the gradient all-reduce (through train.compression's hook)."""

    @property
    def sharded(self) -> bool:
        """Whether no single rank holds the whole model's state, so checkpoints need the sharded copy."""
        return self.strategy not in ("ddp", "parameter_server")


def make_mesh(train: TrainConfig, device_type: str) -> DeviceMesh:
    """The device mesh of train.strategy: 1-D for ddp/fsdp/tensor/pipeline, [dp, tp|pp] for hybrid."""
    names = {"ddp": ("dp",), "fsdp": ("dp",), "tensor": ("tp",), "pipeline": ("pp",)}
    if train.strategy == "hybrid":
        inner = "tp" if train.model_parallelism == "tensor" else "pp"
        return init_device_mesh(device_type, tuple(train.mesh), mesh_dim_names=("dp", inner))
    return init_device_mesh(device_type, (train.num_workers,), mesh_dim_names=names[train.strategy])


def apply_ddp(
    model: nn.Module, *, mesh: DeviceMesh, device: torch.device, compression: CompressionConfig
) -> tuple[DistributedDataParallel, GradientTraffic]:
    """Replicate the model; gradients are averaged over the mesh in backward, compressed as `compression` says.
    Returns the model and the count of the bytes its all-reduce sends."""
    device_ids = [device] if device.type == "cuda" else None
    # Gradients as views into the all-reduce buckets: one copy fewer per step (and less memory).
    ddp = DistributedDataParallel(
        model, process_group=mesh.get_group(), device_ids=device_ids, gradient_as_bucket_view=True
    )
    return ddp, attach_compression(ddp, compression, mesh.get_group())


def apply_fsdp(model: nn.Module, *, mesh: DeviceMesh) -> nn.Module:
    """FSDP2: every parameter (and so its gradient and optimizer state) sharded over the mesh.

    Each transformer block is its own unit, so only one block's parameters are gathered at a time.
    """
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def apply_tensor(model: Transformer, *, mesh: DeviceMesh) -> Transformer:
    """Megatron-style tensor parallelism: per block, q/k/v and the first MLP projection are split by output
    columns (heads / hidden units), the attention output and the second MLP projection by input rows, so each
    block needs one all-reduce in the forward pass and one in the backward. Norms, embeddings and the head
    stay replicated."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(),
    }
    for block in model.layers.values():
        parallelize_module(block, mesh, plan)
    return model


def split_stage(model: Transformer, *, stage: int, num_stages: int) -> Transformer:
    """Keep this stage's contiguous run of blocks (the first stage also the embedding, the last the head)."""
    names = list(model.layers.keys())
    assert num_stages <= len(names), "config validation keeps stages <= n_layers"
    per_stage, extra = divmod(len(names), num_stages)
    start = stage * per_stage + min(stage, extra)
    keep = set(names[start : start + per_stage + (stage < extra)])
    for name in names:
        if name not in keep:
            del model.layers[name]
    if stage != 0:
        model.embed = None
    if stage != num_stages - 1:
        model.head = None
    return model


class Autocast(nn.Module):
    """Runs a pipeline stage's forward under bf16 autocast and hands fp32 on: the schedule runs forward, the
    loss and backward itself, so autocast cannot wrap just the forward from outside."""

    def __init__(self, module: nn.Module, device_type: str):
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.module(x).float()


def apply_pipeline(
    model: Transformer,
    *,
    mesh: DeviceMesh,
    pipeline: PipelineParallelConfig,
    loss_fn: LossFn,
    device: torch.device,
    bf16: bool,
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
) -> tuple[Transformer, nn.Module, object]:
    """Split the blocks into one stage per mesh rank; returns (stage module, what the schedule runs, schedule).

    `wrap` shards the stage over the data-parallel dimension (hybrid fsdp+pipeline).
    """
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    stage_index, num_stages = mesh.get_local_rank(), mesh.size()
    stage_module = split_stage(model, stage=stage_index, num_stages=num_stages)
    runner = wrap(Autocast(stage_module, device.type) if bf16 else stage_module)
    stage = PipelineStage(runner, stage_index, num_stages, device, group=mesh.get_group())
    schedule_class = ScheduleGPipe if pipeline.schedule == "gpipe" else Schedule1F1B
    # The schedule's own grad scaling divides all gradients held, accumulated ones included, on every step;
    # scaling each micro-batch's loss instead is right under gradient accumulation too.
    micro = pipeline.microbatches
    schedule = schedule_class(
        stage, n_microbatches=micro, loss_fn=lambda out, y: loss_fn(out, y) / micro, scale_grads=False
    )
    return stage_module, runner, schedule


def apply_hybrid(
    model: Transformer,
    *,
    mesh: DeviceMesh,
    train: TrainConfig,
    loss_fn: LossFn,
    device: torch.device,
) -> Parallelized:
    """2-D parallelism: fsdp+tensor shards tensor-parallel blocks over the data-parallel dimension;
    fsdp+pipeline shards each pipeline stage over it.

    Pipelines are sharded rather than DDP-replicated: DDP-wrapped stages fail in torch 2.13 at the second
    step with a reducer assertion (rebuilt parameter indices twice the parameters), while FSDP2 modules are
    the data parallelism torch.distributed.pipelining coordinates (gradient sync on the last micro-batch)."""
    dp = mesh["dp"]
    if train.hybrid == "fsdp+tensor":
        tp = mesh["tp"]
        model = apply_fsdp(apply_tensor(model, mesh=tp), mesh=dp)
        reports = tp.get_local_rank() == 0
        return Parallelized(model, model, "hybrid", dp.get_local_rank(), dp.size(), reports)
    pp = mesh["pp"]
    stage_module, runner, schedule = apply_pipeline(
        model,
        mesh=pp,
        pipeline=train.pipeline,
        loss_fn=loss_fn,
        device=device,
        bf16=train.precision == "bf16",
        wrap=lambda m: apply_fsdp(m, mesh=dp),
    )
    return pipeline_view(stage_module, runner, schedule, pp, "hybrid", dp.get_local_rank(), dp.size())


def pipeline_view(
    stage_module: nn.Module, runner: nn.Module, schedule, pp: DeviceMesh, strategy: str, dp_rank: int, dp_size: int
) -> Parallelized:
    last = pp.get_local_rank() == pp.size() - 1
    return Parallelized(
        runner,
        stage_module,
        strategy,
        dp_rank,
        dp_size,
        reports=last,
        schedule=schedule,
        stage_group=pp.get_group(),
        first_stage=pp.get_local_rank() == 0,
        last_stage=last,
    )


def parallelize(model: nn.Module, train: TrainConfig, *, loss_fn: LossFn, device: torch.device) -> Parallelized:
    """Apply train.strategy to a model already on `device`; every rank calls this with the same config."""
    assert train.strategy != "auto", "the driver resolves strategy auto before training (train/auto.py)"
    if train.strategy == "parameter_server":
        # No wrapper: each rank is a replica of its own, kept in step by the shards (train/ps_worker.py).
        return Parallelized(model, model, "parameter_server", dist.get_rank(), dist.get_world_size(), True)
    mesh = make_mesh(train, device.type)
    if train.strategy == "ddp":
        ddp, traffic = apply_ddp(model, mesh=mesh, device=device, compression=train.compression)
        return Parallelized(ddp, model, "ddp", mesh.get_local_rank(), mesh.size(), True, traffic=traffic)
    if train.strategy == "fsdp":
        model = apply_fsdp(model, mesh=mesh)
        return Parallelized(model, model, "fsdp", mesh.get_local_rank(), mesh.size(), True)
    if train.strategy == "tensor":
        model = apply_tensor(model, mesh=mesh)
        return Parallelized(model, model, "tensor", 0, 1, reports=mesh.get_local_rank() == 0)
    if train.strategy == "pipeline":
        bf16 = train.precision == "bf16"
        parts = apply_pipeline(model, mesh=mesh, pipeline=train.pipeline, loss_fn=loss_fn, device=device, bf16=bf16)
        return pipeline_view(*parts, mesh, "pipeline", 0, 1)
    return apply_hybrid(model, mesh=mesh, train=train, loss_fn=loss_fn, device=device)
