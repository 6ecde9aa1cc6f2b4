"""A model's floating-point state as one flat float32 vector: what the server sends each round and what a
client's update is the difference of. Integer buffers (none in rayline's models today) keep the global value."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rayline.config import PipelineConfig
from rayline.data.preprocess import Preprocessor
from rayline.models import build_model


def initial_model(cfg: PipelineConfig, preprocessor: Preprocessor) -> nn.Module:
    """The global model of round 0: built with the federated seed, so every run starts from the same weights."""
    torch.manual_seed(cfg.federated.seed)
    return build_model(cfg.model, **preprocessor.model_shape())


def floating_entries(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]


def to_vector(model: nn.Module) -> np.ndarray:
    parts = [t.detach().reshape(-1).to(torch.float32).cpu().numpy() for _, t in floating_entries(model)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def load_vector(model: nn.Module, vector: np.ndarray) -> None:
    """Copy a flat vector into the model's floating-point state, in state_dict order."""
    values = torch.from_numpy(np.array(vector, dtype=np.float32))  # a copy: object-store arrays are read-only
    offset = 0
    with torch.no_grad():
        for _, tensor in floating_entries(model):
            n = tensor.numel()
            tensor.copy_(values[offset : offset + n].reshape(tensor.shape))
            offset += n
    if offset != len(values):
        raise ValueError(f"a model state vector of {len(values)} values for a model of {offset}")
