"""Rotation prediction (Gidaris et al., 2018): classify which of four rotations an image shows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.methods.base import projection_head
from training.methods.image import ImageMethod, configured_augmentation

ROTATIONS = 4  # 0, 90, 180 and 270 degrees, counter-clockwise


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every image under all four rotations and the rotation labels.

    Images (B, C, S, S) give rotated images (4B, C, S, S), ordered rotation-major.
    Rows k*B to (k+1)*B - 1 are the batch turned by k * 90 degrees, and ``labels``
    (4B,) is k for them.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images (B, C, S, S), got {tuple(images.shape)}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


class RotationPrediction(ImageMethod):
    """Encoder + MLP classifier over the four rotations of every image in the batch.

    All four rotations of each image go through the encoder in one batch, as in the
    paper, so every image contributes a balanced set of labels. The exported
    embedding is the encoder's output on the upright image.
    """

    name = "rotation"
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 5e-4

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config, channels, image_size, mean, std)
        self.classifier = projection_head(self.embedding_dim, config.projection_hidden_dim, ROTATIONS)
        self.augmentation = configured_augmentation(config.augment or "crop_flip", config)

    def training_step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = self.normalize(self.augmentation(batch, generator))
        rotated, labels = rotate_batch(images)  # (4B, C, S, S), (4B,)
        logits = self.classifier(self.encoder(rotated))  # (4B, 4)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy}
