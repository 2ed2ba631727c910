"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import gather_with_grad, get_rank


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """Return the mean NT-Xent loss over the 2N views of a batch.

    ``view_a[i]`` and ``view_b[i]`` (each (N, D)) are two views of sample i. Every one
    of the 2N embeddings is classified against the other 2N - 1: its positive is the
    other view of the same sample, the remaining 2N - 2 are negatives. The similarity
    of a view with itself is removed from the softmax by masking it to -inf, not by
    subtracting a constant, so it contributes exactly nothing.

    With ``gather`` inside a process group of W ranks, the candidates are the 2WN views
    of every rank (gathered with gradients) and the loss is the mean over this rank's
    2N anchors. Averaged over ranks, loss and gradients equal those of one process on
    the W*N samples concatenated in rank order.
    """
    if view_a.shape != view_b.shape or view_a.ndim != 2:
        raise ValueError(f"views must both be (N, D), got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
    batch = view_a.shape[0]
    anchors = F.normalize(torch.cat([view_a, view_b]), dim=1)  # (2N, D): view a, then view b
    candidates = gather_with_grad(anchors) if gather else anchors  # (2WN, D), rank-major
    offset = get_rank() * 2 * batch if gather else 0  # where this rank's rows start
    logits = anchors @ candidates.T / temperature  # (2N, 2WN)

    local = torch.arange(2 * batch, device=logits.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[local, offset + local] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = offset + local.roll(batch)  # i <-> i + N within this rank's block
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
