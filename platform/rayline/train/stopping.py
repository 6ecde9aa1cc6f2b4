"""Early stopping, decided from the run's metric history alone: every rank holds the same all-reduced
validation metrics, so every rank reaches the same decision, and a resumed run decides as the first would."""

from __future__ import annotations

from dataclasses import dataclass

from rayline.config import EarlyStoppingConfig


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    best_epoch: int
    """Epoch of the last improvement of at least min_delta."""
    epochs_without_improvement: int


def decide(history: list[dict], rule: EarlyStoppingConfig) -> StopDecision:
    """Stop once `patience` epochs in a row failed to beat the best value so far by more than min_delta."""
    sign = 1.0 if rule.direction == "max" else -1.0
    best_value, best_epoch = None, 0
    for metrics in history:
        value = sign * float(metrics[rule.metric])
        if best_value is None or value > best_value + rule.min_delta:
            best_value, best_epoch = value, int(metrics["epoch"])
    since = int(history[-1]["epoch"]) - best_epoch if history else 0
    return StopDecision(stop=since >= rule.patience, best_epoch=best_epoch, epochs_without_improvement=since)
