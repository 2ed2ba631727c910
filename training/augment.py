"""Batched image augmentations that run on the training device.

Each transform draws independent random parameters for every sample of a batch from a
``torch.Generator``. It applies them with tensor operations, so one call augments a
whole batch (B, C, H, W) of floats in [0, 1] without a per-image Python loop. The same
generator seed gives the same output, and the output keeps the input's dtype and range.
Grayscale (C = 1) and RGB (C = 3) images are supported; saturation, hue and grayscale
conversion only act on RGB.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationConfig:
    """Parameters of a view pipeline; every probability is drawn per sample.

    The pipeline runs in this order:

    - random resized crop, where ``crop_scale`` is the area fraction and ``crop_ratio``
      the width/height range, with a horizontal flip and a horizontal shear (slant)
      factor drawn from [-shear, shear];
    - stroke morphology: a 3x3 grey-level dilation or erosion (equal chance), which
      thickens or thins the strokes of line art such as characters;
    - colour jitter: factors from [1 - s, 1 + s] for brightness, contrast and
      saturation and a hue shift from [-hue, hue] turns, in a random order per sample;
    - random grayscale;
    - Gaussian blur with sigma drawn from ``blur_sigma``, in pixels;
    - solarisation: pixels at or above ``solarize_threshold`` become 1 - x.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip_prob: float = 0.5
    shear: float = 0.0
    morphology_prob: float = 0.0
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not 0.0 <= self.shear <= 1.0:
            raise ValueError(f"shear must be in [0, 1] (x shift per unit of y, in the crop box's coordinates), got {self.shear}")
        probabilities = ("horizontal_flip_prob", "morphology_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob")
        for name in probabilities:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] so that factors stay non-negative, got {value}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] turns, got {self.hue}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if not 0.0 <= self.solarize_threshold <= 1.0:
            raise ValueError(f"solarize_threshold must be in [0, 1], got {self.solarize_threshold}")


PRESETS: dict[str, AugmentationConfig] = {
    # SimCLR (Chen et al., 2020), CIFAR setting: colour strength s = 0.5, so jitter
    # (0.8s, 0.8s, 0.8s, 0.2s), and no blur at small resolution.
    "simclr": AugmentationConfig(),
    # SimCLR, ImageNet setting: strength s = 1 and blur on half of the images.
    "simclr_imagenet": AugmentationConfig(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5),
    # BYOL (Grill et al., 2020): the two views use different blur and solarisation
    # probabilities; this preset is the first view, ``byol_view2`` the second.
    "byol": AugmentationConfig(saturation=0.2, blur_prob=1.0, solarize_prob=0.0),
    "byol_view2": AugmentationConfig(saturation=0.2, blur_prob=0.1, solarize_prob=0.2),
    # Glyphs and digits: mirroring or cutting away most of a character changes its
    # identity, so crops keep at least 40 % of the area and nothing is flipped.
    "glyphs": AugmentationConfig(
        crop_scale=(0.4, 1.0), crop_ratio=(0.8, 1.25), horizontal_flip_prob=0.0, brightness=0.5, contrast=0.5,
        saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.3, blur_sigma=(0.1, 1.0),
    ),
    # Characters rendered from many fonts, 32 px or larger: ``glyphs`` plus views that
    # differ in slant and stroke weight, the main ways fonts of one letter differ. At
    # 8 px a 3x3 erosion erases most strokes, so small digits keep ``glyphs``.
    "fonts": AugmentationConfig(
        crop_scale=(0.4, 1.0), crop_ratio=(0.8, 1.25), horizontal_flip_prob=0.0, shear=0.3, morphology_prob=0.5,
        brightness=0.5, contrast=0.5, saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.3, blur_sigma=(0.1, 1.0),
    ),
    # Reconstruction and pretext-task methods (MAE, inpainting, rotation, jigsaw):
    # crops and flips only, as in their papers.
    "crop_flip": AugmentationConfig(crop_scale=(0.2, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0),
    "crop": AugmentationConfig(crop_scale=(0.4, 1.0), horizontal_flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0),
    "none": AugmentationConfig(
        crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), horizontal_flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0
    ),
}


def get_preset(name: str, **overrides: object) -> AugmentationConfig:
    """Return the preset ``name`` with the given fields replaced; ``None`` values are ignored."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = {spec.name for spec in dataclasses.fields(AugmentationConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown augmentation settings {unknown}; expected some of {sorted(fields)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return replace(PRESETS[name], **overrides)


def preset_augmentation(
    name: str,
    crop_scale_min: float | None = None,
    horizontal_flip_prob: float | None = None,
    shear: float | None = None,
    morphology_prob: float | None = None,
) -> BatchAugmentation:
    """Build the pipeline of preset ``name`` with the command line's overrides; None keeps the preset's value."""
    crop_scale = None
    if crop_scale_min is not None:
        crop_scale = (crop_scale_min, 1.0)
    config = get_preset(
        name, crop_scale=crop_scale, horizontal_flip_prob=horizontal_flip_prob, shear=shear, morphology_prob=morphology_prob
    )
    return BatchAugmentation(config)


class BatchAugmentation:
    """Apply an ``AugmentationConfig`` to batches of images (B, C, H, W) in [0, 1]."""

    def __init__(self, config: AugmentationConfig, output_size: int | None = None) -> None:
        self.config = config
        self.output_size = output_size

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"expected floating-point images in [0, 1], got dtype {images.dtype}")
        config = self.config
        out = random_resized_crop(
            images, config.crop_scale, config.crop_ratio, config.horizontal_flip_prob,
            self.output_size or images.shape[-1], generator, shear=config.shear,
        )
        if config.morphology_prob > 0:
            out = stroke_morphology(out, config.morphology_prob, generator)
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


def _draw(images: torch.Tensor, generator: torch.Generator | None, count: int | None = None) -> torch.Tensor:
    """Return uniform samples (B,) or (B, count) in [0, 1) on the images' device."""
    shape = (images.shape[0],) if count is None else (images.shape[0], count)
    device = generator.device if generator is not None else images.device
    return torch.rand(shape, generator=generator, device=device).to(images.device)


def _uniform(images: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """Return one uniform sample per image (B,) from [low, high), in the images' dtype."""
    return (low + (high - low) * _draw(images, generator)).to(images.dtype)


def _where_sample(condition: torch.Tensor, when_true: torch.Tensor, when_false: torch.Tensor) -> torch.Tensor:
    return torch.where(condition.to(when_true.device).view(-1, 1, 1, 1), when_true, when_false)


def random_resized_crop(
    images: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_prob: float,
    output_size: int,
    generator: torch.Generator | None = None,
    shear: float = 0.0,
) -> torch.Tensor:
    """Crop a random area fraction ``scale`` with aspect ``ratio`` from each image, resize.

    Each image gets its own box: an area, a log-uniform aspect and a position inside
    the image. One ``grid_sample`` call applies all boxes, and a horizontal flip is the
    sign of the x scale. A box wider or taller than the image is cut to the image side,
    and the other side grows so the box keeps its sampled area. With ``shear`` > 0 each
    box is also slanted: its x coordinate moves by a factor from [-shear, shear] times
    its y coordinate, about the box centre.
    Returns (B, C, output_size, output_size).
    """
    area = _uniform(images, scale[0], scale[1], generator).float()
    log_ratio = _uniform(images, math.log(ratio[0]), math.log(ratio[1]), generator).float()
    aspect = torch.exp(log_ratio)

    # Width and height are fractions of the image side, and area = width * height.
    width = torch.sqrt(area * aspect)
    height = torch.sqrt(area / aspect)
    width, height = torch.where(width > 1, 1.0, width), torch.where(width > 1, area, height)
    width, height = torch.where(height > 1, area, width), torch.where(height > 1, 1.0, height)
    center_x = (_draw(images, generator) * 2 - 1) * (1 - width)
    center_y = (_draw(images, generator) * 2 - 1) * (1 - height)
    flip = 1.0 - 2.0 * (_draw(images, generator) < flip_prob).float()

    # The grid maps output coordinates in [-1, 1] to input coordinates, as affine_grid
    # does for the box's scale-and-shift matrix. Boxes are axis-aligned, so x depends on
    # the column alone and y on the row alone: (B, 1, S) and (B, S, 1) broadcast to the
    # grid (B, S, S, 2) without affine_grid's batched matrix product over every pixel.
    base = _pixel_centres(output_size, images.device)  # (S,)
    grid = torch.empty(images.shape[0], output_size, output_size, 2, device=images.device, dtype=images.dtype)
    grid[..., 0] = (width * flip).view(-1, 1, 1) * base.view(1, 1, -1) + center_x.view(-1, 1, 1)
    grid[..., 1] = height.view(-1, 1, 1) * base.view(1, -1, 1) + center_y.view(-1, 1, 1)
    if shear > 0:
        # Slant: x moves with the output row, (B, 1, 1) * (1, S, 1) broadcast over columns.
        factor = _uniform(images, -shear, shear, generator)
        grid[..., 0] += factor.view(-1, 1, 1) * (height.view(-1, 1, 1) * base.view(1, -1, 1))
    # Without shear the grid stays inside the image and the padding never shows. A slanted
    # box reaches past the sides, where reflection would mirror strokes into false ones.
    padding = "border" if shear > 0 else "reflection"
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def stroke_morphology(images: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Dilate or erode each selected image (B, C, H, W) by a 3x3 window, with equal chance.

    Dilation (a 3x3 maximum) thickens bright strokes on a dark ground by one pixel on each
    side and erosion (a 3x3 minimum) thins them by as much, and the reverse for dark
    strokes. That is strong at small sizes: on 32 px glyphs an erosion keeps about a third
    of the ink of a typical letter. Borders are replicated, so they do not grow a frame.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    dilated = F.max_pool2d(padded, kernel_size=3, stride=1)
    eroded = -F.max_pool2d(-padded, kernel_size=3, stride=1)
    chosen = _draw(images, generator)
    dilate = chosen < prob / 2
    erode = (chosen >= prob / 2) & (chosen < prob)
    return _where_sample(dilate, dilated, _where_sample(erode, eroded, images))


def _pixel_centres(size: int, device: torch.device) -> torch.Tensor:
    """Return the centres (size,) of ``size`` pixels in [-1, 1], as ``align_corners=False`` places them."""
    return torch.linspace(-1.0, 1.0, size, device=device) * ((size - 1) / size)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Return the ITU-R 601 luma (B, 1, H, W) of RGB images (B, 3, H, W)."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


ADJUSTMENTS = ("brightness", "contrast", "saturation", "hue")

# RGB to YIQ, the NTSC colour space whose Y row is the ITU-R 601 luma. A hue shift
# rotates the I and Q axes.
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def color_jitter(images: torch.Tensor, config: AugmentationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Jitter brightness, contrast, saturation and hue with per-sample factors and order.

    Each sample draws its own four factors and its own order of the four adjustments,
    as torchvision's ColorJitter does per image. The jittered image replaces the input
    with probability ``config.color_jitter_prob``. Each of the four positions in the
    order costs one pass over the batch, whichever adjustment each sample takes there.
    """
    apply = _draw(images, generator) < config.color_jitter_prob
    factors = {
        "brightness": _uniform(images, 1 - config.brightness, 1 + config.brightness, generator),
        "contrast": _uniform(images, 1 - config.contrast, 1 + config.contrast, generator),
        "saturation": _uniform(images, 1 - config.saturation, 1 + config.saturation, generator),
        "hue": _uniform(images, -config.hue, config.hue, generator),
    }
    order = torch.argsort(_draw(images, generator, count=4), dim=1)  # (B, 4): adjustment index per position
    enabled = {name for name in ADJUSTMENTS if _changes(name, config, images)}
    if not enabled:
        return images

    # a sample that skips the jitter takes no adjustment (index -1) at any position
    order = torch.where(apply.view(-1, 1), order, -1)
    hue_matrix = _hue_rotation(factors["hue"], images.dtype) if "hue" in enabled else None
    out = images
    for position in range(4):
        out = _adjust_chosen(out, order[:, position], factors, enabled, hue_matrix)
    return out


def _changes(name: str, config: AugmentationConfig, images: torch.Tensor) -> bool:
    """Return whether adjustment ``name`` can change ``images`` under ``config``."""
    if name in ("saturation", "hue") and images.shape[1] != 3:
        return False
    return getattr(config, name) > 0


def _adjust_chosen(
    images: torch.Tensor,
    chosen: torch.Tensor,
    factors: dict[str, torch.Tensor],
    enabled: set[str],
    hue_matrix: torch.Tensor | None,
) -> torch.Tensor:
    """Apply to each image (B, C, H, W) the adjustment whose index ``chosen`` (B,) names.

    Brightness, contrast and saturation are all ``(x - shift) * factor + shift``: with
    shift 0, the image's mean gray level, or each pixel's gray level. So one pass with
    per-sample factors and shifts applies them. A sample whose chosen adjustment is off,
    or whose index is -1, gets factor 1 and shift 0 and stays unchanged.
    """
    batch = images.shape[0]
    scale = torch.ones(batch, dtype=images.dtype, device=images.device)
    for index, name in enumerate(ADJUSTMENTS[:3]):
        if name in enabled:
            scale = torch.where(chosen == index, factors[name], scale)

    shift = torch.zeros(batch, 1, 1, 1, dtype=images.dtype, device=images.device)
    if enabled & {"contrast", "saturation"}:
        gray = to_grayscale(images) if images.shape[1] == 3 else images  # (B, 1, H, W), or (B, C, H, W) if C != 3
        if "contrast" in enabled:
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            shift = torch.where((chosen == 1).view(-1, 1, 1, 1), mean, shift)
        if "saturation" in enabled:
            shift = torch.where((chosen == 2).view(-1, 1, 1, 1), gray, shift)

    out = (images - shift) * scale.view(-1, 1, 1, 1) + shift
    if hue_matrix is not None:
        out = torch.where((chosen == 3).view(-1, 1, 1, 1), _rotate_hue(images, hue_matrix), out)
    return out.clamp_(0, 1)


def _hue_rotation(shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return the RGB matrices (B, 3, 3) that rotate hue by ``shift`` (B,) turns in YIQ space.

    This approximates torchvision's HSV hue shift: both turn colours around the gray
    axis and keep gray pixels unchanged.
    """
    # The constant inverse is computed on the CPU because torch.linalg.inv synchronises
    # a CUDA device with the CPU (PyTorch documentation of torch.linalg.inv).
    to_yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
    from_yiq = torch.linalg.inv(to_yiq).to(device=shift.device, dtype=torch.float32)
    to_yiq = to_yiq.to(device=shift.device, dtype=torch.float32)
    angle = shift.float() * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(shift.shape[0], 3, 3, device=shift.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1] = cos
    rotation[:, 1, 2] = -sin
    rotation[:, 2, 1] = sin
    rotation[:, 2, 2] = cos
    return (from_yiq @ rotation @ to_yiq).to(dtype)


def _rotate_hue(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply per-sample RGB matrices (B, 3, 3) to images (B, 3, H, W)."""
    return torch.einsum("bij,bjhw->bihw", matrix, images)


def gaussian_blur(
    images: torch.Tensor,
    sigma: tuple[float, float],
    prob: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Blur each selected image with its own sigma, as two separable depthwise passes.

    The kernel radius is 3 times the largest sigma, cut to what the image side allows.
    Borders are reflected, or replicated for images under 2 pixels.
    """
    batch, channels, height, width = images.shape
    radius = max(1, math.ceil(3 * sigma[1]))
    radius = max(1, min(radius, min(height, width) - 1))
    sigmas = _uniform(images, sigma[0], sigma[1], generator).float()
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernels = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigmas.view(-1, 1) ** 2))
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).to(images.dtype)  # (B, 2r+1)

    # One depthwise group per (sample, channel): (1, B*C, H, W) with B*C kernels.
    weight = kernels.repeat_interleave(channels, dim=0)
    flat = images.reshape(1, batch * channels, height, width)
    padding_mode = "reflect" if min(height, width) > radius else "replicate"
    flat = F.pad(flat, (radius, radius, radius, radius), mode=padding_mode)
    flat = F.conv2d(flat, weight.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, weight.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    blurred = flat.view(batch, channels, height, width)
    return _where_sample(_draw(images, generator) < prob, blurred, images)
