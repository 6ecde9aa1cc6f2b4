"""train.strategy auto: pick ddp, fsdp, tensor or pipeline on the driver, before any worker starts.

The model is built on the meta device (no memory, no data) to count its parameters and, with one forward pass of
train.batch_size rows, the elements every leaf module outputs (what backward keeps: the activation estimate).
Per worker, each strategy needs about:

    ddp       state + activations                      (state = weights + gradients + optimizer state, fp32)
    fsdp      state / N + largest parameter gathered + activations
    tensor    state / N + activations / N              (transformer; N divides n_heads and ffn_size)
    pipeline  state / N + activations / N              (transformer; N <= n_layers)

against train.memory_per_worker_gb. The first that fits, in that order, is chosen: replicating the model is the
fastest where it fits, and sharding it (fsdp) keeps data parallelism before splitting layers. Deterministic: a
function of the config and the data's shape only, so a resumed run picks the strategy its checkpoint has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from rayline.config import ConfigError, ModelConfig, PipelineConfig, TrainConfig

FP32 = 4
GIB = 2**30
OPTIMIZER_COPIES = {"adam": 2, "adamw": 2, "sgd": 1}
"""fp32 tensors of optimizer state per parameter (sgd: the momentum buffer; none without momentum)."""


@dataclass(frozen=True)
class Estimate:
    parameters: int
    largest_parameter: int
    state_bytes: int
    """Weights, gradients and optimizer state, all fp32."""
    activation_bytes: int
    budget_bytes: int
    workers: int


@dataclass(frozen=True)
class Choice:
    strategy: str
    reason: str
    needs_bytes: dict[str, int]
    """Each strategy considered, and what it needs per worker (those that do not apply are left out)."""
    estimate: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "reason": self.reason,
            "needs_bytes": self.needs_bytes,
            **asdict(self.estimate),
        }


def estimate(model_cfg: ModelConfig, train: TrainConfig, shape: dict[str, Any]) -> Estimate:
    """Parameters and activations of the model `shape` (Preprocessor.model_shape()) describes, on the meta device."""
    from rayline.models import build_model

    with torch.device("meta"):
        model = build_model(model_cfg, **shape)
    sizes = [p.numel() for p in model.parameters()]
    outputs: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(numel(out))) for m in leaves]
    try:
        model(torch.zeros(train.batch_size, shape["num_inputs"], device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    optimizer = train.optimizer
    copies = OPTIMIZER_COPIES[optimizer.name] if optimizer.name != "sgd" or optimizer.momentum > 0 else 0
    parameters = sum(sizes)
    return Estimate(
        parameters=parameters,
        largest_parameter=max(sizes, default=0),
        state_bytes=parameters * FP32 * (2 + copies),
        activation_bytes=sum(outputs) * FP32,
        budget_bytes=int(train.memory_per_worker_gb * GIB),
        workers=train.num_workers,
    )


def numel(out) -> int:
    return out.numel() if isinstance(out, torch.Tensor) else sum(numel(o) for o in out or ())


def needs(model_cfg: ModelConfig, est: Estimate) -> dict[str, int]:
    """Bytes per worker of each strategy that applies to this model and worker count."""
    n = est.workers
    found = {"ddp": est.state_bytes + est.activation_bytes}
    if n == 1:
        return found  # one worker: every strategy is the whole model on it
    found["fsdp"] = est.state_bytes // n + est.largest_parameter * FP32 + est.activation_bytes
    if model_cfg.kind == "transformer":
        split = est.state_bytes // n + est.activation_bytes // n
        if model_cfg.n_heads % n == 0 and model_cfg.ffn_size % n == 0:
            found["tensor"] = split
        if n <= model_cfg.n_layers:
            found["pipeline"] = split
    return found


def choose(model_cfg: ModelConfig, est: Estimate) -> Choice:
    found = needs(model_cfg, est)
    for strategy, need in found.items():
        if need <= est.budget_bytes:
            return Choice(strategy, reason(strategy, need, est), found, est)
    least = min(found, key=found.__getitem__)
    raise ConfigError(
        f"train.strategy auto: no strategy fits {gib(est.budget_bytes)} per worker "
        f"(train.memory_per_worker_gb): {describe(est)}; the least any needs is {gib(found[least])} ({least} over "
        f"{est.workers} workers). Add workers, lower train.batch_size, or raise train.memory_per_worker_gb"
    )


def reason(strategy: str, need: int, est: Estimate) -> str:
    why = {
        "ddp": "the whole model fits on every worker",
        "fsdp": "the whole model does not fit on one worker, sharded over the workers it does",
        "tensor": "even sharded, the model and its activations do not fit; split per layer they do",
        "pipeline": "even sharded, the model and its activations do not fit; split into stages they do",
    }[strategy]
    return f"{why}: {describe(est)}; {strategy} needs {gib(need)} of {gib(est.budget_bytes)} per worker"


def describe(est: Estimate) -> str:
    return (
        f"{est.parameters:,} parameters, {gib(est.state_bytes)} with gradients and optimizer state, "
        f"{gib(est.activation_bytes)} of activations per batch"
    )


def gib(n: int) -> str:
    return f"{n / GIB:.3g} GiB" if n >= GIB else f"{n / 2**20:.3g} MiB"


def resolve_auto(cfg: PipelineConfig, shape: dict[str, Any]) -> tuple[PipelineConfig, Choice | None]:
    """cfg with train.strategy auto replaced by the strategy chosen, and the choice; other configs unchanged."""
    if cfg.train.strategy != "auto":
        return cfg, None
    choice = choose(cfg.model, estimate(cfg.model, cfg.train, shape))
    train = cfg.train.model_copy(update={"strategy": choice.strategy})
    return cfg.model_copy(update={"train": TrainConfig.model_validate(train.model_dump())}), choice
