"""Jigsaw puzzles (Noroozi and Favaro, 2016): recognise the permutation of shuffled image tiles."""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.methods.base import projection_head
from training.methods.image import ImageMethod, configured_augmentation

logger = logging.getLogger(__name__)

# Each tile covers this share of its grid cell's side (64 px tiles in 75 px cells in the
# paper), so neighbouring tiles are separated by a random gap and edges do not line up.
TILE_FRACTION = 64 / 75
# Grids with more permutations than this choose from a random sample of this size.
MAX_CANDIDATES = 400_000
# Encoders built for one input size; tiles are resized to it before encoding.
FIXED_SIZE_ENCODERS = ("vit", "mlp")


@functools.lru_cache(maxsize=8)
def maximal_hamming_permutations(tiles: int, count: int, seed: int) -> tuple[np.ndarray, int]:
    """Choose ``count`` permutations of ``tiles`` items that lie far apart in Hamming distance.

    Greedy farthest-point selection, as in the paper: start from a random permutation,
    then repeatedly add the candidate whose distance to its nearest chosen permutation
    is largest, breaking ties at random. Candidates are all ``tiles!`` permutations, or
    ``MAX_CANDIDATES`` random ones for larger grids. The same arguments always give the
    same set. Returns the permutations (count, tiles) and their minimum pairwise distance.
    """
    rng = np.random.default_rng(seed)
    if math.factorial(tiles) <= MAX_CANDIDATES:
        candidates = all_permutations(tiles)
    else:
        candidates = np.argsort(rng.random((MAX_CANDIDATES, tiles)), axis=1).astype(np.int16)
    if not 2 <= count <= len(candidates):
        raise ValueError(f"jigsaw_permutations must be in [2, {len(candidates)}] for {tiles} tiles, got {count}")

    columns = np.ascontiguousarray(candidates.T)  # (tiles, M): one comparison per column is fast
    chosen = [int(rng.integers(len(candidates)))]
    nearest = _hamming_to(columns, candidates[chosen[0]])  # distance to the nearest chosen permutation
    for _ in range(count - 1):
        farthest = np.flatnonzero(nearest == nearest.max())
        chosen.append(int(farthest[rng.integers(len(farthest))]))
        np.minimum(nearest, _hamming_to(columns, candidates[chosen[-1]]), out=nearest)

    permutations = candidates[chosen].astype(np.int64)
    return permutations, permutation_set_distance(torch.from_numpy(permutations))


def all_permutations(items: int) -> np.ndarray:
    """Return all permutations (items!, items) of range(items), built by inserting one item at a time."""
    permutations = np.zeros((1, 0), dtype=np.int16)
    for item in range(items):
        permutations = np.concatenate([np.insert(permutations, slot, item, axis=1) for slot in range(item + 1)])
    return permutations


def _hamming_to(columns: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Return the Hamming distance (M,) of candidates given column-wise (K, M) to one permutation (K,)."""
    distance = np.zeros(columns.shape[1], dtype=np.int16)
    for position, value in enumerate(permutation):
        distance += columns[position] != value
    return distance


def permutation_set_distance(permutations: torch.Tensor) -> int:
    """Return the minimum Hamming distance between two distinct rows of ``permutations`` (P, K)."""
    distances = (permutations[:, None, :] != permutations[None, :, :]).sum(dim=2)  # (P, P)
    distances.fill_diagonal_(permutations.shape[1] + 1)
    return int(distances.min())


def extract_tiles(images: torch.Tensor, grid: int, tile_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Cut a ``grid`` x ``grid`` puzzle from images (N, C, S, S) into tiles (N, grid**2, C, t, t).

    The grid of cells of side S // grid is centred in the image. Each tile of side
    ``tile_size`` lies at a random offset inside its cell, drawn per sample and tile.
    Tiles are ordered row-major by cell.
    """
    batch, channels, height, width = images.shape
    cell = min(height, width) // grid
    if not 1 <= tile_size <= cell:
        raise ValueError(f"tile_size must be in [1, {cell}] for {grid}x{grid} cells of {height}x{width} images, got {tile_size}")
    cells = grid * grid
    slack = cell - tile_size
    device = generator.device if generator is not None else images.device
    offsets = torch.randint(0, slack + 1, (batch, cells, 2), generator=generator, device=device).to(images.device)

    # Top-left pixel of every tile: cell origin + centring margin + jitter, (N, K) each.
    cell_index = torch.arange(cells, device=images.device)
    top = (cell_index // grid) * cell + (height - grid * cell) // 2 + offsets[..., 0]
    left = (cell_index % grid) * cell + (width - grid * cell) // 2 + offsets[..., 1]
    span = torch.arange(tile_size, device=images.device)
    rows = (top.unsqueeze(-1) + span).view(batch, cells, tile_size, 1)
    columns = (left.unsqueeze(-1) + span).view(batch, cells, 1, tile_size)
    sample = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    tiles = images.permute(0, 2, 3, 1)[sample, rows, columns]  # (N, K, t, t, C)
    return tiles.permute(0, 1, 4, 2, 3)  # (N, K, C, t, t)


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Reorder tiles (N, K, ...) so that position i of sample n gets tile ``permutations[n, i]``."""
    index = permutations.view(*permutations.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return torch.gather(tiles, 1, index)


class Jigsaw(ImageMethod):
    """Shared tile encoder + MLP classifier of the permutation that shuffled the tiles.

    The permutation set is fixed for the run (chosen from ``config.seed``) and stored
    as the ``permutations`` buffer, so checkpoints carry it. Tile features are
    concatenated in the shuffled tile order before the classifier. The exported
    encoder is the tile encoder, which embeds a whole image. Tiles are normalised with
    the dataset statistics, like whole images at export, not one by one as in the paper.
    """

    name = "jigsaw"
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 5e-4

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config, channels, image_size, mean, std)
        self.grid = config.jigsaw_grid
        if self.grid < 2:
            raise ValueError(f"jigsaw_grid must be at least 2, got {self.grid}")
        cell = image_size // self.grid
        if cell < 1:
            raise ValueError(f"jigsaw_grid {self.grid} is larger than the image size {image_size}")
        self.tile_size = max(1, round(cell * TILE_FRACTION))
        if self.tile_size == cell:
            logger.warning(
                "jigsaw cells of %d px are too small for a gap between tiles; tile edges may reveal the permutation",
                cell,
            )
        self.resize_tiles = self.architecture["name"] in FIXED_SIZE_ENCODERS

        permutations, distance = maximal_hamming_permutations(self.grid**2, config.jigsaw_permutations, config.seed)
        # A copy: loading a checkpoint writes into the buffer, which must not reach the cache.
        self.register_buffer("permutations", torch.tensor(permutations))
        logger.info(
            "jigsaw: %d permutations of %d tiles, minimum Hamming distance %d",
            len(permutations), self.grid**2, distance,
        )

        self.classifier = projection_head(
            self.grid**2 * self.embedding_dim, config.projection_hidden_dim, len(permutations), batch_norm=False
        )
        self.augmentation = configured_augmentation(config.augment or "crop", config)

    @property
    def minimum_hamming_distance(self) -> int:
        """Smallest Hamming distance between two permutations of the set in use."""
        return permutation_set_distance(self.permutations)

    def training_step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = self.normalize(self.augmentation(batch, generator))
        tiles = extract_tiles(images, self.grid, self.tile_size, generator)  # (N, K, C, t, t)
        labels = torch.randint(0, len(self.permutations), (images.shape[0],), generator=generator, device=generator.device)
        labels = labels.to(images.device)
        shuffled = shuffle_tiles(tiles, self.permutations[labels])

        # encode every tile with the shared encoder: (N*K, C, t, t) -> (N, K*D)
        batch_size, cells = shuffled.shape[:2]
        flat = shuffled.flatten(0, 1)
        if self.resize_tiles:
            flat = F.interpolate(flat, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        features = self.encoder(flat).reshape(batch_size, cells * self.embedding_dim)

        logits = self.classifier(features)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy}
