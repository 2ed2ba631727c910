"""Fixtures shared by the image method tests."""

from __future__ import annotations

import pytest
import torch

from training.data import ImageDataset, load_image_dataset


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    """Return the first 64 scikit-learn digits at their own 8 px."""
    return load_image_dataset("digits").subset(torch.arange(64))
