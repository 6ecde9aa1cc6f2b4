from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from rayline.config import ModelConfig
from rayline.models.cnn import ConvNet
from rayline.models.embed import EmbeddedInputs, WithEmbeddings
from rayline.models.mlp import MLP
from rayline.models.transformer import Transformer


def build_model(
    cfg: ModelConfig, *, num_inputs: int, num_outputs: int, embeddings: Sequence[Mapping[str, Any]] = ()
) -> nn.Module:
    """The network the config asks for, sized to the preprocessed inputs and the task's outputs.

    `embeddings` ({"name", "column", "ids", "dim"} per embedded categorical feature, from
    Preprocessor.model_shape()) wraps an mlp in WithEmbeddings; without them the model is the bare body, so
    state dicts saved before embeddings existed still load.
    """
    if not embeddings:
        return build_body(cfg, num_inputs=num_inputs, num_outputs=num_outputs)
    if cfg.kind != "mlp":
        names = [e["name"] for e in embeddings]
        raise ValueError(
            f"model.kind {cfg.kind!r} takes one input per column, but the categorical feature(s) {names} are "
            "learned embeddings (encoding embedding, or auto above data.embedding_threshold categories); set "
            "their encoding: onehot, or use model.kind mlp"
        )
    inputs = EmbeddedInputs(num_inputs=num_inputs, embeddings=embeddings)
    return WithEmbeddings(inputs, build_body(cfg, num_inputs=inputs.num_outputs, num_outputs=num_outputs))


def build_body(cfg: ModelConfig, *, num_inputs: int, num_outputs: int) -> nn.Module:
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
