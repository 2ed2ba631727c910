"""Shared parts of the image methods: the encoder, input normalisation and export."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.augment import BatchAugmentation, preset_augmentation
from training.config import TrainConfig
from training.encoders import build_encoder
from training.methods.base import ExportSpec, Method, Normalize


def configured_augmentation(preset: str, config: TrainConfig) -> BatchAugmentation:
    """Build the augmentation preset ``preset`` with the run's crop, flip, shear and morphology overrides."""
    return preset_augmentation(
        preset, config.crop_scale_min, config.horizontal_flip_prob, config.shear, config.morphology_prob
    )


def image_architecture(config: TrainConfig, channels: int, image_size: int, default: str = "resnet") -> dict[str, Any]:
    """Return the ``architecture`` entry (name and kwargs) for the configured image encoder."""
    name = config.encoder or default
    if name == "resnet":
        kwargs: dict[str, Any] = {
            "in_channels": channels,
            "depth": config.encoder_depth or 18,
            "width": config.encoder_width or 32,
            "small_stem": image_size < 100,
        }
    elif name == "vit":
        kwargs = {
            "in_channels": channels,
            "image_size": image_size,
            "patch_size": config.patch_size or default_patch_size(image_size),
            "width": config.encoder_width or 192,
            "depth": config.encoder_depth or 6,
            "heads": config.heads or 3,
        }
    elif name == "mlp":
        kwargs = {
            "in_features": channels * image_size * image_size,
            "hidden_dim": config.encoder_width or 512,
            "depth": config.encoder_depth or 2,
        }
    else:
        raise ValueError(f"unknown image encoder {name!r}; expected resnet, vit or mlp")
    if config.embedding_dim is not None:
        kwargs["embedding_dim"] = config.embedding_dim
    return {"name": name, "kwargs": kwargs}


def default_patch_size(image_size: int) -> int:
    """Return the divisor of ``image_size`` nearest to ``image_size / 8``, at least 2 where possible.

    About 8 x 8 patches keep ViTs cheap on small images. A 1-pixel patch makes per-patch
    pixel normalisation (MAE) meaningless, so it is used only when no other divisor exists.
    """
    target = max(2.0, image_size / 8)
    divisors = [size for size in range(2, image_size // 2 + 1) if image_size % size == 0]
    if not divisors:
        return 1
    return min(divisors, key=lambda size: (abs(size - target), size))


class ImageMethod(Method):
    """A method that trains one image encoder on images (B, C, H, W) in [0, 1].

    ``mean`` and ``std`` are the per-channel statistics of the training pixels; they
    become the artifact's preprocessing so the service normalises exactly as training.
    """

    modality = "image"
    default_encoder = "resnet"

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config)
        self.channels = channels
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.architecture = image_architecture(config, channels, image_size, self.default_encoder)
        self.encoder = build_encoder(self.architecture["name"], **self.architecture["kwargs"])
        self.normalize = Normalize(mean, std)

    @classmethod
    def from_data(cls, config: TrainConfig, dataset: Any) -> ImageMethod:
        mean, std = dataset.channel_statistics()
        return cls(config, dataset.channels, dataset.image_size, mean, std)

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(batch))

    def export_specs(self) -> list[ExportSpec]:
        preprocessing = {
            "size": self.image_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "resize": "resize_center_crop",
            "background": 0,
        }
        return [ExportSpec(self.export_encoder(), self.architecture, "image", self.embedding_dim, preprocessing)]

    def export_encoder(self) -> nn.Module:
        """Return the module whose state dict is exported (the bare encoder)."""
        return self.encoder
