from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Feed-forward network for flat or tabular inputs: [Linear, ReLU, Dropout] * n, then a Linear head."""

    def __init__(self, *, num_inputs: int, hidden_sizes: list[int], num_outputs: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_inputs
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x_bf: torch.Tensor) -> torch.Tensor:
        return self.net(x_bf)
