"""Multilayer perceptron encoder over flattened pixels, a baseline for small images."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.encoders import register_encoder


class MLPEncoder(nn.Module):
    """Flatten an image and apply ``depth`` blocks of Linear, LayerNorm and ReLU.

    LayerNorm, not BatchNorm, so that a batch of one trains and an embedding never
    depends on the other samples of its batch.

    Args:
        in_features: channels x height x width of the input images.
        hidden_dim: width of every hidden layer.
        depth: number of hidden layers, at least 1.
        embedding_dim: if set, a linear layer maps the last hidden layer to this width.

    Input (N, C, H, W) float with C * H * W == in_features, output (N, embedding_dim).
    """

    def __init__(self, in_features: int, hidden_dim: int = 512, depth: int = 2, embedding_dim: int | None = None) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"MLP in_features must be positive, got {in_features}")
        if hidden_dim < 1:
            raise ValueError(f"MLP hidden_dim must be positive, got {hidden_dim}")
        if depth < 1:
            raise ValueError(f"MLP depth must be at least 1, got {depth}")
        self.in_features = in_features
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        self.layers = nn.Sequential(*layers)
        self.head: nn.Module = nn.Identity()
        if embedding_dim is not None:
            self.head = nn.Linear(hidden_dim, embedding_dim)
        self.embedding_dim = embedding_dim or hidden_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim < 2 or math.prod(images.shape[1:]) != self.in_features:
            raise ValueError(
                f"MLP encoder expects inputs of {self.in_features} values per sample, got shape {tuple(images.shape)}"
            )
        return self.head(self.layers(images.flatten(1)))  # (N, C, H, W) -> (N, C*H*W) -> (N, D)


register_encoder("mlp", MLPEncoder)
