from __future__ import annotations

import torch
from torch import nn

from rayline.models.mlp import MLP


class ConvNet(nn.Module):
    """Small CNN for image-shaped inputs that arrive as flat feature vectors.

    Each block is 3x3 conv (same padding), ReLU, and a 2x2 max-pool while the image is still at
    least 4 pixels on a side, so 8x8 digits keep a 2x2 map after two blocks.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        channels: list[int],
        hidden_sizes: list[int],
        num_outputs: int,
        dropout: float,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        in_channels, height, width = self.image_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            if min(height, width) >= 4:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = MLP(
            num_inputs=in_channels * height * width,
            hidden_sizes=hidden_sizes,
            num_outputs=num_outputs,
            dropout=dropout,
        )

    def forward(self, x_bf: torch.Tensor) -> torch.Tensor:
        x_bchw = x_bf.reshape(x_bf.shape[0], *self.image_shape)
        return self.head(self.features(x_bchw).flatten(1))
