"""Context encoders (Pathak et al., 2016): reconstruct a hidden image region from its context."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig
from training.losses.inpainting import masked_pixel_loss
from training.methods.image import ImageMethod, configured_augmentation

MASK_KINDS = ("center", "block", "patches")
# Share of the image hidden by every mask kind: a block of half the side, as in the paper.
MASKED_FRACTION = 0.25
# Cells per side of the grid that random-patch masks are drawn from.
PATCH_GRID = 8


def inpainting_mask(kind: str, batch: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Return masks (N, 1, S, S), 1 on hidden pixels, for images of side ``image_size``.

    - ``center`` hides the central square of half the side.
    - ``block`` hides a square of half the side at a random position per sample.
    - ``patches`` hides a random quarter of the cells of a grid of up to
      ``PATCH_GRID`` x ``PATCH_GRID`` cells, drawn per sample.
    """
    device = generator.device
    if kind in ("center", "block"):
        side = max(1, image_size // 2)
        if kind == "center":
            top = torch.full((batch,), (image_size - side) // 2, device=device)
            left = top
        else:
            top = torch.randint(0, image_size - side + 1, (batch,), generator=generator, device=device)
            left = torch.randint(0, image_size - side + 1, (batch,), generator=generator, device=device)
        coordinates = torch.arange(image_size, device=device)
        rows = (coordinates.view(1, -1) >= top.view(-1, 1)) & (coordinates.view(1, -1) < (top + side).view(-1, 1))
        columns = (coordinates.view(1, -1) >= left.view(-1, 1)) & (coordinates.view(1, -1) < (left + side).view(-1, 1))
        return (rows.unsqueeze(2) & columns.unsqueeze(1)).unsqueeze(1).float()  # (N, S) x (N, S) -> (N, 1, S, S)
    if kind == "patches":
        cells_per_side = min(PATCH_GRID, image_size)
        cells = cells_per_side**2
        hidden = max(1, round(MASKED_FRACTION * cells))
        ranks = torch.argsort(torch.rand(batch, cells, generator=generator, device=device), dim=1)
        grid_mask = (ranks < hidden).float().view(batch, 1, cells_per_side, cells_per_side)
        # Nearest-neighbour upsampling spreads the cells over the image, uneven cells where S is no multiple.
        return F.interpolate(grid_mask, size=(image_size, image_size), mode="nearest")
    raise ValueError(f"unknown inpainting mask {kind!r}; expected one of {', '.join(MASK_KINDS)}")


class ConvDecoder(nn.Module):
    """Map a feature vector (N, D) to an image (N, C, S, S), as the context encoder's decoder.

    A linear layer makes a 4 x 4 map of ``width`` channels (S x S when S < 4); each
    stage doubles the resolution with nearest upsampling and a 3x3 convolution and
    halves the channels (at least 16) until the map reaches S, and a last 3x3
    convolution gives the C output channels.
    """

    def __init__(self, in_dim: int, channels: int, image_size: int, width: int) -> None:
        super().__init__()
        self.start = min(4, image_size)
        self.width = width
        self.image_size = image_size
        self.project = nn.Linear(in_dim, width * self.start**2)
        stages: list[nn.Module] = [nn.ReLU(inplace=True)]
        size, stage_width = self.start, width
        for _ in range(math.ceil(math.log2(image_size / self.start))):
            next_width = max(16, stage_width // 2)
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(stage_width, next_width, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
            size, stage_width = size * 2, next_width
        self.stages = nn.Sequential(*stages)
        self.output = nn.Conv2d(stage_width, channels, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.project(features).view(-1, self.width, self.start, self.start)  # (N, D) -> (N, width, s, s)
        maps = self.stages(maps)
        if maps.shape[-1] != self.image_size:
            maps = F.interpolate(maps, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.output(maps)


class Inpainting(ImageMethod):
    """Encoder of the masked image + convolutional decoder, L2 loss on the hidden pixels.

    Hidden pixels are set to 0 after normalisation, which is the dataset's mean colour.
    ``config.inpainting_mask`` picks the mask: ``center``, ``block`` (a random block) or
    ``patches`` (random patches), each hiding a quarter of the image. The exported
    embedding is the encoder's output on the whole, unmasked image.
    """

    name = "inpainting"
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 1e-4

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config, channels, image_size, mean, std)
        if config.inpainting_mask not in MASK_KINDS:
            raise ValueError(f"unknown inpainting_mask {config.inpainting_mask!r}; expected one of {', '.join(MASK_KINDS)}")
        if config.decoder_width < 1:
            raise ValueError(f"decoder_width must be positive, got {config.decoder_width}")
        self.mask_kind = config.inpainting_mask
        self.decoder = ConvDecoder(self.embedding_dim, channels, image_size, config.decoder_width)
        self.augmentation = configured_augmentation(config.augment or "crop_flip", config)

    def training_step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = self.normalize(self.augmentation(batch, generator))
        if images.shape[0] == 1:
            # Two differently masked copies, so batch normalisation has two samples to normalise.
            images = images.expand(2, -1, -1, -1)
        mask = inpainting_mask(self.mask_kind, images.shape[0], images.shape[-1], generator).to(images)
        reconstruction = self.decoder(self.encoder(images * (1 - mask)))
        loss = masked_pixel_loss(reconstruction, images, mask)
        return {"loss": loss}
