"""Supervised transfer of an artifact's encoder: a linear head on frozen features, or full fine-tuning.

Both modes put a classification head on the encoder's embedding: BatchNorm without
affine parameters, then a linear layer, the linear-probing head of MAE (He et al., 2022),
so the features' scale does not set the learning rate. ``linear`` trains the head on
embeddings computed once with the encoder frozen; ``full`` trains encoder and head
together. Training uses the labelled reference samples only, without augmentation, and
the accuracy is measured on the labelled evaluation samples.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.artifact import Artifact
from training.inference import encoder_inputs

logger = logging.getLogger(__name__)

FINE_TUNE_MODES = ("linear", "full")
DEFAULT_LR = {"linear": 1e-2, "full": 1e-3}


@dataclass(frozen=True)
class FineTuneSettings:
    """Mode (``linear`` or ``full``), epochs, peak learning rate, batch size and seed."""

    mode: str
    epochs: int = 20
    lr: float | None = None  # None: 1e-2 for linear, 1e-3 for full
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FINE_TUNE_MODES:
            raise ValueError(f"unknown fine-tune mode {self.mode!r}; expected linear or full")
        if self.epochs < 1:
            raise ValueError(f"fine-tune epochs must be at least 1, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"fine-tune lr must be positive, got {self.lr}")
        if self.batch_size < 2:
            raise ValueError(f"fine-tune batch size must be at least 2, got {self.batch_size}")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]


def fine_tune(artifact: Artifact, reference: Any, evaluation: Any, settings: FineTuneSettings) -> dict[str, Any]:
    """Train a classifier on the labelled ``reference`` samples and return its accuracy on ``evaluation``.

    The artifact's own encoder is left untouched: full fine-tuning trains a copy. Raises
    ValueError when the reference holds fewer than 2 labelled classes or the evaluation
    no labelled sample.
    """
    train_indices = torch.nonzero(reference.labels >= 0).squeeze(1)
    test_indices = torch.nonzero(evaluation.labels >= 0).squeeze(1)
    train_labels = reference.labels[train_indices]
    if len(torch.unique(train_labels)) < 2:
        raise ValueError("fine-tuning needs labelled reference samples of 2 classes or more")
    if len(test_indices) == 0:
        raise ValueError("fine-tuning needs labelled evaluation samples")
    classes = int(max(train_labels.max(), evaluation.labels.max())) + 1

    torch.manual_seed(settings.seed)
    tuned = dataclasses.replace(artifact, encoder=copy.deepcopy(artifact.encoder)) if settings.mode == "full" else artifact
    device = next(tuned.encoder.parameters()).device
    # momentum None: running statistics are the plain mean over all steps, exact after few steps
    normalization = nn.BatchNorm1d(artifact.meta.embedding_dim, affine=False, momentum=None)
    head = nn.Sequential(normalization, nn.Linear(artifact.meta.embedding_dim, classes))
    head.to(device)

    if settings.mode == "linear":
        features = _frozen_features(tuned, reference, train_indices)
        _train_head(head, lambda index: features[index], train_labels.to(device), settings)
        head.eval()
        with torch.no_grad():
            predictions = head(_frozen_features(tuned, evaluation, test_indices)).argmax(dim=1)
    else:
        _train_full(tuned, head, reference, train_indices, train_labels.to(device), settings)
        predictions = _predict(tuned, head, evaluation, test_indices, settings.batch_size)

    accuracy = float((predictions.cpu() == evaluation.labels[test_indices]).float().mean())
    logger.info("fine-tune %s: top-1 %.4f on %d evaluation samples", settings.mode, accuracy, len(test_indices))
    return {
        "fine_tune": settings.mode,
        "fine_tune_top1": accuracy,
        "fine_tune_epochs": settings.epochs,
        "fine_tune_train_samples": len(train_indices),
    }


@torch.no_grad()
def _frozen_features(artifact: Artifact, dataset: Any, indices: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Return the encoder's raw embeddings (N, D) of samples ``indices``, in eval mode."""
    artifact.encoder.eval()
    chunks = [
        artifact.encoder(*encoder_inputs(artifact, dataset, indices[start : start + batch_size])).float()
        for start in range(0, len(indices), batch_size)
    ]
    return torch.cat(chunks)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffle positions 0..count-1 into batches, dropping a last batch of one (BatchNorm needs two)."""
    order = torch.randperm(count, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches[-1]) < 2:
        batches.pop()
    return batches


def _train_head(head: nn.Module, features_of: Any, labels: torch.Tensor, settings: FineTuneSettings) -> None:
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.peak_lr, weight_decay=1e-4)
    total = settings.epochs * max(1, len(labels) // settings.batch_size + 1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    generator = torch.Generator().manual_seed(settings.seed)
    head.train()
    for _ in range(settings.epochs):
        for positions in _batches(len(labels), settings.batch_size, generator):
            positions = positions.to(labels.device)
            loss = F.cross_entropy(head(features_of(positions)), labels[positions])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


def _train_full(
    artifact: Artifact, head: nn.Module, dataset: Any, indices: torch.Tensor, labels: torch.Tensor, settings: FineTuneSettings
) -> None:
    parameters = list(artifact.encoder.parameters()) + list(head.parameters())
    for parameter in artifact.encoder.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=settings.peak_lr, weight_decay=1e-4)
    total = settings.epochs * max(1, len(indices) // settings.batch_size + 1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    generator = torch.Generator().manual_seed(settings.seed)
    artifact.encoder.train()
    head.train()
    for _ in range(settings.epochs):
        for positions in _batches(len(indices), settings.batch_size, generator):
            embeddings = artifact.encoder(*encoder_inputs(artifact, dataset, indices[positions]))
            loss = F.cross_entropy(head(embeddings), labels[positions.to(labels.device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


@torch.no_grad()
def _predict(artifact: Artifact, head: nn.Module, dataset: Any, indices: torch.Tensor, batch_size: int) -> torch.Tensor:
    artifact.encoder.eval()
    head.eval()
    predictions = [
        head(artifact.encoder(*encoder_inputs(artifact, dataset, indices[start : start + batch_size]))).argmax(dim=1)
        for start in range(0, len(indices), batch_size)
    ]
    return torch.cat(predictions)
