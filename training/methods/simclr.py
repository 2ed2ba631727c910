"""SimCLR (Chen et al., 2020): contrast two augmented views with NT-Xent."""

from __future__ import annotations

import torch

from training.config import TrainConfig
from training.losses import nt_xent
from training.methods.base import projection_head
from training.methods.image import ImageMethod, configured_augmentation


class SimCLR(ImageMethod):
    """Encoder + two-layer projection head trained with NT-Xent on two views per image.

    The exported embedding is the encoder's output before the projection head, which
    transfers better than the projection (section 4.2 of the paper).
    """

    name = "simclr"
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 1e-6
    default_temperature = 0.2

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config, channels, image_size, mean, std)
        self.temperature = config.temperature or self.default_temperature
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        self.projection = projection_head(self.embedding_dim, config.projection_hidden_dim, config.projection_dim)
        preset = config.augment or "simclr"
        self.augmentation = configured_augmentation(preset, config)

    def training_step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # Both views in one augmentation call: rows i and B + i of the (2B, C, H, W) batch
        # are two independently augmented views of image i.
        views = self.normalize(self.augmentation(batch.repeat(2, 1, 1, 1), generator))
        # One forward pass over both views: (2B, C, H, W) -> (2B, P).
        projections = self.projection(self.encoder(views))
        view_a, view_b = projections.chunk(2)
        loss = nt_xent(view_a, view_b, self.temperature)
        return {"loss": loss}
