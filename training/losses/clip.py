"""The symmetric image-text contrastive loss of CLIP (Radford et al., 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import gather_with_grad, get_rank

INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def clip_loss(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor | float, gather: bool = True
) -> torch.Tensor:
    """Return the mean of the image-to-text and text-to-image cross-entropies.

    ``image_embeddings[i]`` and ``text_embeddings[i]`` (each (N, D)) are a matching pair.
    Both are L2-normalised. The logits are their cosine similarities times
    ``logit_scale`` (the inverse temperature, not its logarithm), and image i is
    classified among all N texts as text i is among all N images.

    With ``gather`` inside a process group of W ranks, each local image is classified
    among the texts of every rank and each local text among the images of every rank
    (both gathered with gradients). Averaged over ranks, loss and gradients equal those
    of one process on the W*N pairs concatenated in rank order.
    """
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(
            f"image and text embeddings must both be (N, D), got {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    batch = image_embeddings.shape[0]
    images = F.normalize(image_embeddings, dim=1)
    texts = F.normalize(text_embeddings, dim=1)
    all_images = gather_with_grad(images) if gather else images  # (WN, D), rank-major
    all_texts = gather_with_grad(texts) if gather else texts
    offset = get_rank() * batch if gather else 0  # where this rank's pairs start
    targets = offset + torch.arange(batch, device=images.device)
    image_to_text = logit_scale * images @ all_texts.T  # (N, WN)
    text_to_image = logit_scale * texts @ all_images.T  # (N, WN)
    return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2


class CLIPLoss(nn.Module):
    """:func:`clip_loss` with CLIP's learnable logit scale.

    The scale is learned as its logarithm, initialised to log(1 / ``initial_temperature``)
    and clamped at log(``max_logit_scale``), so the logits are never multiplied by more
    than ``max_logit_scale`` (100 in CLIP). ``forward`` clamps the value it uses, and
    :meth:`clamp_` clamps the stored parameter itself. The CLIP method calls it after
    each optimiser step, as CLIP clips the scale during training.
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
