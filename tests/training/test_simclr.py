"""SimCLR's training step: how the two views of each image are laid out and drawn."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training import helpers
from tests.training.helpers import TINY_RESNET
from training.methods.simclr import SimCLR

CPU = torch.device("cpu")


def build(tmp_path: Path, digits, augment: str) -> SimCLR:
    torch.manual_seed(0)
    config = helpers.tiny_config(tmp_path, "simclr", **TINY_RESNET, projection_dim=16, projection_hidden_dim=32, augment=augment)
    return SimCLR.from_data(config, digits)


def encoder_input(method: SimCLR, batch: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Run one training step and return what the encoder received, (2B, C, H, W)."""
    seen = []
    handle = method.encoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    try:
        method.training_step(batch, torch.Generator().manual_seed(seed))
    finally:
        handle.remove()
    return seen[0]


def test_views_pair_across_halves(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, augment="none")
    batch = digits.batch(torch.arange(8), CPU)
    views = encoder_input(method, batch)
    assert views.shape == (16, *batch.shape[1:])
    assert torch.allclose(views[:8], method.normalize(batch), atol=1e-5)
    assert torch.allclose(views[8:], method.normalize(batch), atol=1e-5)


def test_views_of_one_image_differ(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, augment="glyphs")
    views = encoder_input(method, digits.batch(torch.arange(8), CPU))
    for sample in range(8):
        assert not torch.equal(views[sample], views[8 + sample]), sample


def test_step_same_seed_same_loss(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, augment="glyphs")
    batch = digits.batch(torch.arange(8), CPU)
    first = method.training_step(batch, torch.Generator().manual_seed(4))["loss"]
    second = method.training_step(batch, torch.Generator().manual_seed(4))["loss"]
    assert torch.equal(first, second)
