"""Self-supervised methods, built by name."""

from __future__ import annotations

import importlib

from training.methods.base import ExportSpec, Method

# Method name -> "module:Class"; modules are imported on first use.
METHODS = {
    "simclr": "training.methods.simclr:SimCLR",
    "byol": "training.methods.byol:BYOL",
    "mae": "training.methods.mae:MAE",
    "rotation": "training.methods.rotation:RotationPrediction",
    "jigsaw": "training.methods.jigsaw:Jigsaw",
    "inpainting": "training.methods.inpainting:Inpainting",
    "mlm": "training.methods.mlm:MaskedLanguageModel",
    "simcse": "training.methods.simcse:SimCSE",
    "clip": "training.methods.clip:CLIP",
}


def method_class(name: str) -> type[Method]:
    """Return the class of method ``name``; raises ValueError for unknown or missing ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise ValueError(f"method {name!r} is not available in this build") from error
        raise
    return getattr(module, class_name)


__all__ = ["METHODS", "ExportSpec", "Method", "method_class"]
