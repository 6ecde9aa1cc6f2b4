"""Learned embeddings for categorical inputs that arrive as id columns of the flat feature vector.

The data path keeps "x" a float32 [n, num_inputs] matrix: an embedded categorical feature fills one column
with its slot id + 1 (0 = no slot, which embeds to zeros and is never trained). `EmbeddedInputs` swaps those
columns for their embeddings, so the body sees [n, dense columns + sum of embedding widths].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


class EmbeddedInputs(nn.Module):
    def __init__(self, *, num_inputs: int, embeddings: Sequence[Mapping[str, Any]]):
        super().__init__()
        id_columns = [int(e["column"]) for e in embeddings]
        assert len(set(id_columns)) == len(id_columns) and all(0 <= c < num_inputs for c in id_columns)
        dense = [c for c in range(num_inputs) if c not in set(id_columns)]
        # Buffers so .to(device) moves them; not persistent: build_model rebuilds them from the preprocessor.
        self.register_buffer("dense_columns", torch.tensor(dense, dtype=torch.long), persistent=False)
        self.register_buffer("id_columns", torch.tensor(id_columns, dtype=torch.long), persistent=False)
        self.tables = nn.ModuleList(nn.Embedding(int(e["ids"]), int(e["dim"]), padding_idx=0) for e in embeddings)
        self.num_outputs = len(dense) + sum(int(e["dim"]) for e in embeddings)

    def forward(self, x_bf: torch.Tensor) -> torch.Tensor:
        ids_be = x_bf.index_select(1, self.id_columns).round().long()
        parts = [x_bf.index_select(1, self.dense_columns)]
        parts += [table(ids_be[:, i]).to(x_bf.dtype) for i, table in enumerate(self.tables)]
        return torch.cat(parts, dim=1)


class WithEmbeddings(nn.Module):
    """`inputs` (EmbeddedInputs) then `body`, a model built for the widened input."""

    def __init__(self, inputs: EmbeddedInputs, body: nn.Module):
        super().__init__()
        self.inputs = inputs
        self.body = body

    def forward(self, x_bf: torch.Tensor) -> torch.Tensor:
        return self.body(self.inputs(x_bf))
