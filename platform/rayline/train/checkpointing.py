"""Checkpoints of a parallelized model: a consolidated copy for serving, a sharded copy for resuming.

The layout itself is the registry's; this module only gathers the state every strategy holds. Distributed
checkpointing (torch.distributed.checkpoint, half a second of imports per worker) is imported only by the
sharded strategies' paths: a ddp replica holds the whole model already.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from rayline.checkpoint import (
    load_sharded_state,
    load_training_state,
    require_same_strategy,
    save_checkpoint,
    save_sharded_state,
)
from rayline.config import PipelineConfig
from rayline.data.preprocess import Preprocessor
from rayline.train.strategies import Parallelized


def full_model_state(pm: Parallelized) -> dict[str, torch.Tensor] | None:
    """The whole plain model's state dict on CPU at rank 0 (None elsewhere); a collective."""
    rank = dist.get_rank()
    if not pm.sharded:
        return {k: v.detach().cpu() for k, v in pm.module.state_dict().items()} if rank == 0 else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if pm.schedule is None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(pm.module, options=options)  # gathers DTensor shards to rank 0
        return state if rank == 0 else None
    # Pipeline stages hold disjoint layers under the whole model's names: rank 0 merges one copy of each.
    # A collective within a stage's data-parallel group when fsdp+pipeline shards the stage.
    stage_state = get_model_state_dict(pm.module, options=StateDictOptions(full_state_dict=True))
    own = {k: v.cpu() for k, v in stage_state.items()} if pm.dp_rank == 0 else {}
    parts: list[dict] | None = [{} for _ in range(dist.get_world_size())] if rank == 0 else None
    dist.gather_object(own, parts, dst=0)
    return {k: v for part in parts for k, v in part.items()} if rank == 0 else None


def sharded_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Optimizer state keyed by parameter name: with per-group lists, pipeline stages' entries would share keys
    # ("param_groups.0") and the sharded copy would keep one stage's.
    return StateDictOptions(flatten_optimizer_state_dict=True)


def sharded_state(pm: Parallelized, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(pm.module, optimizer, options=sharded_options())
    return {"model": model_state, "optimizer": optimizer_state}


def report_with_checkpoint(
    pm: Parallelized,
    optimizer: torch.optim.Optimizer,
    history: list[dict],
    preprocessor: Preprocessor,
    cfg: PipelineConfig,
) -> None:
    """Every rank reports (it is a barrier). Rank 0 writes the consolidated checkpoint; under sharded
    strategies every rank also writes its shards, and Ray Train merges the ranks' directories."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    with tempfile.TemporaryDirectory() as directory:
        digests: dict[str, str] = {}
        if pm.sharded:
            own = save_sharded_state(directory, sharded_state(pm, optimizer))
            everyone: list[dict] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(everyone, own)
            digests = {k: v for part in everyone for k, v in part.items()}
        model_state = full_model_state(pm) if dist.is_initialized() else pm.module.state_dict()
        if rank == 0:
            save_checkpoint(
                directory,
                model_state=model_state,
                # Sharded strategies keep the optimizer state in the sharded copy only.
                optimizer_state={} if pm.sharded else optimizer.state_dict(),
                epoch=history[-1]["epoch"],
                metrics=history[-1],
                history=history,
                preprocessor=preprocessor,
                config=cfg,
                sharded_sha256=digests,
            )
        has_files = rank == 0 or pm.sharded
        checkpoint = ray.train.Checkpoint.from_directory(directory) if has_files else None
        ray.train.report(history[-1], checkpoint=checkpoint)


def restore_latest(
    pm: Parallelized, optimizer: torch.optim.Optimizer, cfg: PipelineConfig, fallback: str | None = None
) -> tuple[int, list[dict]]:
    """Load the run's latest checkpoint if there is one; return the epoch to start from and the history.

    `fallback` is the run's last complete checkpoint when Ray Train's own record of the run was lost. The
    learning-rate schedule has no state of its own (train.schedule: a function of the epoch), and early stopping
    decides from the history, so both continue where the run stopped."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and fallback is not None:
        checkpoint = ray.train.Checkpoint(fallback)
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as directory:
        require_same_strategy(Path(directory), cfg)
        if not pm.sharded:
            model_state, optimizer_state, epoch, history = load_training_state(directory)
            pm.module.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
            return epoch + 1, history
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = sharded_state(pm, optimizer)
        epoch, history = load_sharded_state(directory, state)
        set_state_dict(
            pm.module,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=sharded_options(),
        )
        return epoch + 1, history
