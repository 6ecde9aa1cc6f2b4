"""train.strategy auto: the strategy chosen on the driver from what one worker must hold, before any worker starts.

The model is built on PyTorch's meta device (shapes only, no memory) and one row is run through it to count the
activations each layer keeps for the backward pass. Per worker, each strategy needs:

- ddp: weights, gradients, DDP's gradient buckets (a second copy of the gradients) and optimizer state, plus the
  activations of batch_size rows;
- fsdp: weights, gradients and optimizer state sharded over the workers, plus the largest layer gathered whole
  (parameters and gradient) while it runs, plus the activations of batch_size rows;
- tensor (transformers): what the transformer blocks hold, weights and activations alike, split over the workers;
  the token embedding and the head replicated; one replica takes the rows all the workers' ddp steps would;
- pipeline (transformers): everything split over the stages, and the activations of the micro-batches in flight.

torch is imported only when a plan is made: every run's and every Tune trial's driver imports this module.

The first that fits wins, in that order (the simplest and fastest that fits). The same model, data, settings and
memory always give the same choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rayline.config import ConfigError, PipelineConfig, TrainConfig, check_parallel_plan

if TYPE_CHECKING:
    from torch import nn

GB = 2**30
FLOAT_BYTES = 4
"""Parameters, gradients and optimizer state are float32 under every precision (bf16 only autocasts)."""
RUNTIME_GB = 0.5
"""What a training worker holds besides the model: the interpreter, torch, Ray's worker and the batch pipeline."""
OPTIMIZER_STATES = {"adam": 2, "adamw": 2}
"""float32 values the optimizer keeps per parameter (sgd: one with momentum, none without)."""


@dataclass(frozen=True)
class ModelFootprint:
    parameters: int
    largest_unit: int
    """Parameters of the largest layer FSDP gathers whole at once."""
    block_parameters: int
    """Parameters inside transformer blocks (0 for mlp and cnn): what tensor parallelism splits."""
    activations_per_row: int
    block_activations_per_row: int


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str
    reason: str
    memory_per_worker_gb: float
    needs_gb: dict[str, float]
    """GB one worker needs under each strategy that was considered."""

    def record(self) -> dict:
        return asdict(self)


def footprint(cfg: PipelineConfig, model_shape: dict) -> ModelFootprint:
    import torch

    from rayline.models import build_model

    with torch.device("meta"):
        model = build_model(cfg.model, **model_shape)
        activations, in_blocks = count_activations(model, model_shape["num_inputs"])
    units = [m for m in model.modules() if not list(m.children())] or [model]
    block = sum(p.numel() for name, p in model.named_parameters() if name.startswith("layers."))
    return ModelFootprint(
        parameters=sum(p.numel() for p in model.parameters()),
        largest_unit=max(sum(p.numel() for p in unit.parameters()) for unit in units),
        block_parameters=block if cfg.model.kind == "transformer" else 0,
        activations_per_row=activations,
        block_activations_per_row=in_blocks if cfg.model.kind == "transformer" else 0,
    )


def count_activations(model: nn.Module, num_inputs: int) -> tuple[int, int]:
    """Output elements of every leaf module for one row: all of them, and those inside transformer blocks."""
    import torch

    counts = {"all": 0, "blocks": 0}

    def counter(inside: bool):
        def hook(_module, _inputs, output):
            numel = sum(t.numel() for t in (output if isinstance(output, tuple) else (output,)))
            counts["all"] += numel
            counts["blocks"] += numel if inside else 0

        return hook

    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(counter(name.startswith("layers."))) for name, m in leaves]
    try:
        model(torch.zeros(1, num_inputs))
    finally:
        for handle in handles:
            handle.remove()
    return counts["all"], counts["blocks"]


def optimizer_states(cfg: PipelineConfig) -> int:
    opt = cfg.train.optimizer
    if opt.name == "sgd":
        return 1 if opt.momentum > 0 else 0
    return OPTIMIZER_STATES[opt.name]


def needs_gb(cfg: PipelineConfig, fp: ModelFootprint) -> dict[str, float]:
    """GB per worker under each strategy this model can use with cfg.train.num_workers workers."""
    n, batch = cfg.train.num_workers, cfg.train.batch_size
    states = FLOAT_BYTES * (2 + optimizer_states(cfg))  # weights, gradients, optimizer state per parameter
    activations = FLOAT_BYTES * fp.activations_per_row * batch
    needs = {
        "ddp": fp.parameters * (states + FLOAT_BYTES) + activations,
        "fsdp": fp.parameters * states / n + 2 * FLOAT_BYTES * fp.largest_unit + activations,
    }
    if fp.block_parameters:
        replica_batch = batch * n  # one replica takes the rows of every worker's ddp step
        outside = fp.parameters - fp.block_parameters
        outside_rows = fp.activations_per_row - fp.block_activations_per_row
        needs["tensor"] = (outside + fp.block_parameters / n) * states + FLOAT_BYTES * replica_batch * (
            outside_rows + fp.block_activations_per_row / n
        )
        needs["pipeline"] = fp.parameters * states / n + FLOAT_BYTES * replica_batch * fp.activations_per_row / n
    return {k: round(v / GB + RUNTIME_GB, 6) for k, v in needs.items()}


def memory_per_worker_gb(cfg: PipelineConfig) -> float:
    """train.memory_per_worker_gb, or: on GPU, the driver's first GPU; on CPU, this machine's memory shared by the
    workers it would hold (all of them on a single machine)."""
    train = cfg.train
    if train.memory_per_worker_gb is not None:
        return train.memory_per_worker_gb
    if train.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "train.strategy auto with use_gpu: this process sees no GPU to size the workers by; set "
                "train.memory_per_worker_gb to the GPU memory of a worker"
            )
        return torch.cuda.get_device_properties(0).total_memory / GB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB / train.num_workers


def choose_strategy(cfg: PipelineConfig, model_shape: dict) -> StrategyChoice:
    fp = footprint(cfg, model_shape)
    budget = memory_per_worker_gb(cfg)
    needs = needs_gb(cfg, fp)
    size = f"{fp.parameters:,} parameters"
    have = f"a worker has {gb(budget)}"
    if needs["ddp"] <= budget:
        return StrategyChoice("ddp", f"a whole replica ({size}) needs {gb(needs['ddp'])} and {have}", budget, needs)
    for strategy in ("fsdp", "tensor", "pipeline"):
        if strategy in needs and needs[strategy] <= budget and splits(cfg, strategy):
            reason = (
                f"a whole replica ({size}) needs {gb(needs['ddp'])} but {have}; {strategy} over "
                f"{cfg.train.num_workers} workers needs {gb(needs[strategy])} each"
            )
            return StrategyChoice(strategy, reason, budget, needs)
    considered = ", ".join(f"{k} {gb(v)}" for k, v in needs.items())
    raise ConfigError(
        f"train.strategy auto: no strategy fits the model ({size}) in {gb(budget)} per worker "
        f"({considered}); add workers, lower train.batch_size, or raise train.memory_per_worker_gb"
    )


def gb(value: float) -> str:
    return f"{value:.3f} GB"


def splits(cfg: PipelineConfig, strategy: str) -> bool:
    """Whether the model can be split this way over the workers (heads and ffn divisible, a layer per stage)."""
    if cfg.train.num_workers < 2 and strategy != "ddp":
        return False
    try:
        check_parallel_plan(cfg.model, resolved(cfg, strategy).train)
    except ValueError:
        return False
    return True


def resolved(cfg: PipelineConfig, strategy: str) -> PipelineConfig:
    """cfg with strategy auto replaced by the choice (validated as if written so); tensor and pipeline keep the rows
    per step of ddp's workers."""
    train = cfg.train.model_dump()
    train["strategy"], train["memory_per_worker_gb"] = strategy, None  # the budget is in the choice's record
    if strategy in ("tensor", "pipeline"):
        train["batch_size"] *= cfg.train.num_workers
        train["pipeline"]["microbatches"] = math.gcd(train["batch_size"], train["pipeline"]["microbatches"])
    return cfg.model_copy(update={"train": TrainConfig.model_validate(train)})


def resolve_strategy(cfg: PipelineConfig, model_shape: dict) -> tuple[PipelineConfig, StrategyChoice | None]:
    """cfg unchanged unless train.strategy is auto; then cfg with the chosen strategy, and why."""
    if cfg.train.strategy != "auto":
        return cfg, None
    choice = choose_strategy(cfg, model_shape)
    return resolved(cfg, choice.strategy), choice
