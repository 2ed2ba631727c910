"""Context-encoder inpainting: masks, the masked-only loss, decoder and training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training import helpers
from tests.training.helpers import TINY_RESNET
from training.artifact import load_artifact
from training.config import TrainConfig
from training.losses.inpainting import masked_pixel_loss
from training.methods.inpainting import ConvDecoder, Inpainting, inpainting_mask
from training.trainer import train

CPU = torch.device("cpu")


def tiny_config(tmp_path: Path, **settings: object) -> TrainConfig:
    defaults = {**TINY_RESNET, "decoder_width": 32, "augment": "crop"}
    return helpers.tiny_config(tmp_path, "inpainting", **{**defaults, **settings})


def build(tmp_path: Path, digits, **settings: object) -> Inpainting:
    torch.manual_seed(0)
    return Inpainting.from_data(tiny_config(tmp_path, **settings), digits)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_center_mask_is_central_quarter() -> None:
    mask = inpainting_mask("center", 2, 8, seeded())
    assert mask.shape == (2, 1, 8, 8)
    assert bool((mask[:, :, 2:6, 2:6] == 1).all())
    assert mask.sum().item() == 2 * 16


def test_block_mask_one_square_per_sample() -> None:
    mask = inpainting_mask("block", 32, 8, seeded())
    assert bool((mask.sum(dim=(1, 2, 3)) == 16).all())
    rows = mask.amax(dim=3).sum(dim=(1, 2))
    columns = mask.amax(dim=2).sum(dim=(1, 2))
    assert bool((rows == 4).all())
    assert bool((columns == 4).all())
    assert len({tuple(sample.flatten().tolist()) for sample in mask}) > 1


def test_patches_mask_quarter_of_cells() -> None:
    mask = inpainting_mask("patches", 16, 16, seeded())
    assert bool((mask.sum(dim=(1, 2, 3)) == 64).all())
    assert len({tuple(sample.flatten().tolist()) for sample in mask}) > 1


def test_mask_follows_generator() -> None:
    assert torch.equal(inpainting_mask("block", 4, 8, seeded(1)), inpainting_mask("block", 4, 8, seeded(1)))


def test_mask_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown inpainting mask"):
        inpainting_mask("ring", 2, 8, seeded())


@pytest.mark.parametrize("size", [1, 3, 8, 13, 32])
def test_decoder_output_size(size: int) -> None:
    decoder = ConvDecoder(10, 3, size, 32)
    assert decoder(torch.randn(2, 10)).shape == (2, 3, size, size)


def test_loss_ignores_unmasked_pixels(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits).eval()
    images = method.normalize(digits.batch(torch.arange(4), CPU))
    mask = inpainting_mask("block", 4, 8, seeded())
    with torch.no_grad():
        reconstruction = method.decoder(method.encoder(images * (1 - mask)))
    changed = torch.where(mask == 0, torch.randn(4, 1, 8, 8, generator=seeded(1)), images)
    assert not torch.equal(changed, images)
    assert torch.equal(masked_pixel_loss(reconstruction, changed, mask), masked_pixel_loss(reconstruction, images, mask))


def test_encoder_never_sees_hidden_pixels(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    seen = []
    method.encoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    method.training_step(digits.batch(torch.arange(4), CPU), seeded(3))
    mask = (seen[0] == 0).all(dim=1)  # (N, H, W): hidden pixels are 0 after normalisation
    assert bool((mask.flatten(1).sum(dim=1) >= 16).all())


@pytest.mark.parametrize("kind", ["center", "block", "patches"])
def test_training_step_each_mask(tmp_path: Path, digits, kind: str) -> None:
    method = build(tmp_path, digits, inpainting_mask=kind)
    loss = method.training_step(digits.batch(torch.arange(8), CPU), seeded())["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(parameter.grad is not None for parameter in method.encoder.parameters())


def test_batch_of_one(tmp_path: Path, digits) -> None:
    loss = build(tmp_path, digits).training_step(digits.batch(torch.arange(1), CPU), seeded())["loss"]
    assert math.isfinite(loss.item())


def test_rejects_unknown_mask_setting(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="inpainting_mask"):
        build(tmp_path, digits, inpainting_mask="ring")


def test_embed_uses_unmasked_image(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits).eval()
    batch = digits.batch(torch.arange(4), CPU)
    assert torch.equal(method.embed(batch), method.encoder(method.normalize(batch)))


def test_trains_with_partial_batch_and_exports(tmp_path: Path) -> None:
    # 30 samples, 24 after the hold-out: two batches of 11 and a last one of 2.
    config = tiny_config(tmp_path, epochs=1, batch_size=11, limit=30, checkpoint_every=1000)
    (path,) = train(config, argv=[])
    artifact = load_artifact(path)
    assert artifact.meta.training["steps"] == 3
    assert artifact.encoder(torch.rand(2, 1, 8, 8)).shape == (2, 64)
