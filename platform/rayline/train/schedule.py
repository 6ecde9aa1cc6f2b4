"""Learning-rate schedules as a pure function of (epoch, step): every rank computes the same value, and a
resumed run continues where it stopped because the epoch is all the state a schedule has."""

from __future__ import annotations

import math

import torch

from rayline.config import LRScheduleConfig


def lr_factor(schedule: LRScheduleConfig, *, epochs: int, epoch: int, progress: float = 0.0) -> float:
    """Share of optimizer.lr to use `progress` (0 ≤ progress < 1) of the way through `epoch`.

    Warm-up rises linearly from 1 / (warmup_epochs + 1) at the first step to 1 when warm-up ends, per step.
    After it, constant stays at 1; step multiplies by gamma every step_epochs (counted from the end of
    warm-up); cosine falls once per epoch from 1 to min_lr_ratio at the last epoch.
    """
    warmup = schedule.warmup_epochs
    if epoch < warmup:
        done = epoch + min(max(progress, 0.0), 1.0)
        return (1.0 + done) / (warmup + 1.0)
    since = epoch - warmup
    if schedule.kind == "step":
        return schedule.gamma ** (since // schedule.step_epochs)
    if schedule.kind == "cosine":
        span = max(epochs - warmup - 1, 1)
        floor = schedule.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(since / span, 1.0)))
    return 1.0


def steps_per_epoch(train_rows: int, replicas: int, batch_size: int) -> int:
    """Optimizer steps one replica takes per epoch (as near as the split sizes tell; warm-up only needs its
    progress through the epoch)."""
    return max(1, math.ceil(train_rows / replicas / batch_size))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
