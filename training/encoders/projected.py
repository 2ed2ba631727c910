"""An encoder followed by a linear projection into a shared embedding space.

Registered as ``projected``. The two towers of an image-text model (CLIP, Radford et al.,
2021) are each exported as one of these, so an artifact's embedding is already in the
space shared with the other tower. The inner encoder is given as an architecture entry,
``{"name": ..., "kwargs": {...}}``, which keeps the whole model buildable from JSON.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.encoders import build_encoder, register_encoder


class ProjectedEncoder(nn.Module):
    """Inner encoder (N, ...) -> (N, F), then a bias-free linear map (N, F) -> (N, embedding_dim).

    ``forward`` passes all its inputs to the inner encoder, so one wrapper serves image
    encoders (images) and text encoders (input ids and attention mask).
    """

    def __init__(self, inner: dict[str, Any], embedding_dim: int) -> None:
        super().__init__()
        if not isinstance(inner, dict) or not isinstance(inner.get("name"), str):
            raise ValueError(f"inner must be an architecture entry {{'name': str, 'kwargs': dict}}, got {inner!r}")
        if inner["name"] == "projected":
            raise ValueError("inner must not itself be a projected encoder")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.inner = build_encoder(inner["name"], **inner.get("kwargs", {}))
        self.feature_dim = self.inner.embedding_dim
        self.embedding_dim = embedding_dim
        self.projection = nn.Linear(self.feature_dim, embedding_dim, bias=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.projection(self.inner(*inputs))


register_encoder("projected", ProjectedEncoder)
