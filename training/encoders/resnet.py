"""ResNet encoders (He et al., 2016) with an optional small-image stem.

The small-image stem (a 3x3 first convolution with stride 1 and no max-pool) keeps the
spatial resolution of 8-96 px inputs, as in the CIFAR variants used by SimCLR.
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_BLOCKS = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet backbone that returns globally pooled features.

    Args:
        in_channels: 1 for grayscale, 3 for RGB.
        depth: 10, 18 or 34 (basic blocks per stage from the original paper; 10 is a
            one-block-per-stage variant for tiny inputs).
        width: channels of the first stage; stages have width, 2, 4 and 8 times width.
        small_stem: 3x3 stride-1 stem without max-pool, for inputs under about 100 px.
        embedding_dim: if set, a linear layer maps the pooled features to this width.

    Input (N, in_channels, H, W) float, output (N, embedding_dim).
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 18,
        width: int = 32,
        small_stem: bool = True,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if width < 1:
            raise ValueError(f"ResNet width must be positive, got {width}")

        if small_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )

        stages = []
        channels = width
        for index, blocks in enumerate(STAGE_BLOCKS[depth]):
            out_channels = width * 2**index
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        self.head: nn.Module = nn.Identity()
        if embedding_dim is not None:
            self.head = nn.Linear(channels, embedding_dim)
        self.embedding_dim = embedding_dim or channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(images))
        pooled = features.mean(dim=(2, 3))  # (N, C, h, w) -> (N, C)
        return self.head(pooled)
