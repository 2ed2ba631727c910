"""The masked-autoencoder reconstruction loss (He et al., 2022)."""

from __future__ import annotations

import torch


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Return each patch (..., P) minus its mean, divided by its std over the P values.

    The variance is the population variance of the patch's pixels. The reference MAE
    code uses the unbiased estimate, which differs by a factor P / (P - 1).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    variance = patches.var(dim=-1, keepdim=True, correction=0)
    return (patches - mean) / (variance + eps).sqrt()


def mae_loss(prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Return the mean squared error over the masked patches only.

    ``prediction`` and ``patches`` are (N, L, P): L patches of P pixel values each.
    ``mask`` (N, L) is 1 where a patch was hidden from the encoder and 0 where it was
    visible. Visible patches do not enter the loss. With ``norm_pix`` the targets are
    the per-patch normalised pixels (``normalize_patches``), which gave better
    representations in the MAE paper.
    """
    if prediction.shape != patches.shape or prediction.ndim != 3:
        raise ValueError(
            f"prediction and patches must both be (N, L, P), got {tuple(prediction.shape)} and {tuple(patches.shape)}"
        )
    if mask.shape != prediction.shape[:2]:
        raise ValueError(f"mask must be (N, L) = {tuple(prediction.shape[:2])}, got {tuple(mask.shape)}")
    target = normalize_patches(patches) if norm_pix else patches
    per_patch = ((prediction - target) ** 2).mean(dim=-1)  # (N, L)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)
