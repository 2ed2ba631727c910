"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the mean NT-Xent loss over the 2N views of a batch.

    ``view_a[i]`` and ``view_b[i]`` (each (N, D)) are two views of sample i. Every one
    of the 2N embeddings is classified against the other 2N - 1: its positive is the
    other view of the same sample, the remaining 2N - 2 are negatives. The similarity
    of a view with itself is removed from the softmax by masking it to -inf, not by
    subtracting a constant, so it contributes exactly nothing.
    """
    if view_a.shape != view_b.shape or view_a.ndim != 2:
        raise ValueError(f"views must both be (N, D), got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
    batch = view_a.shape[0]
    embeddings = F.normalize(torch.cat([view_a, view_b]), dim=1)  # (2N, D)
    logits = embeddings @ embeddings.T / temperature  # (2N, 2N)
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.arange(2 * batch, device=logits.device).roll(batch)  # i <-> i + N
    return F.cross_entropy(logits, positives)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent` with a fixed temperature."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        return nt_xent(view_a, view_b, self.temperature)
