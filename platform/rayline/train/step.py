"""One training micro-step, the optimizer step and an evaluation forward pass, the same for every strategy."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rayline.train.strategies import LossFn, Parallelized


def make_loss_fn(classification: bool, class_weights: torch.Tensor | None = None) -> LossFn:
    """Cross-entropy (optionally class-weighted: the batch's weighted mean, sum(w_y * loss) / sum(w_y)) or mean
    squared error. Validation loss is always unweighted (train.evaluate), so checkpoints compare across
    class_weight settings and val_loss stays the plain log loss of the predicted probabilities."""
    if classification:
        if class_weights is None:
            return nn.functional.cross_entropy
        return lambda outputs, y: nn.functional.cross_entropy(outputs, y, weight=class_weights.to(outputs.dtype))
    return lambda outputs, y: nn.functional.mse_loss(outputs.squeeze(-1), y)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the data-parallel gradient reduction on accumulation steps that are not the last."""
    if isinstance(model, DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    if loaded_instance(model, "torch.distributed.fsdp", "FSDPModule"):
        model.set_requires_gradient_sync(sync)
    yield


def forward_backward(
    pm: Parallelized,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    accumulation: int,
    sync: bool,
    bf16: bool,
) -> torch.Tensor | None:
    """Accumulate one batch's gradients (scaled by 1/accumulation); returns its mean loss where this rank has it.

    Pipeline stages run the schedule instead: its loss_fn already divides by `accumulation` (and the number of
    micro-batches), and FSDP-sharded stages (hybrid fsdp+pipeline) reduce their gradients on every schedule
    step (correct, only more often than needed when accumulating).
    """
    if pm.schedule is not None:
        losses: list[torch.Tensor] = []
        args = (x,) if pm.first_stage else ()
        kwargs = {"target": y, "losses": losses} if pm.last_stage else {}
        pm.schedule.step(*args, **kwargs)
        # Each micro-batch's loss came back divided by accumulation * micro-batches.
        return torch.stack(losses).sum().detach() * accumulation if pm.last_stage else None
    with gradient_sync(pm.model, sync):
        with autocast(x.device, bf16):
            loss = loss_fn(pm.model(x), y)
        (loss / accumulation).backward()
    return loss.detach()


def clip_grad_norm(pm: Parallelized, max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most max_norm; returns the norm before clipping.

    Gradients are grouped by layout; each group's sum of squares is taken over the local shards in one foreach
    call and added up across the mesh dimensions the group is sharded on (replicated copies count once).
    Pipeline stages hold disjoint parameters, so their sums are added too.
    """
    groups: dict[tuple | None, list[nn.Parameter]] = {}
    for p in pm.module.parameters():
        if p.grad is not None:
            groups.setdefault(layout(p.grad), []).append(p)
    assert groups, "clip after backward"
    total = None
    for key, params in groups.items():
        squares = torch.nn.utils.get_total_norm([local(p.grad) for p in params], foreach=True) ** 2
        if key is not None:
            mesh, dims = key
            for dim in dims:
                dist.all_reduce(squares, group=mesh.get_group(dim))
        total = squares if total is None else total + squares
    if pm.stage_group is not None:
        dist.all_reduce(total, group=pm.stage_group)
    norm = total.sqrt()
    for params in groups.values():  # one layout per call: foreach cannot mix DTensors and tensors
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


def layout(grad: torch.Tensor) -> tuple | None:
    """None for a plain tensor; for a DTensor its mesh and the mesh dimensions it is split over."""
    if not is_dtensor(grad):
        return None
    assert not any(p.is_partial() for p in grad.placements), "gradients are reduced before clipping"
    # Not is_shard(): FSDP over tensor-parallel shards uses _StridedShard, which is no Shard.
    return grad.device_mesh, tuple(d for d, p in enumerate(grad.placements) if not p.is_replicate())


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_dtensor(t) else t


def is_dtensor(t: torch.Tensor) -> bool:
    return loaded_instance(t, "torch.distributed.tensor", "DTensor")


def loaded_instance(obj: object, module_name: str, class_name: str) -> bool:
    """isinstance without importing the module: FSDP and DTensor cost every worker about a second of imports,
    ddp never needs them, and no object of theirs can exist before a sharding strategy imported them."""
    module = sys.modules.get(module_name)
    return module is not None and isinstance(obj, getattr(module, class_name))


@torch.no_grad()
def forward_eval(pm: Parallelized, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, bf16: bool):
    """Model outputs for a batch where this rank has them (every rank must call this equally often)."""
    if pm.schedule is None:
        with autocast(x.device, bf16):
            return pm.model(x).float()
    # Stages exchange fixed-shape micro-batches, so a short last batch is padded and the padding dropped.
    rows = len(x)
    x, y = pad_rows(x, batch_size), pad_rows(y, batch_size)
    args = (x,) if pm.first_stage else ()
    kwargs = {"target": y, "losses": []} if pm.last_stage else {}
    outputs = pm.schedule.eval(*args, **kwargs)
    return outputs[:rows] if pm.last_stage else None


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    missing = rows - len(t)
    if missing <= 0:
        return t
    return torch.cat([t, t.new_zeros((missing, *t.shape[1:]))])
