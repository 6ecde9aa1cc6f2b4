"""The per-worker training loop Ray Train runs on every rank. Read it top to bottom."""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from rayline.config import OptimizerConfig, PipelineConfig
from rayline.data.preprocess import Preprocessor
from rayline.models import build_model
from rayline.registry import load_training_state, save_checkpoint


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    # The config crossed a process boundary as JSON: validate it again rather than trust it.
    cfg = PipelineConfig.model_validate(loop_config["config"])
    preprocessor = Preprocessor.from_dict(loop_config["preprocessor"])
    classification = preprocessor.task == "classification"
    torch.manual_seed(cfg.train.seed)

    model = build_model(cfg.model, num_inputs=preprocessor.num_inputs, num_outputs=preprocessor.num_outputs)
    optimizer = make_optimizer(cfg.train.optimizer, model.parameters())
    start_epoch, history = restore_latest(model, optimizer)
    model = ray.train.torch.prepare_model(model)  # moves to the device; wraps in DDP when world_size > 1
    device = ray.train.torch.get_device()
    loss_fn = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    label_dtype = torch.int64 if classification else torch.float32

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        model.train()
        train_sums = torch.zeros(2, dtype=torch.float64)  # loss * rows, rows
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            dtypes={"x": torch.float32, "y": label_dtype},
            device=device,
            local_shuffle_buffer_size=cfg.train.batch_size * 8,
            local_shuffle_seed=cfg.train.seed + epoch,
        )
        for batch in batches:
            x_bf, y_b = batch["x"], batch["y"]
            outputs = model(x_bf)
            loss = loss_fn(outputs, y_b) if classification else loss_fn(outputs.squeeze(-1), y_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_sums += torch.tensor([loss.item() * len(y_b), len(y_b)], dtype=torch.float64)
        train_sums = all_reduce_sum(train_sums)
        train_seconds = time.perf_counter() - started

        val_metrics = evaluate(model, val_shard, preprocessor, cfg.train.batch_size, device, label_dtype)
        metrics = {
            "epoch": epoch,
            "epochs_done": epoch + 1,
            "train_loss": float(train_sums[0] / train_sums[1]),
            **val_metrics,
            "samples_per_s": float(train_sums[1]) / train_seconds,
            "epoch_time_s": time.perf_counter() - started,
        }
        history.append(metrics)
        report_with_checkpoint(model, optimizer, history, preprocessor, cfg)


def make_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def restore_latest(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """Load the run's latest checkpoint if there is one; return the epoch to start from and the history."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as directory:
        model_state, optimizer_state, epoch, history = load_training_state(directory)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)
    return epoch + 1, history


@torch.no_grad()
def evaluate(model, shard, preprocessor: Preprocessor, batch_size: int, device, label_dtype) -> dict:
    """Validation metrics over every rank's shard, summed across ranks so all ranks agree."""
    model.eval()
    classification = preprocessor.task == "classification"
    # classification: loss*rows, correct, rows; regression: squared error, abs error, rows (scaled units)
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in shard.iter_torch_batches(
        batch_size=batch_size, dtypes={"x": torch.float32, "y": label_dtype}, device=device
    ):
        outputs = model(batch["x"])
        y_b = batch["y"]
        if classification:
            loss_sum = nn.functional.cross_entropy(outputs, y_b, reduction="sum").item()
            correct = (outputs.argmax(dim=-1) == y_b).sum().item()
            sums += torch.tensor([loss_sum, correct, len(y_b)], dtype=torch.float64)
        else:
            error = outputs.squeeze(-1) - y_b
            sums += torch.tensor([error.pow(2).sum().item(), error.abs().sum().item(), len(y_b)])
    sums = all_reduce_sum(sums)
    rows = max(float(sums[2]), 1.0)
    if classification:
        return {"val_loss": float(sums[0]) / rows, "val_accuracy": float(sums[1]) / rows}
    scale = preprocessor.target_std or 1.0
    return {
        "val_loss": float(sums[0]) / rows,
        "val_rmse": math.sqrt(float(sums[0]) / rows) * scale,
        "val_mae": float(sums[1]) / rows * scale,
    }


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # gloo reduces CPU tensors; nccl needs them on the GPU.
        device = ray.train.torch.get_device() if dist.get_backend() == "nccl" else torch.device("cpu")
        reduced = values.to(device)
        dist.all_reduce(reduced)
        return reduced.cpu()
    return values


def report_with_checkpoint(model, optimizer, history, preprocessor, cfg) -> None:
    """Every rank reports (it is a barrier); only rank 0 writes the checkpoint files."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            plain_model = model.module if hasattr(model, "module") else model
            save_checkpoint(
                directory,
                model_state={k: v.cpu() for k, v in plain_model.state_dict().items()},
                optimizer_state=optimizer.state_dict(),
                epoch=history[-1]["epoch"],
                metrics=history[-1],
                history=history,
                preprocessor=preprocessor,
                config=cfg,
            )
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(history[-1], checkpoint=checkpoint)
