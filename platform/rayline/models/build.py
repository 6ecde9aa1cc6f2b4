from __future__ import annotations

import math

from torch import nn

from rayline.config import ModelConfig
from rayline.models.cnn import ConvNet
from rayline.models.mlp import MLP
from rayline.models.transformer import Transformer


def build_model(cfg: ModelConfig, *, num_inputs: int, num_outputs: int) -> nn.Module:
    """The network the config asks for, sized to the preprocessed inputs and the task's outputs."""
    if cfg.kind == "mlp":
        return MLP(
            num_inputs=num_inputs,
            hidden_sizes=list(cfg.hidden_sizes),
            num_outputs=num_outputs,
            dropout=cfg.dropout,
        )
    if cfg.kind == "cnn":
        pixels = math.prod(cfg.image_shape)
        if pixels != num_inputs:
            raise ValueError(
                f"model.image_shape {list(cfg.image_shape)} holds {pixels} values, but the features "
                f"give {num_inputs} inputs after preprocessing; make them match"
            )
        return ConvNet(
            image_shape=cfg.image_shape,
            channels=list(cfg.channels),
            hidden_sizes=list(cfg.hidden_sizes),
            num_outputs=num_outputs,
            dropout=cfg.dropout,
        )
    if cfg.kind == "transformer":
        if num_inputs % cfg.token_size:
            raise ValueError(
                f"model.token_size {cfg.token_size} does not divide the {num_inputs} inputs after preprocessing "
                "into whole tokens; pick a divisor (1 makes every input a token)"
            )
        return Transformer(
            num_inputs=num_inputs,
            token_size=cfg.token_size,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_layers=cfg.n_layers,
            ffn_size=cfg.ffn_size,
            num_outputs=num_outputs,
            dropout=cfg.dropout,
        )
    raise AssertionError(f"unhandled model kind {cfg.kind!r}")
