"""Tests of zero-shot accuracy for image-text pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.artifact import export_artifact, load_artifact
from training.data import load_image_dataset
from training.encoders import build_encoder
from training.tokenizer import train_tokenizer
from training.zero_shot import evaluate_zero_shot, zero_shot_accuracy


def test_accuracy_exact():
    prompts = np.eye(3)
    images = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.5, 0.6, 0.0], [0.1, 0.0, 1.0]])
    labels = np.array([0, 2, 0, 2])
    assert zero_shot_accuracy(images, labels, prompts) == 0.75


def test_accuracy_skips_unlabelled():
    prompts = np.eye(2)
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert zero_shot_accuracy(images, np.array([0, -1]), prompts) == 1.0


def test_accuracy_rejects_mismatch():
    with pytest.raises(ValueError, match="share D"):
        zero_shot_accuracy(np.ones((2, 3)), np.array([0, 1]), np.ones((2, 4)))
    with pytest.raises(ValueError, match="no prompt"):
        zero_shot_accuracy(np.ones((2, 3)), np.array([0, 5]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="labelled"):
        zero_shot_accuracy(np.ones((2, 3)), np.array([-1, -1]), np.ones((2, 3)))


def export_pair(tmp_path, image_space: str, text_space: str):
    """Export a tiny projected image tower and text tower; return both loaded."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["the letter a", "the letter b"] * 5, 300, True)
    image_arch = {"name": "projected", "kwargs": {"inner": {"name": "resnet", "kwargs": {"in_channels": 1, "depth": 10, "width": 4}}, "embedding_dim": 8}}
    text_inner = {"name": "text_transformer", "kwargs": {"vocab_size": tokenizer.get_vocab_size(), "max_tokens": 16, "width": 16, "depth": 1, "heads": 2}}
    text_arch = {"name": "projected", "kwargs": {"inner": text_inner, "embedding_dim": 8}}
    common = {"embedding_dim": 8, "method": "clip"}
    image_meta = {
        **common, "name": "pair-image", "modality": "image", "architecture": image_arch, "space": image_space,
        "preprocessing": {"size": 8, "channels": 1, "mean": [0.5], "std": [0.25]},
    }
    text_meta = {
        **common, "name": "pair-text", "modality": "text", "architecture": text_arch, "space": text_space,
        "preprocessing": {"tokenizer": "tokenizer.json", "max_tokens": 16, "lowercase": True},
    }
    image_path = export_artifact(tmp_path / "pair-image", build_encoder("projected", **image_arch["kwargs"]), image_meta)
    text_path = export_artifact(tmp_path / "pair-text", build_encoder("projected", **text_arch["kwargs"]), text_meta, tokenizer.to_str())
    return load_artifact(image_path), load_artifact(text_path)


def test_evaluate_zero_shot(tmp_path):
    image_artifact, text_artifact = export_pair(tmp_path, "pair", "pair")
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8), labels=np.array([0, 1, 0, 1, 0, 1]))
    result = evaluate_zero_shot(image_artifact, text_artifact, load_image_dataset(str(tmp_path / "d.npz")))
    assert 0.0 <= result["zero_shot_top1"] <= 1.0
    assert result["zero_shot_classes"] == 2
    assert result["zero_shot_prompt"] == "the letter {letter}"


def test_evaluate_rejects_other_space(tmp_path):
    image_artifact, text_artifact = export_pair(tmp_path, "one", "two")
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="different spaces"):
        evaluate_zero_shot(image_artifact, text_artifact, load_image_dataset(str(tmp_path / "d.npz")))


def test_evaluate_rejects_swapped_modalities(tmp_path):
    image_artifact, text_artifact = export_pair(tmp_path, "pair", "pair")
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="an image and a text"):
        evaluate_zero_shot(text_artifact, image_artifact, load_image_dataset(str(tmp_path / "d.npz")))
