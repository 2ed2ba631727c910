"""BYOL (Grill et al., 2020): predict a momentum target network's projection of another view."""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.config import TrainConfig
from training.losses.byol import byol_loss
from training.methods.base import projection_head
from training.methods.image import ImageMethod, configured_augmentation
from training.schedules import cosine_momentum


class BYOL(ImageMethod):
    """Online encoder, projection and prediction heads regressing onto a momentum target.

    The target network (a copy of the encoder and projection head) receives no
    gradient: its weights are an exponential moving average of the online ones, with a
    momentum that rises from ``config.momentum_base`` to 1 on a cosine over training.
    Its weights are submodules, so they are part of ``state_dict`` and of every
    checkpoint. The exported embedding is the online encoder's output.
    """

    name = "byol"
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 1e-6

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config, channels, image_size, mean, std)
        if not 0.0 <= config.momentum_base <= 1.0:
            raise ValueError(f"momentum_base must be in [0, 1], got {config.momentum_base}")
        self.momentum_base = config.momentum_base
        self.momentum = config.momentum_base
        self.projection = projection_head(self.embedding_dim, config.projection_hidden_dim, config.projection_dim)
        self.prediction = projection_head(config.projection_dim, config.projection_hidden_dim, config.projection_dim)

        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projection = copy.deepcopy(self.projection)
        for parameter in self.target_parameters():
            parameter.requires_grad_(False)

        # BYOL's two views use different blur and solarisation probabilities; a
        # configured preset replaces both.
        presets = (config.augment, config.augment) if config.augment else ("byol", "byol_view2")
        self.augmentations = [
            configured_augmentation(preset, config) for preset in presets
        ]

    def lr_scales(self) -> dict[nn.Module, float]:
        """Return the prediction head with its learning-rate multiple, ``predictor_lr_scale``.

        The online network can only follow the target once the predictor fits it, so a
        predictor that lags slows everything down. For a width-16 ResNet trained 2 epochs
        on glyphs with batch 32, the held-out kNN was 0.78 with the same rate, 0.83 with 10
        times it, 0.85 with 30 times (the default) and 0.83 with 100 times.
        """
        return {self.prediction: self.config.predictor_lr_scale}

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projection.parameters()]

    def training_step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        views = [self.normalize(augmentation(batch, generator)) for augmentation in self.augmentations]
        # One pass per network over both views: (2B, C, H, W) -> (2B, P).
        images = torch.cat(views)
        predictions = self.prediction(self.projection(self.encoder(images)))
        with torch.no_grad():
            targets = self.target_projection(self.target_encoder(images))

        # Symmetric: each view's prediction regresses onto the other view's target.
        prediction_a, prediction_b = predictions.chunk(2)
        target_a, target_b = targets.chunk(2)
        loss = byol_loss(prediction_a, target_b) + byol_loss(prediction_b, target_a)
        return {"loss": loss}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Move the target weights toward the online weights with this step's momentum."""
        self.momentum = cosine_momentum(step, total_steps, self.momentum_base)
        online = [*self.encoder.parameters(), *self.projection.parameters()]
        for target, source in zip(self.target_parameters(), online, strict=True):
            target.mul_(self.momentum).add_(source.detach(), alpha=1.0 - self.momentum)
