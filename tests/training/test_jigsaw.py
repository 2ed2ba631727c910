"""Jigsaw puzzles: the permutation set, tile cutting and shuffling, and training."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training import helpers
from tests.training.helpers import TINY_RESNET
from training.artifact import load_artifact
from training.config import TrainConfig
from training.data import load_image_dataset
from training.methods.jigsaw import (
    Jigsaw,
    all_permutations,
    extract_tiles,
    maximal_hamming_permutations,
    permutation_set_distance,
    shuffle_tiles,
)
from training.trainer import train

CPU = torch.device("cpu")


def tiny_config(tmp_path: Path, **settings: object) -> TrainConfig:
    defaults = {**TINY_RESNET, "projection_hidden_dim": 32, "jigsaw_permutations": 20, "image_size": 16, "augment": "crop"}
    return helpers.tiny_config(tmp_path, "jigsaw", **{**defaults, **settings})


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", image_size=16).subset(torch.arange(64))


def build(tmp_path: Path, digits, **settings: object) -> Jigsaw:
    torch.manual_seed(0)
    return Jigsaw.from_data(tiny_config(tmp_path, **settings), digits)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def slow_minimum_distance(permutations: np.ndarray) -> int:
    return min(
        sum(a != b for a, b in zip(first, second))
        for first, second in itertools.combinations(permutations.tolist(), 2)
    )


def test_all_permutations_complete() -> None:
    permutations = all_permutations(4)
    assert permutations.shape == (24, 4)
    assert {tuple(row) for row in permutations.tolist()} == set(itertools.permutations(range(4)))


def test_permutation_set_distinct_and_valid() -> None:
    permutations, _ = maximal_hamming_permutations(9, 100, 0)
    assert permutations.shape == (100, 9)
    assert len({tuple(row) for row in permutations.tolist()}) == 100
    assert all(sorted(row) == list(range(9)) for row in permutations.tolist())


def test_permutation_set_reports_its_minimum_distance() -> None:
    permutations, distance = maximal_hamming_permutations(9, 100, 0)
    assert distance == slow_minimum_distance(permutations)
    assert distance >= 5


def test_permutation_set_deterministic_from_seed() -> None:
    first, _ = maximal_hamming_permutations(9, 30, 7)
    maximal_hamming_permutations.cache_clear()
    second, _ = maximal_hamming_permutations(9, 30, 7)
    other, _ = maximal_hamming_permutations(9, 30, 8)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_permutation_set_farther_than_random() -> None:
    _, distance = maximal_hamming_permutations(9, 30, 0)
    rng = np.random.default_rng(0)
    random_set = np.stack([rng.permutation(9) for _ in range(30)])
    assert distance > slow_minimum_distance(random_set)


def test_permutation_set_large_grid_samples_candidates() -> None:
    permutations, distance = maximal_hamming_permutations(16, 10, 0)
    assert permutations.shape == (10, 16)
    assert distance == slow_minimum_distance(permutations)


def test_permutation_set_rejects_too_many() -> None:
    with pytest.raises(ValueError, match="jigsaw_permutations"):
        maximal_hamming_permutations(4, 25, 0)


def test_method_reports_minimum_distance(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    assert method.minimum_hamming_distance == slow_minimum_distance(method.permutations.numpy())


def test_permutations_saved_in_state_dict(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    assert torch.equal(method.state_dict()["permutations"], method.permutations)
    other = build(tmp_path, digits, seed=5)
    other.load_state_dict(method.state_dict())
    assert torch.equal(other.permutations, method.permutations)
    assert other.minimum_hamming_distance == method.minimum_hamming_distance


def assemble(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """Lay tiles (N, grid**2, C, t, t) out row-major into images (N, C, grid*t, grid*t)."""
    rows = [torch.cat(list(tiles[:, row * grid : (row + 1) * grid].unbind(1)), dim=-1) for row in range(grid)]
    return torch.cat(rows, dim=-2)


def test_full_tiles_reassemble_image() -> None:
    images = torch.rand(2, 3, 9, 9, generator=seeded())
    tiles = extract_tiles(images, 3, 3, seeded())  # tiles fill their cells: no jitter
    assert tiles.shape == (2, 9, 3, 3, 3)
    assert torch.equal(assemble(tiles, 3), images)


def test_undo_shuffle_reassembles_image() -> None:
    images = torch.rand(2, 1, 9, 9, generator=seeded())
    permutations = torch.tensor([[2, 0, 1, 5, 3, 4, 8, 6, 7], [8, 7, 6, 5, 4, 3, 2, 1, 0]])
    shuffled = shuffle_tiles(extract_tiles(images, 3, 3, seeded()), permutations)
    unshuffled = torch.stack([shuffled[n][torch.argsort(permutations[n])] for n in range(2)])
    assert not torch.equal(assemble(shuffled, 3), images)
    assert torch.equal(assemble(unshuffled, 3), images)


def test_tiles_lie_inside_their_cells() -> None:
    # Pixel values encode their cell, so every tile pixel must carry its own cell's value.
    cell_index = torch.arange(3).repeat_interleave(5)
    images = (cell_index.view(-1, 1) * 3 + cell_index.view(1, -1)).float().expand(4, 1, 15, 15)
    tiles = extract_tiles(images, 3, 4, seeded())
    for k in range(9):
        assert bool((tiles[:, k] == k).all())


def test_tile_jitter_differs_per_sample_and_tile() -> None:
    images = torch.arange(15 * 15, dtype=torch.float32).view(1, 1, 15, 15).expand(16, 1, 15, 15)
    tiles = extract_tiles(images, 3, 3, seeded())  # cells of 5 px: offsets 0..2
    corners = tiles[:, :, 0, 0, 0]  # (16, 9)
    assert len(set(corners[:, 0].tolist())) > 1
    assert len(set((corners - corners[:, :1]).flatten().tolist())) > 9


def test_undo_shuffle_with_label_recovers_tiles(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    images = method.normalize(digits.batch(torch.arange(6), CPU))
    tiles = extract_tiles(images, 3, method.tile_size, seeded())
    labels = torch.tensor([0, 3, 5, 7, 11, 19])
    shuffled = shuffle_tiles(tiles, method.permutations[labels])
    for n in range(6):
        permutation = method.permutations[labels[n]]
        assert torch.equal(shuffled[n][torch.argsort(permutation)], tiles[n])
        assert torch.equal(shuffled[n, 0], tiles[n, permutation[0]])


def test_shuffle_changes_order(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    tiles = torch.arange(9).float().view(1, 9, 1, 1, 1)
    permutation = method.permutations[1:2]
    assert shuffle_tiles(tiles, permutation).flatten().tolist() == permutation[0].float().tolist()


def test_tiles_have_gap(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    assert method.tile_size < 16 // 3


def test_training_step_terms(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    terms = method.training_step(digits.batch(torch.arange(8), CPU), seeded())
    terms["loss"].backward()
    assert set(terms) == {"loss", "accuracy"}
    assert all(parameter.grad is not None for parameter in method.encoder.parameters())


def test_batch_of_one(tmp_path: Path, digits) -> None:
    loss = build(tmp_path, digits).training_step(digits.batch(torch.arange(1), CPU), seeded())["loss"]
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("encoder", ["vit", "mlp"])
def test_fixed_size_encoders_get_resized_tiles(tmp_path: Path, digits, encoder: str) -> None:
    method = build(tmp_path, digits, encoder=encoder, encoder_depth=1, encoder_width=16, heads=2, patch_size=4)
    loss = method.training_step(digits.batch(torch.arange(2), CPU), seeded())["loss"]
    assert math.isfinite(loss.item())
    assert method.embed(digits.batch(torch.arange(3), CPU)).shape == (3, 16)


def test_embed_whole_image(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits).eval()
    assert method.embed(digits.batch(torch.arange(3), CPU)).shape == (3, 64)


def test_rejects_grid_below_two(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="jigsaw_grid"):
        build(tmp_path, digits, jigsaw_grid=1)


def test_trains_with_partial_batch_and_exports(tmp_path: Path) -> None:
    # 30 samples, 24 after the hold-out: two batches of 11 and a last one of 2.
    config = tiny_config(tmp_path, epochs=1, batch_size=11, limit=30, checkpoint_every=1000)
    (path,) = train(config, argv=[])
    artifact = load_artifact(path)
    assert artifact.meta.training["steps"] == 3
    assert artifact.encoder(torch.rand(2, 1, 16, 16)).shape == (2, 64)


def test_permutation_set_distance_exact() -> None:
    permutations = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]])
    assert permutation_set_distance(permutations) == 2
