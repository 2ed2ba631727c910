"""Embedding whole datasets with a loaded artifact, for ``ssl-eval`` and fine-tuning."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.artifact import Artifact, ImagePreprocessing
from training.data import ImageDataset, TextDataset


def prepare_images(prep: ImagePreprocessing, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Turn uint8 images (B, C, H, W) into the encoder's float input, as the artifact declares.

    Channels are converted (mean of RGB for grayscale, repetition for RGB), the image is
    brought to ``prep.size`` (``resize_center_crop``: centred square crop, then resize;
    ``stretch``: resize both sides), then normalised with the artifact's mean and std.
    """
    images = images.to(device).float() / 255.0
    if images.shape[1] != prep.channels:
        images = images.mean(dim=1, keepdim=True) if prep.channels == 1 else images.expand(-1, 3, -1, -1)
    height, width = images.shape[-2:]
    if prep.resize == "resize_center_crop" and height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images = images[..., top : top + side, left : left + side]
    if images.shape[-2:] != (prep.size, prep.size):
        images = F.interpolate(images, size=(prep.size, prep.size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, -1, 1, 1)
    return (images - mean) / std


def encoder_inputs(artifact: Artifact, dataset: ImageDataset | TextDataset, indices: torch.Tensor) -> tuple[Any, ...]:
    """Return the positional encoder arguments for samples ``indices``, on the encoder's device.

    Images: ``(images,)`` float (B, C, S, S). Texts: ``(input_ids, attention_mask)``, each (B, L).
    """
    device = next(artifact.encoder.parameters()).device
    if artifact.meta.modality == "image":
        return (prepare_images(artifact.meta.image_preprocessing(), dataset.images[indices], device),)
    from training.tokenizer import tokenize_batch

    prep = artifact.meta.text_preprocessing()
    texts = [dataset.texts[i] for i in indices.tolist()]
    tokens = tokenize_batch(artifact.tokenizer, texts, prep.max_tokens, prep.lowercase)
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


@torch.inference_mode()
def embed_dataset(artifact: Artifact, dataset: ImageDataset | TextDataset, batch_size: int = 512) -> np.ndarray:
    """Return embeddings (N, D) of every sample, L2-normalised when ``meta.normalize`` is set."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    artifact.encoder.eval()
    chunks = []
    for start in range(0, len(dataset), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(dataset)))
        embeddings = artifact.encoder(*encoder_inputs(artifact, dataset, indices))
        if artifact.meta.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        chunks.append(embeddings.float().cpu())
    return torch.cat(chunks).numpy()


def embed_images(artifact: Artifact, dataset: ImageDataset, batch_size: int = 512) -> np.ndarray:
    """Return embeddings (N, D) of uint8 images, preprocessed as the artifact declares."""
    return embed_dataset(artifact, dataset, batch_size)


def embed_texts(artifact: Artifact, dataset: TextDataset, batch_size: int = 256) -> np.ndarray:
    """Return embeddings (N, D) of texts, tokenised as the artifact declares."""
    return embed_dataset(artifact, dataset, batch_size)
