"""MAE: per-sample random masking, patch order, the masked-only loss and export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training import helpers
from training.artifact import load_artifact
from training.config import TrainConfig
from training.losses.mae import mae_loss
from training.methods.mae import MAE
from training.trainer import train

CPU = torch.device("cpu")


def tiny_config(tmp_path: Path, **settings: object) -> TrainConfig:
    defaults = {"patch_size": 2, "encoder_width": 32, "encoder_depth": 1, "heads": 2, "decoder_width": 32, "decoder_depth": 1, "augment": "crop"}
    return helpers.tiny_config(tmp_path, "mae", **{**defaults, **settings})


def build(tmp_path: Path, digits, **settings: object) -> MAE:
    torch.manual_seed(0)
    return MAE.from_data(tiny_config(tmp_path, **settings), digits)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_defaults_to_vit(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    assert method.architecture["name"] == "vit"
    assert method.num_patches == 16


@pytest.mark.parametrize("mask_ratio", [0.75, 0.5, 0.3])
def test_masks_round_ratio_patches_per_sample(tmp_path: Path, digits, mask_ratio: float) -> None:
    method = build(tmp_path, digits, mask_ratio=mask_ratio)
    keep, restore, mask = method.random_masking(32, seeded())
    expected = round(mask_ratio * 16)
    assert mask.shape == (32, 16)
    assert bool((mask.sum(dim=1) == expected).all())
    assert keep.shape == (32, 16 - expected)


def test_masks_differ_per_sample(tmp_path: Path, digits) -> None:
    _, _, mask = build(tmp_path, digits).random_masking(32, seeded())
    assert len({tuple(row.tolist()) for row in mask}) > 1


def test_kept_patches_are_the_unmasked_ones(tmp_path: Path, digits) -> None:
    keep, restore, mask = build(tmp_path, digits).random_masking(8, seeded())
    for row in range(8):
        assert set(keep[row].tolist()) == set(torch.nonzero(mask[row] == 0).flatten().tolist())


def test_restore_inverts_shuffle(tmp_path: Path, digits) -> None:
    keep, restore, _ = build(tmp_path, digits).random_masking(8, seeded())
    shuffle = torch.argsort(restore, dim=1)
    assert torch.equal(shuffle[:, : keep.shape[1]], keep)
    assert torch.equal(torch.gather(shuffle, 1, restore), torch.arange(16).expand(8, 16))


def test_masking_follows_generator(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    assert torch.equal(method.random_masking(4, seeded(1))[2], method.random_masking(4, seeded(1))[2])
    assert not torch.equal(method.random_masking(4, seeded(1))[2], method.random_masking(4, seeded(2))[2])


def test_patchify_matches_vit_patch_order(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    images = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8)
    patches = method.patchify(images)
    assert patches.shape == (2, 16, 4)
    # Patch 5 is row 1, column 1 of the 4 x 4 grid: pixels (2..3, 2..3).
    assert patches[0, 5].tolist() == [18.0, 19.0, 26.0, 27.0]


def test_loss_ignores_visible_patches(tmp_path: Path, digits) -> None:
    # The decoder's predictions are fixed; only the targets at visible patches change.
    method = build(tmp_path, digits)
    images = digits.batch(torch.arange(4), CPU)
    _, _, mask = method.random_masking(4, seeded())
    prediction = torch.randn(4, 16, 4, generator=seeded(1))
    pixel_mask = mask.view(4, 1, 4, 1, 4, 1).expand(4, 1, 4, 2, 4, 2).reshape(4, 1, 8, 8)
    changed = torch.where(pixel_mask == 0, torch.rand(4, 1, 8, 8, generator=seeded(2)), images)
    original = mae_loss(prediction, method.patchify(images), mask)
    assert torch.equal(mae_loss(prediction, method.patchify(changed), mask), original)


def test_training_step_gradients(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    loss = method.training_step(digits.batch(torch.arange(8), CPU), seeded())["loss"]
    loss.backward()
    assert method.decoder.mask_token.grad is not None
    assert method.encoder.patch_embedding.weight.grad is not None


def test_same_seed_same_loss(tmp_path: Path, digits) -> None:
    batch = digits.batch(torch.arange(8), CPU)
    first = build(tmp_path, digits).training_step(batch, seeded(4))["loss"]
    second = build(tmp_path, digits).training_step(batch, seeded(4))["loss"]
    assert torch.equal(first, second)


def test_batch_of_one(tmp_path: Path, digits) -> None:
    loss = build(tmp_path, digits).training_step(digits.batch(torch.arange(1), CPU), seeded())["loss"]
    assert math.isfinite(loss.item())


def test_embed_uses_whole_image(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits).eval()
    batch = digits.batch(torch.arange(4), CPU)
    assert torch.equal(method.embed(batch), method.encoder(method.normalize(batch)))


def test_single_value_patches_train_on_raw_pixels(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, patch_size=1)
    assert not method.norm_pix_loss


def test_rejects_non_vit_encoder(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="vit"):
        build(tmp_path, digits, encoder="resnet", encoder_depth=10)


def test_rejects_ratio_masking_everything(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="visible"):
        build(tmp_path, digits, patch_size=4, mask_ratio=0.9)


def test_trains_with_partial_batch_and_exports(tmp_path: Path) -> None:
    # 30 samples, 24 after the hold-out: two batches of 11 and a last one of 2.
    config = tiny_config(tmp_path, epochs=1, batch_size=11, limit=30, checkpoint_every=1000)
    (path,) = train(config, argv=[])
    artifact = load_artifact(path)
    assert artifact.meta.architecture.name == "vit"
    assert artifact.meta.training["steps"] == 3
    assert artifact.encoder(torch.rand(2, 1, 8, 8)).shape == (2, 32)
