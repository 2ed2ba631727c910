"""Each image method, trained briefly on digits, beats its own architecture at initialisation.

Both encoders are scored the same way: held-out kNN accuracy of the embeddings of the
clean images, with the training split as the labelled reference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from training.artifact import load_artifact
from training.config import TrainConfig
from training.data import ImageDataset, load_image_dataset, split_holdout
from training.evaluate import knn_accuracy
from training.methods import method_class
from training.trainer import seed_everything, train

logger = logging.getLogger(__name__)

SMALL_RESNET = {"encoder": "resnet", "encoder_depth": 10, "encoder_width": 16}

# Settings per method: small encoders and a few epochs, each run well under 30 s on one core.
RUNS = {
    "simclr": {**SMALL_RESNET, "epochs": 5, "augment": "glyphs"},
    "byol": {**SMALL_RESNET, "epochs": 5, "augment": "glyphs"},
    "rotation": {**SMALL_RESNET, "epochs": 5, "augment": "none"},
    "inpainting": {**SMALL_RESNET, "epochs": 5, "augment": "crop"},
    "jigsaw": {**SMALL_RESNET, "epochs": 5, "augment": "none", "image_size": 16},
    "mae": {
        "encoder": "vit", "patch_size": 2, "encoder_width": 64, "encoder_depth": 2, "heads": 2,
        "decoder_width": 64, "decoder_depth": 1, "epochs": 10, "lr": 3e-3, "augment": "crop",
    },
}
MARGIN = 0.01  # about 4 of the 360 held-out digits


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def embed(encoder: torch.nn.Module, dataset: ImageDataset, mean: list[float], std: list[float]) -> np.ndarray:
    images = dataset.images.float() / 255.0
    mean_tensor = torch.tensor(mean).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std).view(1, -1, 1, 1)
    encoder.eval()
    with torch.no_grad():
        return encoder((images - mean_tensor) / std_tensor).numpy()


def held_out_knn(encoder: torch.nn.Module, config: TrainConfig, mean: list[float], std: list[float]) -> float:
    dataset = load_image_dataset(config.data, config.image_size, config.channels)
    train_indices, holdout_indices = split_holdout(dataset.labels, config.holdout_fraction, config.seed)
    reference, holdout = dataset.subset(train_indices), dataset.subset(holdout_indices)
    return knn_accuracy(
        embed(encoder, reference, mean, std), reference.labels.numpy(),
        embed(encoder, holdout, mean, std), holdout.labels.numpy(),
    )


def initial_encoder(config: TrainConfig) -> tuple[torch.nn.Module, list[float], list[float]]:
    """Build the method as ``train`` does, with the same seed, and return its untrained encoder."""
    seed_everything(config.seed)
    dataset = load_image_dataset(config.data, config.image_size, config.channels)
    train_indices, _ = split_holdout(dataset.labels, config.holdout_fraction, config.seed)
    method = method_class(config.method).from_data(config, dataset.subset(train_indices))
    return method.export_specs()[0].encoder, method.mean, method.std


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RUNS))
def test_method_beats_random_init(tmp_path: Path, one_thread: None, method: str) -> None:
    config = TrainConfig(
        method=method,
        data="digits",
        out=str(tmp_path / "model"),
        batch_size=128,
        device="cpu",
        seed=0,
        log_every=1000,
        extra={"run_dir": str(tmp_path / "run")},
        **RUNS[method],
    )
    encoder, mean, std = initial_encoder(config)
    before = held_out_knn(encoder, config, mean, std)

    (path,) = train(config, argv=[])
    artifact = load_artifact(path)
    preprocessing = artifact.meta.image_preprocessing()
    after = held_out_knn(artifact.encoder, config, preprocessing.mean, preprocessing.std)

    logger.info("%s held-out kNN: random init %.4f, trained %.4f", method, before, after)
    assert after > before + MARGIN, f"{method}: trained kNN {after:.4f} vs random init {before:.4f}"
