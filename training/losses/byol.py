"""The BYOL regression loss (Grill et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean of 2 - 2 cos(prediction_i, target_i) over a batch.

    ``prediction`` (N, D) is the online network's prediction of one view and
    ``target`` (N, D) the target network's projection of the other view. Both are
    L2-normalised first, so the value is the squared distance of the unit vectors, in
    [0, 4]. ``target`` is detached here: no gradient ever reaches the target network.
    BYOL symmetrises by adding the loss with the two views swapped.
    """
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(
            f"prediction and target must both be (N, D), got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    cosine = (F.normalize(prediction, dim=1) * F.normalize(target.detach(), dim=1)).sum(dim=1)  # (N,)
    return (2 - 2 * cosine).mean()


class BYOLLoss(nn.Module):
    """Symmetric BYOL loss of two views: predictions (N, D) each against the other view's target."""

    def forward(
        self,
        predictions: tuple[torch.Tensor, torch.Tensor],
        targets: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        return byol_loss(predictions[0], targets[1]) + byol_loss(predictions[1], targets[0])
