"""InfoNCE over in-batch negatives (van den Oord et al., 2018), as used by SimCSE (Gao et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import gather_with_grad, get_rank


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """Return the mean InfoNCE loss of classifying each query's own key among all keys.

    ``queries[i]`` and ``keys[i]`` (each (N, D)) are two views of sample i. Query i is
    scored against every key by cosine similarity divided by ``temperature``. Key i is
    its positive and the other N - 1 keys are its negatives. Only the query side is
    classified, as in unsupervised SimCSE, whose positive pair is the same sentence
    encoded twice with different dropout masks.

    With ``gather`` inside a process group of W ranks, the keys of every rank (gathered
    with gradients) are the candidates, so each query has W*N - 1 negatives. Averaged
    over ranks, loss and gradients equal those of one process on the W*N samples
    concatenated in rank order.
    """
    if queries.shape != keys.shape or queries.ndim != 2:
        raise ValueError(f"queries and keys must both be (N, D), got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    batch = queries.shape[0]
    keys = F.normalize(keys, dim=1)
    candidates = gather_with_grad(keys) if gather else keys  # (WN, D), rank-major
    offset = get_rank() * batch if gather else 0  # where this rank's keys start
    logits = F.normalize(queries, dim=1) @ candidates.T / temperature  # (N, WN)
    targets = offset + torch.arange(batch, device=queries.device)
    return F.cross_entropy(logits, targets)


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce` with a fixed temperature (SimCSE uses 0.05)."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return info_nce(queries, keys, self.temperature)
