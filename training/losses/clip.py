"""The symmetric image-text contrastive loss of CLIP (Radford et al., 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def clip_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Return the mean of the image-to-text and text-to-image cross-entropies.

    ``image_embeddings[i]`` and ``text_embeddings[i]`` (each (N, D)) are a matching pair.
    Both are L2-normalised; the logits (N, N) are their cosine similarities times
    ``logit_scale`` (the inverse temperature, not its logarithm). Row i of the logits
    classifies image i among all N texts, column i text i among all N images.
    """
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(
            f"image and text embeddings must both be (N, D), got {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    logits = logit_scale * F.normalize(image_embeddings, dim=1) @ F.normalize(text_embeddings, dim=1).T  # (N, N)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class CLIPLoss(nn.Module):
    """:func:`clip_loss` with CLIP's learnable logit scale.

    The scale is learned as its logarithm, initialised to log(1 / ``initial_temperature``)
    and clamped at log(``max_logit_scale``), so the logits are never multiplied by more
    than ``max_logit_scale`` (100 in the paper). ``forward`` clamps the value it uses;
    :meth:`clamp_` also clamps the stored parameter, which the method calls after each
    optimiser step, as CLIP clips it during training.
    """

    def __init__(self, initial_temperature: float = INITIAL_TEMPERATURE, max_logit_scale: float = MAX_LOGIT_SCALE) -> None:
        super().__init__()
        if initial_temperature <= 0:
            raise ValueError(f"initial_temperature must be positive, got {initial_temperature}")
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be positive, got {max_logit_scale}")
        self.max_log_scale = math.log(max_logit_scale)
        initial = min(math.log(1.0 / initial_temperature), self.max_log_scale)
        self.log_logit_scale = nn.Parameter(torch.tensor(initial))

    def logit_scale(self) -> torch.Tensor:
        """Return the current inverse temperature, at most ``max_logit_scale``."""
        return self.log_logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored log scale in place at log(``max_logit_scale``)."""
        self.log_logit_scale.clamp_(max=self.max_log_scale)

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        return clip_loss(image_embeddings, text_embeddings, self.logit_scale())
