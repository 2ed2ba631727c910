"""The interface every self-supervised method implements.

A method owns its encoder(s), heads and augmentations. The trainer hands it batches and
steps the optimiser. The method turns a batch into named loss terms and, after training,
returns the encoders to export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from training.config import TrainConfig


@dataclass
class ExportSpec:
    """One encoder to export: its module, architecture entry and modality."""

    encoder: nn.Module
    architecture: dict[str, Any]
    modality: str
    embedding_dim: int
    preprocessing: dict[str, Any]
    suffix: str = ""  # appended to the artifact name, as in NAME-image and NAME-text
    tokenizer_json: str | None = None


class Method(nn.Module):
    """Base class of all methods.

    Subclasses set ``name`` and ``modality`` (``image``, ``text`` or ``image-text``)
    and implement ``training_step``, ``embed`` and ``export_specs``.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    default_lr: ClassVar[float] = 1e-3
    default_optimizer: ClassVar[str] = "adamw"
    default_weight_decay: ClassVar[float] = 1e-4

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def from_data(cls, config: TrainConfig, dataset: Any) -> Method:
        """Build the method for ``dataset`` (its channels, size, statistics or corpus)."""
        raise NotImplementedError

    def make_batch(self, dataset: Any, indices: torch.Tensor, device: torch.device) -> Any:
        """Cut the samples ``indices`` from ``dataset`` as this method's batch on ``device``."""
        return dataset.batch(indices, device)

    def training_step(self, batch: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Return the loss terms of one batch; ``loss`` is the one to minimise."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Update state that is not trained by gradients (momentum encoders)."""

    def lr_scales(self) -> dict[nn.Module, float]:
        """Return submodules whose learning rate is a multiple of the schedule's; the rest use 1."""
        return {}

    @torch.no_grad()
    def embed(self, batch: Any) -> torch.Tensor:
        """Return the exported embedding (B, D) of clean, unaugmented inputs."""
        raise NotImplementedError

    def export_specs(self) -> list[ExportSpec]:
        """Return the encoders to export, one artifact each."""
        raise NotImplementedError

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        """Return state outside the module's parameters that a resumed run needs."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state_for_checkpoint`` returned."""


class Normalize(nn.Module):
    """Subtract the per-channel mean and divide by the std of images (B, C, H, W)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """Return the two-layer MLP projection head of SimCLR and BYOL."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)
