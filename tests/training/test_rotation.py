"""Rotation prediction: the four rotations, their labels and training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training import helpers
from tests.training.helpers import TINY_RESNET
from training.artifact import load_artifact
from training.config import TrainConfig
from training.methods.rotation import RotationPrediction, rotate_batch
from training.trainer import train

CPU = torch.device("cpu")


def tiny_config(tmp_path: Path, **settings: object) -> TrainConfig:
    defaults = {**TINY_RESNET, "projection_hidden_dim": 32, "augment": "crop"}
    return helpers.tiny_config(tmp_path, "rotation", **{**defaults, **settings})


def build(tmp_path: Path, digits, **settings: object) -> RotationPrediction:
    torch.manual_seed(0)
    return RotationPrediction.from_data(tiny_config(tmp_path, **settings), digits)


def test_rotate_batch_all_four_rotations() -> None:
    images = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    rotated, labels = rotate_batch(images)
    assert rotated.shape == (12, 2, 5, 5)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_undo_rotation_recovers_input() -> None:
    images = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    rotated, labels = rotate_batch(images)
    for index in range(12):
        undone = torch.rot90(rotated[index], -int(labels[index]), dims=(1, 2))
        assert torch.equal(undone, images[index % 3])


def test_rotations_are_distinct() -> None:
    images = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    rotated, _ = rotate_batch(images)
    assert len({tuple(image.flatten().tolist()) for image in rotated}) == 4


def test_quarter_turn_is_counter_clockwise() -> None:
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    rotated, _ = rotate_batch(image)
    assert rotated[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]


def test_rotate_batch_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(2, 1, 4, 5))


def test_training_step_terms(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    terms = method.training_step(digits.batch(torch.arange(8), CPU), torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert set(terms) == {"loss", "accuracy"}
    assert 0.0 <= terms["accuracy"].item() <= 1.0
    assert all(parameter.grad is not None for parameter in method.encoder.parameters())


def test_batch_of_one(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    loss = method.training_step(digits.batch(torch.arange(1), CPU), torch.Generator().manual_seed(0))["loss"]
    assert math.isfinite(loss.item())


def test_same_seed_same_loss(tmp_path: Path, digits) -> None:
    batch = digits.batch(torch.arange(8), CPU)
    first = build(tmp_path, digits).training_step(batch, torch.Generator().manual_seed(2))["loss"]
    second = build(tmp_path, digits).training_step(batch, torch.Generator().manual_seed(2))["loss"]
    assert torch.equal(first, second)


@pytest.mark.parametrize("encoder", ["vit", "mlp"])
def test_other_encoders(tmp_path: Path, digits, encoder: str) -> None:
    method = build(tmp_path, digits, encoder=encoder, encoder_depth=1, encoder_width=16, heads=2, patch_size=2)
    loss = method.training_step(digits.batch(torch.arange(4), CPU), torch.Generator().manual_seed(0))["loss"]
    assert math.isfinite(loss.item())


def test_trains_with_partial_batch_and_exports(tmp_path: Path) -> None:
    # 30 samples, 24 after the hold-out: two batches of 11 and a last one of 2.
    config = tiny_config(tmp_path, epochs=1, batch_size=11, limit=30, checkpoint_every=1000)
    (path,) = train(config, argv=[])
    artifact = load_artifact(path)
    assert artifact.meta.training["steps"] == 3
    assert artifact.encoder(torch.rand(2, 1, 8, 8)).shape == (2, 64)
