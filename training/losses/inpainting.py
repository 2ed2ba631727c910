"""The masked-pixel reconstruction loss of context encoders (Pathak et al., 2016)."""

from __future__ import annotations

import torch


def masked_pixel_loss(reconstruction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean squared error over the masked pixels only.

    ``reconstruction`` and ``images`` are (N, C, H, W). ``mask`` (N, 1, H, W) is 1 on
    pixels that were hidden from the encoder and 0 elsewhere. Every channel of a masked
    pixel counts once, and unmasked pixels do not enter the loss. This is the L2 term of
    the context encoder, without its adversarial term.
    """
    if reconstruction.shape != images.shape or images.ndim != 4:
        raise ValueError(
            f"reconstruction and images must both be (N, C, H, W), got {tuple(reconstruction.shape)} "
            f"and {tuple(images.shape)}"
        )
    expected = (images.shape[0], 1, *images.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must be (N, 1, H, W) = {expected}, got {tuple(mask.shape)}")
    mask = mask.to(images.dtype)
    squared_error = ((reconstruction - images) ** 2 * mask).sum()
    return squared_error / (mask.sum() * images.shape[1]).clamp_min(1)
