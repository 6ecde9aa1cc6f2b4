"""The torch module that is exported: raw feature values in, answers out.

`RawFeatureModel` is `Preprocessor.transform_features` + the trained model + `Preprocessor.decode` as torch
operations, so the exported graph needs nothing beside it:

- numeric features arrive as float64 with NaN for a missing value. The fill, the standardisation and the
  "was missing" indicator run in float64 and are cast to float32 after, as the preprocessor computes them, so
  the model sees the same float32 inputs bit for bit.
- categorical features arrive as their slot (int64, -1 for "no slot"): onnx.py puts a string lookup in front
  of this input, since torch has no string tensors. One-hot blocks and embedding ids (slot + 1) are built here.
- classification answers the softmax of the logits and the index of the most likely class; regression the
  value in the target's own units (float64, as decode computes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rayline.data.preprocess import CategoricalStat, NumericStat, Preprocessor


@dataclass(frozen=True)
class InputLayout:
    """Which features feed which raw input, each in the preprocessor's (model) order."""

    numeric: list[NumericStat]
    categorical: list[CategoricalStat]

    @classmethod
    def of(cls, preprocessor: Preprocessor) -> InputLayout:
        numeric = [f for f in preprocessor.features if isinstance(f, NumericStat)]
        categorical = [f for f in preprocessor.features if isinstance(f, CategoricalStat)]
        return cls(numeric, categorical)


class RawFeatureModel(nn.Module):
    def __init__(self, preprocessor: Preprocessor, model: nn.Module):
        super().__init__()
        layout = InputLayout.of(preprocessor)
        self.model = model
        self.classification = preprocessor.classes is not None
        self.has_numeric = bool(layout.numeric)
        self.target_mean = float(preprocessor.target_mean or 0.0)
        self.target_scale = float(preprocessor.target_std or 1.0)  # as decode: a std of 0 or None scales by 1
        numeric = layout.numeric
        self.register_buffer("mean", torch.tensor([f.mean for f in numeric], dtype=torch.float64))
        self.register_buffer("scale", torch.tensor([f.scale for f in numeric], dtype=torch.float64))
        # NaN where a feature has no fill rule: a missing value then stays NaN, and so does the answer.
        fill = [f.fill if f.fill is not None else float("nan") for f in numeric]
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float64))
        indicators = [i for i, f in enumerate(numeric) if f.indicator]
        self.register_buffer("indicators", torch.tensor(indicators, dtype=torch.long))
        self.category_widths = [None if f.embedding_dim is not None else f.slots for f in layout.categorical]
        widest = max([w for w in self.category_widths if w is not None], default=0)
        self.register_buffer("slot_numbers", torch.arange(widest, dtype=torch.long))
        order = model_column_order(preprocessor)
        self.reorder = order != list(range(len(order)))
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))

    def forward(self, numeric_bn: torch.Tensor | None, slots_bc: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x_bf = self.model_inputs(numeric_bn, slots_bc)
        out_bo = self.model(x_bf)
        if self.classification:
            return torch.softmax(out_bo, dim=1), out_bo.argmax(dim=1)
        return (out_bo[:, 0].to(torch.float64) * self.target_scale + self.target_mean,)

    def model_inputs(self, numeric_bn: torch.Tensor | None, slots_bc: torch.Tensor | None) -> torch.Tensor:
        """float32 [n, num_inputs], as Preprocessor.transform_features makes them."""
        parts = []
        if numeric_bn is not None:
            missing_bn = torch.isnan(numeric_bn)
            filled_bn = torch.where(missing_bn, self.fill, numeric_bn)
            parts.append(((filled_bn - self.mean) / self.scale).to(torch.float32))
            if len(self.indicators):
                parts.append(missing_bn.index_select(1, self.indicators).to(torch.float32))
        for i, width in enumerate(self.category_widths):
            slot_b1 = slots_bc[:, i : i + 1]
            if width is None:  # an embedded feature: one column holding slot + 1 (0: no slot)
                parts.append((slot_b1 + 1).to(torch.float32))
            else:  # a one-hot block; slot -1 matches no column and leaves it all zero
                parts.append((slot_b1 == self.slot_numbers[:width]).to(torch.float32))
        x_bf = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return x_bf.index_select(1, self.order) if self.reorder else x_bf


def model_column_order(preprocessor: Preprocessor) -> list[int]:
    """For each model input column, its position in RawFeatureModel's concatenation (standardised numerics,
    then indicators, then each categorical block)."""
    layout = InputLayout.of(preprocessor)
    indicator_count = sum(f.indicator for f in layout.numeric)
    next_numeric, next_indicator = 0, len(layout.numeric)
    next_categorical = len(layout.numeric) + indicator_count
    order = []
    for f in preprocessor.features:
        if isinstance(f, NumericStat):
            order.append(next_numeric)
            next_numeric += 1
            if f.indicator:
                order.append(next_indicator)
                next_indicator += 1
        else:
            order += range(next_categorical, next_categorical + f.width)
            next_categorical += f.width
    return order


class NumericOnly(nn.Module):
    """The exported signature of a model with numeric features only."""

    def __init__(self, core: RawFeatureModel):
        super().__init__()
        self.core = core  # not "graph": torch.fx's GraphModule has an attribute of that name

    def forward(self, numeric_bn: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.core(numeric_bn, None)


class CategoricalOnly(nn.Module):
    """The exported signature of a model with categorical features only."""

    def __init__(self, core: RawFeatureModel):
        super().__init__()
        self.core = core  # not "graph": torch.fx's GraphModule has an attribute of that name

    def forward(self, slots_bc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.core(None, slots_bc)


def exportable(preprocessor: Preprocessor, model: nn.Module) -> nn.Module:
    """The module to hand to torch.onnx.export: one tensor argument per kind of feature the model has."""
    layout = InputLayout.of(preprocessor)
    core = RawFeatureModel(preprocessor, model).eval()
    if not layout.categorical:
        return NumericOnly(core).eval()
    if not layout.numeric:
        return CategoricalOnly(core).eval()
    return core
