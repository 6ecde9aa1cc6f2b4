"""One training micro-step, the optimizer step and an evaluation forward pass, the same for every strategy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from rayline.train.strategies import LossFn, Parallelized


def make_loss_fn(classification: bool) -> LossFn:
    if classification:
        return nn.functional.cross_entropy
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
    if isinstance(model, FSDPModule):
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


def clip_grad_norm(pm: Parallelized, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most max_norm; returns the norm before clipping.

    Sums of squares are taken over the local shards and added up across the mesh dimensions a gradient is
    sharded on (replicated copies count once), one all-reduce per kind of layout rather than one per
    parameter; pipeline stages hold disjoint parameters, so their sums are added too.
    """
    grads = [p.grad for p in pm.module.parameters() if p.grad is not None]
    assert grads, "clip after backward"
    total = torch.zeros((), dtype=torch.float32, device=local(grads[0]).device)
    sharded: dict[tuple, torch.Tensor] = {}
    for grad in grads:
        squares = local(grad).float().pow(2).sum()
        if isinstance(grad, DTensor):
            assert not any(p.is_partial() for p in grad.placements), "gradients are reduced before clipping"
            # Not is_shard(): FSDP over tensor-parallel shards uses _StridedShard, which is no Shard.
            key = (grad.device_mesh, tuple(d for d, p in enumerate(grad.placements) if not p.is_replicate()))
            sharded[key] = sharded.get(key, 0) + squares
        else:
            total += squares
    for (mesh, dims), squares in sharded.items():
        for dim in dims:
            dist.all_reduce(squares, group=mesh.get_group(dim))
        total += squares
    if pm.stage_group is not None:
        dist.all_reduce(total, group=pm.stage_group)
    norm = float(total.sqrt())
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for grad in grads:
            grad.mul_(scale)
    return norm


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


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


def replica_batches(
    batches: Iterable[Any], dp_rank: int, dp_size: int, *, fill_last: bool
) -> Iterator[tuple[Any, bool]]:
    """This replica's share of a stream that every rank reads in the same order: one batch of every dp_size.

    Yields (batch, counts). Every replica gets the same number of batches, since their collectives must pair
    up: a short last round is dropped, or with fill_last its missing slots repeat a batch that does not count.
    """
    round_: list[Any] = []
    for batch in batches:
        round_.append(batch)
        if len(round_) == dp_size:
            yield round_[dp_rank], True
            round_ = []
    if round_ and fill_last:
        yield (round_[dp_rank], True) if dp_rank < len(round_) else (round_[0], False)
