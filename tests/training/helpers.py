"""Builders for training tests: small configurations that train in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import TrainConfig

# A one-block-per-stage ResNet of width 8: the smallest encoder the image methods accept.
TINY_RESNET = {"encoder": "resnet", "encoder_depth": 10, "encoder_width": 8}


def tiny_config(tmp_path: Path, method: str, **settings: Any) -> TrainConfig:
    """Return a CPU configuration of ``method`` on digits that writes under ``tmp_path``."""
    values = {
        "method": method,
        "data": "digits",
        "out": str(tmp_path / "model"),
        "device": "cpu",
        "extra": {"run_dir": str(tmp_path / "run")},
        **settings,
    }
    return TrainConfig(**values)
