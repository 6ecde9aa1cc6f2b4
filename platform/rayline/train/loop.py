"""The per-worker training loop Ray Train runs on every rank. Read it top to bottom."""

from __future__ import annotations

import resource
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rayline.config import PipelineConfig, TrainConfig
from rayline.data.prepared import SplitFiles
from rayline.data.preprocess import Preprocessor
from rayline.models import build_model
from rayline.tracking.runs import epoch_logger
from rayline.train.batches import ShardReader, flag_last
from rayline.train.checkpointing import report_with_checkpoint, restore_latest
from rayline.train.evaluate import SplitSums, all_reduce, collective_device
from rayline.train.optim import make_optimizer
from rayline.train.ps_worker import ServerOptimizer
from rayline.train.schedule import lr_factor, set_lr, steps_per_epoch
from rayline.train.shared_batches import SharedReader
from rayline.train.step import clip_grad_norm, forward_backward, forward_eval, local, make_loss_fn
from rayline.train.stopping import decide
from rayline.train.straggler import straggler_delay
from rayline.train.strategies import Parallelized, parallelize


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Returns (on every rank) how early stopping ended the run, or None when it ran every epoch."""
    # The config crossed a process boundary as JSON: validate it again rather than trust it.
    cfg = PipelineConfig.model_validate(loop_config["config"])
    preprocessor = Preprocessor.from_dict(loop_config["preprocessor"])
    classification = preprocessor.task == "classification"
    assert dist.is_initialized(), "Ray Train sets up the process group before the loop starts"
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.train.seed)

    model = build_model(cfg.model, **preprocessor.model_shape())
    weights = loop_config.get("class_weights")
    loss_fn = make_loss_fn(classification, None if weights is None else torch.tensor(weights, device=device))
    accumulation = cfg.train.grad_accumulation_steps
    # Pipeline schedules run the loss themselves, so theirs carries the accumulation scale.
    pm = parallelize(model.to(device), cfg.train, loss_fn=lambda o, y: loss_fn(o, y) / accumulation, device=device)
    optimizer = build_optimizer(pm, cfg.train)
    start_epoch, history = restore_latest(pm, optimizer, cfg, loop_config.get("resume_from"))
    server = optimizer if isinstance(optimizer, ServerOptimizer) else None
    if server is not None:
        server.connect()  # after the restore: the shards start from the checkpoint's parameters and state
    reader = split_reader(loop_config, cfg.train, classification, device)
    if server is not None and server.shares_work:  # the whole split, taken a unit at a time by whoever is ready
        train_data = SharedReader(reader("train", 0, 1), server.claim)
    else:
        train_data = reader("train", pm.dp_rank, pm.dp_size)
    val_data = reader("validation", pm.dp_rank, pm.dp_size)
    steps = steps_per_epoch(loop_config["train_rows"], cfg.train.data_parallel_size, cfg.train.batch_size)
    if history and (stopping := early_stop(history, cfg.train)) is not None:
        return stopping  # a resumed run that early stopping had already ended (under the current rule)
    rank_zero = ray.train.get_context().get_world_rank() == 0
    with epoch_logger(cfg, loop_config.get("tracking"), rank_zero, history) as log_epoch:
        for epoch in range(start_epoch, cfg.train.epochs):
            epoch_started_at, started = time.time(), time.perf_counter()
            loss_sum, rows, train_cpu_s, optimizer_steps = train_epoch(
                pm, optimizer, train_data, cfg.train, epoch, loss_fn, steps
            )
            train_seconds = time.perf_counter() - started
            if server is not None:
                server.pull()  # every rank's pushes are in (train_epoch ends in a collective): evaluate the latest
            val_metrics = evaluate_parallel(pm, val_data, preprocessor, cfg.train)
            metrics = {
                "epoch": epoch,
                "epochs_done": epoch + 1,
                "train_loss": loss_sum / rows,
                **val_metrics,
                "lr": optimizer.param_groups[0]["lr"],
                "samples_per_s": rows / train_seconds,
                # Per CPU-second of all workers: a throughput measure that other load on the machine moves less.
                "samples_per_cpu_s": rows / train_cpu_s,
                "epoch_time_s": time.perf_counter() - started,
                "epoch_started_at": epoch_started_at,
                **({} if pm.traffic is None else pm.traffic.epoch_metrics(optimizer_steps)),
                **({} if server is None else server.epoch_metrics()),
                **memory_metrics(pm, optimizer, device),
            }
            history.append(metrics)
            stopping = early_stop(history, cfg.train)
            if stopping is not None:
                metrics.update(stopping)  # in this epoch's report and checkpoint: the run's record says why it ended
            # Tracked before the report: Tune may stop a trial at its report, ending this process.
            log_epoch(epoch, metrics)
            report_with_checkpoint(pm, optimizer, history, preprocessor, cfg)
            if stopping is not None:
                return stopping  # Ray Train V2: returning ends the run cleanly, on every rank at once
    return None


def split_reader(loop_config: dict[str, Any], train: TrainConfig, classification: bool, device: torch.device):
    """reader(split, dp_rank, dp_size): that range of a prepared split (dp_size 1: the whole split)."""

    def reader(split: str, dp_rank: int, dp_size: int) -> ShardReader:
        return ShardReader(
            SplitFiles.from_dict(loop_config["splits"][split]),
            dp_rank=dp_rank,
            dp_size=dp_size,
            cache_bytes=int(train.cache_shard_mb * 2**20),
            window_bytes=int(train.shuffle_window_mb * 2**20),
            y_dtype=torch.int64 if classification else torch.float32,
            device=device,
        )

    return reader


INDEPENDENT_REPLICAS = ("ddp", "fsdp", "parameter_server")
"""Strategies whose every rank is a replica of its own, reading its own batches."""


def build_optimizer(pm: Parallelized, train: TrainConfig):
    """train.optimizer over this rank's parameters; under parameter_server, the shards' optimizer instead."""
    if pm.strategy == "parameter_server":
        return ServerOptimizer(pm.module, train, rank=pm.dp_rank, world=pm.dp_size)
    return make_optimizer(train.optimizer, pm.module.parameters())


def early_stop(history: list[dict], train: TrainConfig) -> dict[str, Any] | None:
    """The early-stopping verdict after the latest epoch; the same on every rank (their validation metrics are
    all-reduced), and rank 0's is broadcast anyway so no rank can leave the collectives alone."""
    rule = train.early_stopping
    if rule is None:
        return None
    decision = decide(history, rule)
    verdict = torch.tensor([float(decision.stop)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        verdict = verdict.to(collective_device())
        dist.broadcast(verdict, src=0)
    if not bool(verdict.item()):
        return None
    return {
        "stopped_early": 1,
        "best_epoch": decision.best_epoch,
        "epochs_without_improvement": decision.epochs_without_improvement,
    }


def train_epoch(
    pm: Parallelized, optimizer, data: ShardReader | SharedReader, train: TrainConfig, epoch: int, loss_fn, steps: int
) -> tuple[float, float, float, int]:
    """One pass over this rank's share of the training split; returns (loss * rows, rows) over all replicas, the
    CPU seconds all ranks spent on it and this rank's optimizer steps. The learning rate follows
    train.lr_schedule, set before each batch (`steps` is the expected number of batches, for the warm-up's progress
    through the epoch)."""
    cpu_started = time.process_time()
    pm.model.train()
    accumulation, bf16 = train.grad_accumulation_steps, train.precision == "bf16"
    sums = torch.zeros(2, dtype=torch.float64, device=data.device)  # loss * rows, rows (reporting ranks)
    label_checksum = torch.zeros((), dtype=torch.float64)
    optimizer_steps = 0
    # Pipeline stages exchange fixed-shape micro-batches.
    batches = data.batches(train.batch_size, seed=train.seed + epoch, drop_last=train.model_parallelism == "pipeline")
    delay = straggler_delay(dist.get_rank())  # None outside benchmarks/optim_bench.py
    for step, (batch, last_batch) in enumerate(flag_last(batches)):
        factor = lr_factor(train.lr_schedule, epochs=train.epochs, epoch=epoch, progress=data.progress(step, steps))
        set_lr(optimizer, train.optimizer.lr * factor)
        x_bf, y_b = batch["x"], batch["y"]
        # Replicas take equally many steps, so they agree on where an accumulation group ends.
        sync = (step + 1) % accumulation == 0 or last_batch
        loss = forward_backward(pm, x_bf, y_b, loss_fn, accumulation=accumulation, sync=sync, bf16=bf16)
        if delay is not None:
            delay()
        if sync:
            optimizer_step(pm, optimizer, train.grad_clip_norm)
            optimizer_steps += 1
        if pm.reports:  # summed on the device: no host sync per step
            sums += torch.stack([loss.double() * len(y_b), loss.new_tensor(len(y_b), dtype=torch.float64)])
        if pm.strategy not in INDEPENDENT_REPLICAS:
            label_checksum += checksum(y_b)
    require_same_batches(label_checksum, pm)
    cpu_s = torch.tensor([time.process_time() - cpu_started], dtype=torch.float64)
    loss_sum, rows, cpu_s = all_reduce(torch.cat([sums.cpu(), cpu_s])).tolist()  # one collective for all three
    return loss_sum, rows, cpu_s, optimizer_steps


def optimizer_step(pm: Parallelized, optimizer: torch.optim.Optimizer, grad_clip_norm: float | None) -> None:
    if grad_clip_norm is not None:
        clip_grad_norm(pm, grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def checksum(y_b: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(1, len(y_b) + 1, dtype=torch.float64, device=y_b.device)
    return (y_b.double() * positions).sum().cpu()


def require_same_batches(label_checksum: torch.Tensor, pm: Parallelized) -> None:
    """Ranks of one replica must have trained on identical batches (an invariant of own_batches)."""
    if pm.strategy in INDEPENDENT_REPLICAS:
        return
    seen: list[tuple[int, float]] = [(0, 0.0)] * dist.get_world_size()
    dist.all_gather_object(seen, (pm.dp_rank, float(label_checksum)))
    by_replica: dict[int, set[float]] = {}
    for dp_rank, value in seen:
        by_replica.setdefault(dp_rank, set()).add(value)
    assert all(len(values) == 1 for values in by_replica.values()), f"replica ranks read different data: {seen}"


@torch.no_grad()
def evaluate_parallel(pm: Parallelized, data: ShardReader, preprocessor: Preprocessor, train: TrainConfig) -> dict:
    """Validation metrics (val_*) of the parallelized model, summed across replicas so all ranks agree."""
    pm.model.eval()
    sums = SplitSums(preprocessor)
    bf16 = train.precision == "bf16"
    for batch in data.batches(train.batch_size, seed=None):
        outputs = forward_eval(pm, batch["x"], batch["y"], batch_size=train.batch_size, bf16=bf16)
        if pm.reports:
            sums.add(outputs, batch["y"])
    return sums.reduce().named("val")


def memory_metrics(pm: Parallelized, optimizer: torch.optim.Optimizer, device: torch.device) -> dict[str, float]:
    """Largest per-worker footprint: parameters + optimizer state this rank holds, and peak process memory."""
    mb = 2**20
    state = local_bytes(pm.module.parameters()) + local_bytes(
        t for per_param in optimizer.state.values() for t in per_param.values() if isinstance(t, torch.Tensor)
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    worst = all_reduce(torch.tensor([state / mb, peak / mb], dtype=torch.float64), op=dist.ReduceOp.MAX)
    return {"worker_state_mb": float(worst[0]), "peak_memory_mb": float(worst[1])}


def local_bytes(tensors) -> int:
    return sum(local(t).nbytes for t in tensors)
