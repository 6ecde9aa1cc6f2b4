"""Gradient compression for ddp through PyTorch's DDP communication hooks, and the bytes each step sends.

The hooks are PyTorch's own (fp16_compress_hook, powerSGD_hook); each is wrapped to add up the bytes of the tensors
it hands to the all-reduce on this rank. Without compression DDP's built-in all-reduce sends every bucket as it
is: one fp32 copy of the gradients per step.

PowerSGD's state (its P and Q factors and the error-feedback residuals) lives in the worker process only: it is
not in checkpoints, so a resumed run starts it afresh, with start_step steps of plain all-reduce again.
"""

# No `from __future__ import annotations`: DDP checks a hook's annotations at registration and compares them with
# the real classes, which string annotations are not.

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from rayline.config import CompressionConfig

FP16_BYTES = 2


@dataclass
class GradientTraffic:
    """What this rank sends to the gradient all-reduce, counted since the last epoch's figures were taken."""

    gradient_bytes: int
    """One step's gradients at full precision: what DDP's built-in all-reduce sends every step."""
    hooked: bool
    """Whether a compression hook counts the bytes (else every step sends gradient_bytes)."""
    sent_bytes: int = 0

    def epoch_metrics(self, steps: int) -> dict[str, float]:
        """Mean bytes sent per optimizer step over the last `steps` steps, and how many times fewer than
        uncompressed; starts the count again."""
        sent = self.sent_bytes if self.hooked else self.gradient_bytes * steps
        self.sent_bytes = 0
        if steps == 0:
            return {}
        per_step = sent / steps
        return {"grad_bytes_per_step": per_step, "compression_ratio": self.gradient_bytes / per_step}


@dataclass
class HookState:
    """What a counting hook gets from DDP on every bucket."""

    traffic: GradientTraffic
    process_group: dist.ProcessGroup
    powersgd: powerSGD_hook.PowerSGDState | None = None
    one_bucket_at_a_time: bool = False
    """PowerSGD over gloo: each bucket's all-reduces finish before the next bucket's start."""


def attach_compression(
    model: DistributedDataParallel, compression: CompressionConfig, process_group: dist.ProcessGroup
) -> GradientTraffic:
    """Register compression.kind's hook on the DDP model; returns the count of the bytes it sends."""
    traffic = GradientTraffic(gradient_bytes=full_gradient_bytes(model), hooked=compression.kind != "none")
    state = HookState(traffic, process_group, one_bucket_at_a_time=dist.get_backend(process_group) == "gloo")
    if compression.kind == "fp16":
        model.register_comm_hook(state, counted_fp16_hook)
    elif compression.kind == "powersgd":
        state.powersgd = powerSGD_hook.PowerSGDState(
            process_group=process_group,
            matrix_approximation_rank=compression.rank,
            start_powerSGD_iter=compression.start_step,
        )
        model.register_comm_hook(state, counted_powersgd_hook)
    return traffic


def full_gradient_bytes(model: torch.nn.Module) -> int:
    """DDP's buckets hold the gradient of every parameter that requires one."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def counted_fp16_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """fp16_compress_hook all-reduces the whole bucket cast to fp16."""
    state.traffic.sent_bytes += bucket.buffer().numel() * FP16_BYTES
    return default_hooks.fp16_compress_hook(state.process_group, bucket)


def counted_powersgd_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Before start_step the hook all-reduces the bucket as it is. From then on it all-reduces a P (rows x rank)
    and a Q (columns x rank) factor per matrix it compresses plus the tensors it leaves whole (biases, matrices too
    small to gain), and adds those element counts to its own total_numel_after_compression as it splits them."""
    powersgd, buffer = state.powersgd, bucket.buffer()
    whole = powersgd.iter < powersgd.start_powerSGD_iter
    counted_before = powersgd.total_numel_after_compression
    future = powerSGD_hook.powerSGD_hook(powersgd, bucket)
    sent = buffer.numel() if whole else powersgd.total_numel_after_compression - counted_before
    state.traffic.sent_bytes += sent * buffer.element_size()
    if state.one_bucket_at_a_time and not whole:
        # gloo runs a future's callbacks on its own two worker threads, and powerSGD_hook's callbacks block on the
        # bucket's next all-reduce: with two buckets in flight both threads wait, and the workers hang or crash.
        # Finishing each bucket before the next starts leaves a thread free (buckets no longer overlap).
        future.wait()
    return future
