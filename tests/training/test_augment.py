"""Batched augmentations: per-sample parameters, reproducibility, range, dtype and channels."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from training.augment import (
    PRESETS,
    AugmentationConfig,
    BatchAugmentation,
    color_jitter,
    gaussian_blur,
    get_preset,
    preset_augmentation,
    random_resized_crop,
    stroke_morphology,
    to_grayscale,
)

IDENTITY = get_preset("none")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int = 8, channels: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=seeded(seed))


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_preset_same_seed_same_output(preset: str, channels: int) -> None:
    augmentation = BatchAugmentation(get_preset(preset))
    batch = images(channels=channels)
    first = augmentation(batch, seeded(5))
    second = augmentation(batch, seeded(5))
    assert torch.equal(first, second)


@pytest.mark.parametrize("preset", ["simclr", "byol", "byol_view2", "glyphs"])
def test_preset_different_seed_different_output(preset: str) -> None:
    augmentation = BatchAugmentation(get_preset(preset))
    batch = images()
    assert not torch.equal(augmentation(batch, seeded(1)), augmentation(batch, seeded(2)))


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_preset_keeps_dtype_shape_and_range(preset: str, channels: int, dtype: torch.dtype) -> None:
    batch = images(channels=channels).to(dtype)
    out = BatchAugmentation(get_preset(preset))(batch, seeded())
    assert out.dtype == dtype
    assert out.shape == batch.shape
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0


def test_augmentation_output_size() -> None:
    out = BatchAugmentation(get_preset("simclr"), output_size=10)(images(size=16), seeded())
    assert out.shape == (8, 3, 10, 10)


def test_augmentation_rejects_integer_images() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        BatchAugmentation(IDENTITY)((images() * 255).to(torch.uint8), seeded())


def test_augmentation_rejects_unbatched_images() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        BatchAugmentation(IDENTITY)(torch.rand(3, 8, 8), seeded())


def test_augmentation_batch_of_one_pixel_images() -> None:
    out = BatchAugmentation(get_preset("byol"))(images(size=1), seeded())
    assert out.shape == (8, 3, 1, 1)


def test_none_preset_is_identity() -> None:
    batch = images()
    assert torch.allclose(BatchAugmentation(IDENTITY)(batch, seeded()), batch, atol=1e-6)


def test_crop_full_scale_flip_mirrors_image() -> None:
    batch = images()
    out = random_resized_crop(batch, (1.0, 1.0), (1.0, 1.0), 1.0, 16, seeded())
    assert torch.allclose(out, batch.flip(-1), atol=1e-6)


def test_crop_differs_per_sample() -> None:
    # The same image repeated: any difference between outputs comes from per-sample boxes.
    batch = images(batch=1).expand(8, -1, -1, -1)
    out = random_resized_crop(batch, (0.2, 0.5), (3 / 4, 4 / 3), 0.0, 16, seeded())
    distinct = {tuple(sample.flatten().tolist()) for sample in out}
    assert len(distinct) == 8


def test_crop_samples_stay_inside_image() -> None:
    # A horizontal ramp: with reflection padding, a box leaving the image would fold values back.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(64, 1, 32, 32).contiguous()
    out = random_resized_crop(ramp, (0.08, 1.0), (1 / 3, 3.0), 0.0, 32, seeded())
    rows = out[:, 0, 0, :]  # (64, 32), each crop of a ramp is again a rising ramp
    assert bool((rows[:, 1:] >= rows[:, :-1] - 1e-5).all())


def test_crop_keeps_sampled_area_when_box_is_clipped() -> None:
    # Area 0.9 at aspect 3 would be 1.64 wide; clipped to the full width, the height is 0.9.
    ramp = torch.linspace(0, 1, 101).view(1, 1, 101, 1).expand(1, 1, 101, 101).contiguous()
    out = random_resized_crop(ramp, (0.9, 0.9), (3.0, 3.0), 0.0, 101, seeded())
    column = out[0, 0, :, 50]
    assert float(column.max() - column.min()) == pytest.approx(0.9, abs=0.02)


def vertical_bar(batch: int, size: int = 33) -> torch.Tensor:
    """Return ``batch`` copies of a one-pixel-wide bright vertical bar in the middle column."""
    bar = torch.zeros(batch, 1, size, size)
    bar[..., size // 2] = 1.0
    return bar


def column_of_peak(image: torch.Tensor) -> torch.Tensor:
    """Return the x position (H,) of each row's brightness centroid of an image (1, H, W)."""
    xs = torch.arange(image.shape[-1], dtype=image.dtype)
    return (image[0] * xs).sum(dim=-1) / image[0].sum(dim=-1)


def test_shear_slants_vertical_bar() -> None:
    out = random_resized_crop(vertical_bar(16), (1.0, 1.0), (1.0, 1.0), 0.0, 33, seeded(), shear=0.5)
    slopes = []
    for sample in out:
        centres = column_of_peak(sample)[4:-4]  # inner rows, away from the top and bottom edges
        slope = float((centres[-1] - centres[0]) / (len(centres) - 1))
        slopes.append(slope)
        # a straight slanted line: every row's centre lies on the line through the ends
        line = torch.linspace(float(centres[0]), float(centres[-1]), len(centres))
        assert torch.allclose(centres, line, atol=0.05)
    assert max(abs(slope) for slope in slopes) <= 0.5 + 1e-3
    assert max(abs(slope) for slope in slopes) > 0.3
    assert min(slopes) < 0 < max(slopes)
    assert len({round(slope, 4) for slope in slopes}) == 16


def test_shear_is_about_the_centre() -> None:
    out = random_resized_crop(vertical_bar(8), (1.0, 1.0), (1.0, 1.0), 0.0, 33, seeded(), shear=0.5)
    for sample in out:
        assert float(column_of_peak(sample)[16]) == pytest.approx(16.0, abs=1e-3)


def test_shear_keeps_centre_row_of_flipped_crops() -> None:
    # The shear factor is drawn last, so the same seed gives the same boxes with and without it.
    batch = images(batch=8, channels=1, size=33)
    plain = random_resized_crop(batch, (0.3, 0.6), (3 / 4, 4 / 3), 1.0, 33, seeded())
    slanted = random_resized_crop(batch, (0.3, 0.6), (3 / 4, 4 / 3), 1.0, 33, seeded(), shear=0.5)
    assert torch.allclose(slanted[..., 16, :], plain[..., 16, :], atol=1e-5)
    assert not torch.allclose(slanted, plain, atol=1e-3)


def test_shear_adds_no_mirrored_strokes() -> None:
    # A bar at the right edge: a slanted box reaches past it and must not reflect it back.
    bar = torch.zeros(16, 1, 32, 32)
    bar[..., 29:31] = 1.0
    out = random_resized_crop(bar, (1.0, 1.0), (1.0, 1.0), 0.0, 32, seeded(), shear=0.3)
    assert float(out[..., :24].max()) == 0.0


def test_zero_shear_draws_nothing_extra() -> None:
    # Runs recorded before shear existed must draw the same random numbers.
    generator = seeded()
    random_resized_crop(images(), (0.2, 1.0), (3 / 4, 4 / 3), 0.5, 16, generator, shear=0.0)
    expected = seeded()
    for _ in range(5):  # area, aspect, centre x, centre y, flip
        torch.rand(8, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


def test_morphology_dilates_or_erodes_a_point() -> None:
    point = torch.zeros(64, 1, 9, 9)
    point[..., 4, 4] = 1.0
    out = stroke_morphology(point, 1.0, seeded())
    sums = out.sum(dim=(1, 2, 3))
    # dilation grows the point to its 3x3 neighbourhood, erosion removes it
    assert set(sums.tolist()) == {0.0, 9.0}
    dilated = out[sums == 9.0]
    assert bool((dilated[..., 3:6, 3:6] == 1.0).all())
    assert 16 <= int((sums == 9.0).sum()) <= 48


def test_morphology_thickens_dark_strokes_too() -> None:
    # A dark line on a bright ground: erosion widens the line, dilation removes it.
    line = torch.ones(64, 1, 9, 9)
    line[..., 4, :] = 0.0
    out = stroke_morphology(line, 1.0, seeded())
    dark_rows = (out[:, 0, :, 4] == 0.0).sum(dim=-1)
    assert set(dark_rows.tolist()) == {0, 3}


def test_morphology_probability_zero_keeps_images() -> None:
    batch = images()
    assert torch.equal(stroke_morphology(batch, 0.0, seeded()), batch)


def test_morphology_applies_to_about_prob_of_samples() -> None:
    batch = images(batch=400, channels=1)
    out = stroke_morphology(batch, 0.5, seeded())
    changed = (out != batch).flatten(1).any(dim=1)
    dilated = changed & (out >= batch).flatten(1).all(dim=1)
    eroded = changed & (out <= batch).flatten(1).all(dim=1)
    assert 0.4 < float(changed.float().mean()) < 0.6
    assert 0.15 < float(dilated.float().mean()) < 0.35
    assert 0.15 < float(eroded.float().mean()) < 0.35
    assert int((dilated | eroded).sum()) == int(changed.sum())


def test_brightness_factor_differs_per_sample() -> None:
    config = dataclasses.replace(IDENTITY, color_jitter_prob=1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    batch = torch.full((8, 3, 4, 4), 0.5)
    out = color_jitter(batch, config, seeded())
    factors = out[:, 0, 0, 0] / 0.5
    assert len(set(factors.tolist())) == 8
    assert bool(((factors >= 0.5) & (factors <= 1.5)).all())


def test_color_jitter_probability_zero_keeps_images() -> None:
    config = dataclasses.replace(get_preset("simclr"), color_jitter_prob=0.0)
    batch = images()
    assert torch.equal(color_jitter(batch, config, seeded()), batch)


def test_color_jitter_applies_to_about_prob_of_samples() -> None:
    config = dataclasses.replace(IDENTITY, color_jitter_prob=0.5, brightness=0.5)
    batch = images(batch=400, size=2)
    changed = (color_jitter(batch, config, seeded()) != batch).flatten(1).any(dim=1).float().mean()
    assert 0.4 < float(changed) < 0.6


def test_hue_keeps_gray_pixels() -> None:
    config = dataclasses.replace(IDENTITY, color_jitter_prob=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    gray = torch.rand(8, 1, 4, 4, generator=seeded()).expand(8, 3, 4, 4)
    assert torch.allclose(color_jitter(gray, config, seeded()), gray, atol=1e-5)


def test_saturation_zero_factor_gives_grayscale() -> None:
    config = dataclasses.replace(IDENTITY, color_jitter_prob=1.0, saturation=1.0)
    batch = images(batch=64)
    out = color_jitter(batch, config, seeded())
    # Samples whose factor came out near 0 are almost gray; all stay in range.
    spread = (out.max(dim=1).values - out.min(dim=1).values).mean(dim=(1, 2))
    assert float(spread.min()) < 0.05
    assert float(out.max()) <= 1.0


def test_color_jitter_grayscale_images_only_brightness_contrast() -> None:
    config = dataclasses.replace(IDENTITY, color_jitter_prob=1.0, brightness=0.0, contrast=0.0, saturation=1.0, hue=0.5)
    batch = images(channels=1)
    assert torch.equal(color_jitter(batch, config, seeded()), batch)


def test_grayscale_probability_one_gives_equal_channels() -> None:
    config = dataclasses.replace(IDENTITY, grayscale_prob=1.0)
    out = BatchAugmentation(config)(images(), seeded())
    assert torch.allclose(out[:, 0], out[:, 1])
    assert torch.allclose(out[:, 1], out[:, 2])


def test_grayscale_matches_luma() -> None:
    batch = images()
    expected = 0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2]
    assert torch.allclose(to_grayscale(batch)[:, 0], expected)


def test_blur_keeps_constant_images() -> None:
    batch = torch.full((4, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(batch, (0.1, 2.0), 1.0, seeded()), batch, atol=1e-6)


def test_blur_keeps_mass_and_spreads_a_point() -> None:
    batch = torch.zeros(4, 1, 15, 15)
    batch[:, :, 7, 7] = 1.0
    out = gaussian_blur(batch, (0.5, 2.0), 1.0, seeded())
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(4), atol=1e-5)
    assert float(out[:, 0, 7, 7].max()) < 1.0


def test_blur_sigma_differs_per_sample() -> None:
    batch = torch.zeros(8, 1, 15, 15)
    batch[:, :, 7, 7] = 1.0
    centres = gaussian_blur(batch, (0.5, 2.0), 1.0, seeded())[:, 0, 7, 7]
    assert len(set(centres.tolist())) == 8


def test_solarize_inverts_bright_pixels() -> None:
    config = dataclasses.replace(IDENTITY, solarize_prob=1.0, solarize_threshold=0.5)
    batch = torch.tensor([0.2, 0.5, 0.9]).view(1, 1, 1, 3).expand(1, 1, 3, 3)
    out = BatchAugmentation(config)(batch, seeded())
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.2, 0.5, 0.1]))


def test_byol_presets_follow_paper() -> None:
    view_1, view_2 = get_preset("byol"), get_preset("byol_view2")
    assert (view_1.blur_prob, view_1.solarize_prob) == (1.0, 0.0)
    assert (view_2.blur_prob, view_2.solarize_prob) == (0.1, 0.2)
    assert (view_1.brightness, view_1.contrast, view_1.saturation, view_1.hue) == (0.4, 0.4, 0.2, 0.1)


def test_simclr_preset_color_strength_half() -> None:
    preset = get_preset("simclr")
    assert (preset.brightness, preset.contrast, preset.saturation, preset.hue) == (0.4, 0.4, 0.4, 0.1)


def test_get_preset_overrides_fields() -> None:
    preset = get_preset("simclr", crop_scale=(0.5, 1.0), horizontal_flip_prob=None)
    assert preset.crop_scale == (0.5, 1.0)
    assert preset.horizontal_flip_prob == 0.5


def test_get_preset_rejects_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        get_preset("nope")


def test_get_preset_rejects_unknown_setting() -> None:
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        get_preset("simclr", blur=1.0)


def test_preset_augmentation_applies_overrides() -> None:
    augmentation = preset_augmentation("simclr", crop_scale_min=0.6, horizontal_flip_prob=0.0)
    assert augmentation.config.crop_scale == (0.6, 1.0)
    assert augmentation.config.horizontal_flip_prob == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.5, 0.4)},
        {"crop_ratio": (2.0, 1.0)},
        {"horizontal_flip_prob": 1.5},
        {"grayscale_prob": -0.1},
        {"brightness": 1.5},
        {"hue": 0.6},
        {"blur_sigma": (0.0, 1.0)},
        {"solarize_threshold": 2.0},
        {"shear": -0.1},
        {"shear": 1.5},
        {"morphology_prob": 1.2},
    ],
)
def test_config_rejects_invalid_settings(settings: dict) -> None:
    with pytest.raises(ValueError):
        AugmentationConfig(**settings)


def test_crop_full_image_matches_bilinear_resize() -> None:
    batch = images(size=16)
    out = random_resized_crop(batch, (1.0, 1.0), (1.0, 1.0), 0.0, 8, seeded())
    expected = F.interpolate(batch, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected, atol=1e-6)


# RGB to YIQ, the colour space in which the hue rotation turns the I and Q axes.
YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


def adjust_one(image: torch.Tensor, index: int, factor: float, hue: float) -> torch.Tensor:
    """Apply adjustment ``index`` (brightness, contrast, saturation, hue) to one image (C, H, W)."""
    rgb = image.shape[0] == 3
    gray = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(dim=0, keepdim=True) if rgb else image
    if index == 0:
        return (image * factor).clamp(0, 1)
    if index == 1:
        mean = gray.mean()
        return ((image - mean) * factor + mean).clamp(0, 1)
    if not rgb:
        return image
    if index == 2:
        return ((image - gray) * factor + gray).clamp(0, 1)
    angle = 2 * math.pi * hue
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(angle), -math.sin(angle)], [0.0, math.sin(angle), math.cos(angle)]],
        dtype=torch.float64,
    )
    matrix = (torch.linalg.inv(YIQ) @ rotation @ YIQ).float()
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp(0, 1)


def jitter_one_at_a_time(batch: torch.Tensor, config: AugmentationConfig, seed: int) -> torch.Tensor:
    """Jitter each image on its own, drawing the parameters in the order color_jitter draws them."""
    generator = seeded(seed)
    size = batch.shape[0]
    apply = torch.rand(size, generator=generator) < config.color_jitter_prob
    strengths = (config.brightness, config.contrast, config.saturation)
    factors = [1 - strength + 2 * strength * torch.rand(size, generator=generator) for strength in strengths]
    hues = -config.hue + 2 * config.hue * torch.rand(size, generator=generator)
    order = torch.argsort(torch.rand(size, 4, generator=generator), dim=1)
    out = []
    for sample in range(size):
        image = batch[sample]
        if apply[sample]:
            for index in order[sample].tolist():
                factor = float(factors[index][sample]) if index < 3 else 0.0
                image = adjust_one(image, index, factor, float(hues[sample]))
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", ["glyphs", "simclr_imagenet"])
def test_color_jitter_matches_per_image_loop(preset: str, channels: int) -> None:
    config = get_preset(preset)
    batch = images(batch=64, channels=channels, size=6)
    expected = jitter_one_at_a_time(batch, config, seed=3)
    assert torch.allclose(color_jitter(batch, config, seeded(3)), expected, atol=1e-5)


@pytest.mark.parametrize("method", ["simclr", "byol", "mae", "rotation", "jigsaw", "inpainting"])
def test_methods_apply_shear_and_morphology_flags(tmp_path, digits, method: str) -> None:
    from tests.training.helpers import TINY_RESNET, tiny_config
    from training.methods import method_class

    encoder = {"encoder": "vit", "encoder_width": 16, "encoder_depth": 1, "heads": 2} if method == "mae" else TINY_RESNET
    config = tiny_config(tmp_path, method, **encoder, shear=0.2, morphology_prob=0.4)
    built = method_class(method).from_data(config, digits)
    augmentations = getattr(built, "augmentations", None) or [built.augmentation]
    for augmentation in augmentations:
        assert augmentation.config.shear == 0.2
        assert augmentation.config.morphology_prob == 0.4
