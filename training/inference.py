"""Embedding whole datasets with a loaded artifact, for ``ssl-eval``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.artifact import Artifact
from training.data import ImageDataset, TextDataset


@torch.inference_mode()
def embed_images(artifact: Artifact, dataset: ImageDataset, batch_size: int = 512) -> np.ndarray:
    """Return embeddings (N, D) of uint8 images, preprocessed as the artifact declares."""
    prep = artifact.meta.image_preprocessing()
    device = next(artifact.encoder.parameters()).device
    mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, -1, 1, 1)
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start : start + batch_size].to(device).float() / 255.0
        if images.shape[1] != prep.channels:
            images = images.mean(dim=1, keepdim=True) if prep.channels == 1 else images.expand(-1, 3, -1, -1)
        if images.shape[-1] != prep.size or images.shape[-2] != prep.size:
            images = F.interpolate(images, size=(prep.size, prep.size), mode="bilinear", align_corners=False, antialias=True)
        embeddings = artifact.encoder((images - mean) / std)
        if artifact.meta.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        chunks.append(embeddings.float().cpu())
    return torch.cat(chunks).numpy()


@torch.inference_mode()
def embed_texts(artifact: Artifact, dataset: TextDataset, batch_size: int = 256) -> np.ndarray:
    """Return embeddings (N, D) of texts, tokenised as the artifact declares."""
    from training.tokenizer import tokenize_batch

    prep = artifact.meta.text_preprocessing()
    device = next(artifact.encoder.parameters()).device
    chunks = []
    for start in range(0, len(dataset), batch_size):
        tokens = tokenize_batch(artifact.tokenizer, dataset.texts[start : start + batch_size], prep.max_tokens, prep.lowercase)
        embeddings = artifact.encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device))
        if artifact.meta.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        chunks.append(embeddings.float().cpu())
    return torch.cat(chunks).numpy()
