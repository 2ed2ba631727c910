"""BYOL, MAE and masked-pixel losses against slow per-sample reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import BYOLLoss, byol_loss, mae_loss, masked_pixel_loss, normalize_patches


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_byol(prediction: torch.Tensor, target: torch.Tensor) -> float:
    total = 0.0
    for p, z in zip(prediction.tolist(), target.tolist()):
        p_norm = math.sqrt(sum(value * value for value in p))
        z_norm = math.sqrt(sum(value * value for value in z))
        squared = sum((a / p_norm - b / z_norm) ** 2 for a, b in zip(p, z))
        total += squared
    return total / len(prediction)


def reference_mae(prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> float:
    total, count = 0.0, 0
    for n in range(prediction.shape[0]):
        for index in range(prediction.shape[1]):
            if mask[n, index] == 0:
                continue
            pixels = patches[n, index].tolist()
            if norm_pix:
                mean = sum(pixels) / len(pixels)
                variance = sum((value - mean) ** 2 for value in pixels) / len(pixels)
                pixels = [(value - mean) / math.sqrt(variance + 1e-6) for value in pixels]
            predicted = prediction[n, index].tolist()
            total += sum((a - b) ** 2 for a, b in zip(predicted, pixels)) / len(pixels)
            count += 1
    return total / count


def reference_masked_pixels(reconstruction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> float:
    total, count = 0.0, 0
    batch, channels, height, width = images.shape
    for n in range(batch):
        for y in range(height):
            for x in range(width):
                if mask[n, 0, y, x] == 0:
                    continue
                for c in range(channels):
                    total += float(reconstruction[n, c, y, x] - images[n, c, y, x]) ** 2
                    count += 1
    return total / count


def test_byol_loss_matches_reference() -> None:
    prediction = torch.randn(6, 5, generator=generator(1), dtype=torch.float64)
    target = torch.randn(6, 5, generator=generator(2), dtype=torch.float64)
    assert float(byol_loss(prediction, target)) == pytest.approx(reference_byol(prediction, target), rel=1e-9)


def test_byol_loss_exact_values() -> None:
    vectors = torch.randn(4, 3, generator=generator())
    assert float(byol_loss(vectors, 3 * vectors)) == pytest.approx(0.0, abs=1e-6)
    assert float(byol_loss(vectors, -vectors)) == pytest.approx(4.0, abs=1e-6)


def test_byol_loss_no_gradient_to_target() -> None:
    prediction = torch.randn(4, 3, generator=generator(1), requires_grad=True)
    target = torch.randn(4, 3, generator=generator(2), requires_grad=True)
    byol_loss(prediction, target).backward()
    assert prediction.grad is not None
    assert target.grad is None


def test_byol_module_symmetric() -> None:
    a, b, c, d = (torch.randn(4, 3, generator=generator(seed)) for seed in range(4))
    expected = byol_loss(a, d) + byol_loss(b, c)
    assert torch.allclose(BYOLLoss()((a, b), (c, d)), expected)


def test_byol_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="N, D"):
        byol_loss(torch.randn(4, 3), torch.randn(4, 2))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_reference(norm_pix: bool) -> None:
    prediction = torch.randn(3, 7, 4, generator=generator(1), dtype=torch.float64)
    patches = torch.rand(3, 7, 4, generator=generator(2), dtype=torch.float64)
    mask = (torch.rand(3, 7, generator=generator(3)) < 0.6).double()
    mask[:, 0] = 1
    expected = reference_mae(prediction, patches, mask, norm_pix)
    assert float(mae_loss(prediction, patches, mask, norm_pix)) == pytest.approx(expected, rel=1e-9)


def test_mae_loss_ignores_visible_patches() -> None:
    prediction = torch.randn(2, 6, 4, generator=generator(1))
    patches = torch.rand(2, 6, 4, generator=generator(2))
    mask = torch.tensor([[1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 1]]).float()
    visible = (mask == 0).unsqueeze(-1)
    changed_prediction = torch.where(visible, torch.randn(2, 6, 4, generator=generator(3)), prediction)
    changed_patches = torch.where(visible, torch.rand(2, 6, 4, generator=generator(4)), patches)
    assert torch.equal(mae_loss(changed_prediction, changed_patches, mask), mae_loss(prediction, patches, mask))


def test_normalize_patches_zero_mean_unit_std() -> None:
    patches = torch.rand(2, 5, 16, generator=generator(), dtype=torch.float64) * 3 + 1
    normalised = normalize_patches(patches, eps=0.0)
    assert torch.allclose(normalised.mean(dim=-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(normalised.std(dim=-1, correction=0), torch.ones(2, 5, dtype=torch.float64))


def test_mae_loss_rejects_wrong_mask_shape() -> None:
    with pytest.raises(ValueError, match="mask"):
        mae_loss(torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.ones(2, 3))


def test_masked_pixel_loss_matches_reference() -> None:
    reconstruction = torch.randn(2, 3, 5, 5, generator=generator(1), dtype=torch.float64)
    images = torch.rand(2, 3, 5, 5, generator=generator(2), dtype=torch.float64)
    mask = (torch.rand(2, 1, 5, 5, generator=generator(3)) < 0.3).double()
    expected = reference_masked_pixels(reconstruction, images, mask)
    assert float(masked_pixel_loss(reconstruction, images, mask)) == pytest.approx(expected, rel=1e-9)


def test_masked_pixel_loss_ignores_unmasked_pixels() -> None:
    reconstruction = torch.randn(2, 3, 6, 6, generator=generator(1))
    images = torch.rand(2, 3, 6, 6, generator=generator(2))
    mask = torch.zeros(2, 1, 6, 6)
    mask[:, :, 1:4, 2:5] = 1
    unmasked = mask == 0
    changed_reconstruction = torch.where(unmasked, torch.randn(2, 3, 6, 6, generator=generator(3)), reconstruction)
    changed_images = torch.where(unmasked, torch.rand(2, 3, 6, 6, generator=generator(4)), images)
    assert torch.equal(masked_pixel_loss(changed_reconstruction, changed_images, mask), masked_pixel_loss(reconstruction, images, mask))


def test_masked_pixel_loss_gradient_only_on_masked_pixels() -> None:
    reconstruction = torch.randn(1, 2, 4, 4, generator=generator(1), requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    masked_pixel_loss(reconstruction, torch.rand(1, 2, 4, 4, generator=generator(2)), mask).backward()
    assert bool((reconstruction.grad * (1 - mask) == 0).all())
    assert bool((reconstruction.grad * mask != 0).any())


def test_masked_pixel_loss_rejects_wrong_mask_shape() -> None:
    with pytest.raises(ValueError, match="mask"):
        masked_pixel_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.ones(2, 3, 4, 4))
