"""Batched image augmentations that run on the training device.

Each transform draws independent random parameters for every sample of a batch from a
``torch.Generator`` and applies them with tensor operations, so one call augments a
whole batch (B, C, H, W) of floats in [0, 1] without a per-image Python loop. The same
generator seed gives the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationConfig:
    """Parameters of the SimCLR-style view pipeline; probabilities are per sample."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5


PRESETS: dict[str, AugmentationConfig] = {
    # SimCLR (Chen et al., 2020), CIFAR setting: no blur at small resolution.
    "simclr": AugmentationConfig(),
    # BYOL (Grill et al., 2020): the two views use different blur and solarisation
    # probabilities; this preset is the first view, ``byol_view2`` the second.
    "byol": AugmentationConfig(color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_prob=1.0),
    "byol_view2": AugmentationConfig(blur_prob=0.1, solarize_prob=0.2),
    # Glyphs and digits: mirroring or cutting away most of a character changes its
    # identity, so crops keep at least 40 % of the area and nothing is flipped.
    "glyphs": AugmentationConfig(crop_scale=(0.4, 1.0), crop_ratio=(0.8, 1.25), horizontal_flip_prob=0.0, brightness=0.5, contrast=0.5, saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.3, blur_sigma=(0.1, 1.0)),
    # Reconstruction methods (MAE, inpainting): crops and flips only.
    "crop_flip": AugmentationConfig(crop_scale=(0.2, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0),
    "crop": AugmentationConfig(crop_scale=(0.4, 1.0), horizontal_flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0),
    "none": AugmentationConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), horizontal_flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0),
}


def get_preset(name: str, **overrides: object) -> AugmentationConfig:
    """Return the preset ``name`` with the given fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; expected one of {sorted(PRESETS)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return replace(PRESETS[name], **overrides)


class BatchAugmentation:
    """Apply an ``AugmentationConfig`` to batches of images (B, C, H, W) in [0, 1]."""

    def __init__(self, config: AugmentationConfig, output_size: int | None = None) -> None:
        self.config = config
        self.output_size = output_size

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        config = self.config
        out = random_resized_crop(
            images, config.crop_scale, config.crop_ratio, config.horizontal_flip_prob,
            self.output_size or images.shape[-1], generator,
        )
        if config.color_jitter_prob > 0:
            out = color_jitter(out, config, generator)
        if config.grayscale_prob > 0 and out.shape[1] == 3:
            out = _where_sample(_draw(out, generator) < config.grayscale_prob, to_grayscale(out).expand_as(out), out)
        if config.blur_prob > 0:
            out = gaussian_blur(out, config.blur_sigma, config.blur_prob, generator)
        if config.solarize_prob > 0:
            solarized = torch.where(out >= config.solarize_threshold, 1.0 - out, out)
            out = _where_sample(_draw(out, generator) < config.solarize_prob, solarized, out)
        return out.clamp_(0.0, 1.0)


def _draw(images: torch.Tensor, generator: torch.Generator | None, count: int = 1) -> torch.Tensor:
    """Return uniform samples (B,) or (B, count) in [0, 1) on the images' device."""
    shape = (images.shape[0],) if count == 1 else (images.shape[0], count)
    return torch.rand(shape, generator=generator, device=_generator_device(generator, images))


def _generator_device(generator: torch.Generator | None, images: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else images.device


def _uniform(images: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return (low + (high - low) * _draw(images, generator)).to(images.device)


def _where_sample(condition: torch.Tensor, when_true: torch.Tensor, when_false: torch.Tensor) -> torch.Tensor:
    return torch.where(condition.to(when_true.device).view(-1, 1, 1, 1), when_true, when_false)


def random_resized_crop(
    images: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_prob: float,
    output_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random area fraction ``scale`` with aspect ``ratio`` from each image, resize.

    The crop box is sampled per image (area, log-uniform aspect, position inside the
    image) and applied through one ``affine_grid``/``grid_sample`` call; a horizontal
    flip is the sign of the x scale. Returns (B, C, output_size, output_size).
    """
    batch = images.shape[0]
    area = _uniform(images, scale[0], scale[1], generator)
    log_ratio = _uniform(images, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    # Width and height as fractions of the image side, clipped to fit inside it.
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    center_x = (_draw(images, generator).to(images.device) * 2 - 1) * (1 - width)
    center_y = (_draw(images, generator).to(images.device) * 2 - 1) * (1 - height)
    flip = (_draw(images, generator).to(images.device) < flip_prob).float() * -2 + 1

    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    grid = F.affine_grid(theta, [batch, images.shape[1], output_size, output_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Return the ITU-R 601 luma (B, 1, H, W) of RGB images (B, 3, H, W)."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def color_jitter(images: torch.Tensor, config: AugmentationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Jitter brightness, contrast, saturation and hue with per-sample factors.

    The four adjustments are applied in a random order per batch (drawn from the
    generator), as torchvision's ColorJitter does per image.
    """
    apply = _draw(images, generator) < config.color_jitter_prob
    out = images
    order = torch.randperm(4, generator=generator, device=_generator_device(generator, images)).tolist()
    for step in order:
        if step == 0 and config.brightness > 0:
            factor = _uniform(images, 1 - config.brightness, 1 + config.brightness, generator).view(-1, 1, 1, 1)
            out = (out * factor).clamp(0, 1)
        elif step == 1 and config.contrast > 0:
            factor = _uniform(images, 1 - config.contrast, 1 + config.contrast, generator).view(-1, 1, 1, 1)
            mean = (to_grayscale(out) if out.shape[1] == 3 else out).mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * factor + mean).clamp(0, 1)
        elif step == 2 and config.saturation > 0 and out.shape[1] == 3:
            factor = _uniform(images, 1 - config.saturation, 1 + config.saturation, generator).view(-1, 1, 1, 1)
            gray = to_grayscale(out)
            out = ((out - gray) * factor + gray).clamp(0, 1)
        elif step == 3 and config.hue > 0 and out.shape[1] == 3:
            shift = _uniform(images, -config.hue, config.hue, generator)
            out = _rotate_hue(out, shift)
    return _where_sample(apply, out, images)


def _rotate_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (B,) turns, as a rotation about the gray axis in YIQ space."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(images.shape[0], 3, 3, device=images.device, dtype=images.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1] = cos
    rotation[:, 1, 2] = -sin
    rotation[:, 2, 1] = sin
    rotation[:, 2, 2] = cos
    matrix = from_yiq @ rotation @ to_yiq  # (B, 3, 3)
    out = torch.einsum("bij,bjhw->bihw", matrix, images)
    return out.clamp(0, 1)


def gaussian_blur(
    images: torch.Tensor,
    sigma: tuple[float, float],
    prob: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Blur each selected image with its own sigma, as two separable depthwise passes."""
    batch, channels, height, width = images.shape
    radius = max(1, int(math.ceil(3 * sigma[1])))
    radius = min(radius, (min(height, width) - 1) // 2) or 1
    sigmas = _uniform(images, sigma[0], sigma[1], generator)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigmas.view(-1, 1) ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # (B, 2r+1)
    # One depthwise group per (sample, channel): (1, B*C, H, W) with B*C kernels.
    weight = kernels.repeat_interleave(channels, dim=0)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, weight.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, weight.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    blurred = flat.view(batch, channels, height, width)
    return _where_sample(_draw(images, generator) < prob, blurred, images)
