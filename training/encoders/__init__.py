"""Encoder architectures, built by name from an artifact's ``architecture`` entry.

Every encoder maps a preprocessed batch to one embedding per sample and exposes the
width of that embedding as ``embedding_dim``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from training.encoders.resnet import ResNet

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet": ResNet,
}


def register_encoder(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``factory`` buildable as ``architecture.name == name``."""
    ENCODERS[name] = factory


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name`` with keyword arguments ``kwargs``."""
    _register_optional_encoders()
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)


def _register_optional_encoders() -> None:
    """Import the modules whose encoders register themselves on import."""
    # Imported lazily so that a missing optional module cannot break the image path.
    import importlib

    for module in ("training.encoders.vit", "training.encoders.mlp", "training.encoders.text", "training.encoders.projected"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
