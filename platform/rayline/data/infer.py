"""Resolve `features: auto` against the source's schema: every column but the label and data.exclude."""

from __future__ import annotations

from rayline.config import DataConfig


def resolve_features(data_cfg: DataConfig) -> DataConfig:
    """The data config with a concrete feature list (unchanged when features are listed already)."""
    if data_cfg.resolved:
        return data_cfg
    raise NotImplementedError("features: auto is being built")
