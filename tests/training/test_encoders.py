"""ViT and MLP encoders: shapes, validation, registry and artifact round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.artifact import export_artifact, load_artifact
from training.encoders import ENCODERS, build_encoder
from training.encoders.mlp import MLPEncoder
from training.encoders.vit import VisionTransformer, sincos_position_embedding

VIT = {"in_channels": 3, "image_size": 8, "patch_size": 2, "width": 32, "depth": 2, "heads": 2}
MLP = {"in_features": 3 * 8 * 8, "hidden_dim": 32, "depth": 2}
RESNET = {"in_channels": 3, "depth": 10, "width": 8, "small_stem": True}


def images(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_registry_builds_vit_and_mlp() -> None:
    assert isinstance(build_encoder("vit", **VIT), VisionTransformer)
    assert isinstance(build_encoder("mlp", **MLP), MLPEncoder)
    assert {"vit", "mlp"} <= set(ENCODERS)


@pytest.mark.parametrize("name, kwargs, width", [("vit", VIT, 32), ("mlp", MLP, 32)])
def test_encoder_output_shape(name: str, kwargs: dict, width: int) -> None:
    encoder = build_encoder(name, **kwargs)
    assert encoder(images()).shape == (4, width)
    assert encoder.embedding_dim == width


@pytest.mark.parametrize("name, kwargs", [("vit", VIT), ("mlp", MLP)])
def test_encoder_embedding_dim_head(name: str, kwargs: dict) -> None:
    encoder = build_encoder(name, **kwargs, embedding_dim=12)
    assert encoder(images()).shape == (4, 12)
    assert encoder.embedding_dim == 12


@pytest.mark.parametrize("name, kwargs", [("vit", VIT), ("mlp", MLP)])
def test_encoder_batch_of_one_trains(name: str, kwargs: dict) -> None:
    encoder = build_encoder(name, **kwargs).train()
    encoder(images(batch=1)).sum().backward()
    assert all(parameter.grad is not None for parameter in encoder.parameters())


@pytest.mark.parametrize("name, kwargs", [("vit", VIT), ("mlp", MLP)])
def test_encoder_output_independent_of_batch(name: str, kwargs: dict) -> None:
    encoder = build_encoder(name, **kwargs).eval()
    batch = images()
    with torch.no_grad():
        assert torch.allclose(encoder(batch)[:1], encoder(batch[:1]), atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [("vit", VIT), ("mlp", MLP)])
def test_encoder_kwargs_json_serialisable(name: str, kwargs: dict) -> None:
    restored = json.loads(json.dumps(kwargs))
    assert build_encoder(name, **restored).embedding_dim == 32


def test_vit_tokens_follow_patches() -> None:
    vit = build_encoder("vit", **VIT)
    tokens = vit.embed_patches(images())
    assert tokens.shape == (4, 16, 32)
    assert vit.encode(tokens).shape == (4, 16, 32)
    assert vit.num_patches == 16


def test_vit_position_embedding_not_in_state_dict() -> None:
    assert not any("position" in key for key in build_encoder("vit", **VIT).state_dict())


def test_vit_sees_patch_positions() -> None:
    # Swapping two patches changes the embedding only through the position embeddings.
    vit = build_encoder("vit", **VIT).eval()
    batch = images(batch=1)
    swapped = batch.clone()
    swapped[..., :2, :2], swapped[..., :2, 2:4] = batch[..., :2, 2:4], batch[..., :2, :2]
    with torch.no_grad():
        assert not torch.allclose(vit(batch), vit(swapped))


def test_sincos_position_embedding_distinct_rows() -> None:
    embedding = sincos_position_embedding(4, 16)
    assert embedding.shape == (16, 16)
    assert len({tuple(row.tolist()) for row in embedding}) == 16


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"image_size": 10, "patch_size": 4}, "multiple of patch_size"),
        ({"width": 36, "heads": 8}, "number of heads"),
        ({"width": 18, "heads": 2}, "divisible by 4"),
        ({"depth": 0}, "depth"),
    ],
)
def test_vit_rejects_invalid_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_encoder("vit", **{**VIT, **settings})


def test_vit_rejects_wrong_input_size() -> None:
    with pytest.raises(ValueError, match="ViT expects images"):
        build_encoder("vit", **VIT)(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("settings", [{"in_features": 0}, {"hidden_dim": 0}, {"depth": 0}])
def test_mlp_rejects_invalid_settings(settings: dict) -> None:
    with pytest.raises(ValueError):
        build_encoder("mlp", **{**MLP, **settings})


def test_mlp_rejects_wrong_input_size() -> None:
    with pytest.raises(ValueError, match="192 values per sample"):
        build_encoder("mlp", **MLP)(torch.rand(2, 3, 4, 4))


def artifact_meta(name: str, kwargs: dict, embedding_dim: int) -> dict:
    return {
        "name": f"tiny-{name}",
        "modality": "image",
        "architecture": {"name": name, "kwargs": kwargs},
        "embedding_dim": embedding_dim,
        "preprocessing": {"size": 8, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
        "method": "test",
        "space": f"tiny-{name}",
    }


@pytest.mark.parametrize(
    "name, kwargs",
    [("vit", VIT), ("vit", {**VIT, "embedding_dim": 12}), ("mlp", MLP), ("mlp", {**MLP, "embedding_dim": 12}), ("resnet", RESNET)],
)
def test_encoder_artifact_round_trip(tmp_path: Path, name: str, kwargs: dict) -> None:
    encoder = build_encoder(name, **kwargs).eval()
    path = export_artifact(tmp_path / name, encoder, artifact_meta(name, kwargs, encoder.embedding_dim))
    loaded = load_artifact(path)
    batch = images()
    with torch.no_grad():
        assert torch.equal(loaded.encoder(batch), encoder(batch))
    assert loaded.meta.embedding_dim == encoder.embedding_dim


@pytest.mark.parametrize("image_size, patch", [(8, 2), (16, 2), (28, 4), (32, 4), (96, 12), (7, 1), (9, 3)])
def test_default_patch_size_divides_image(image_size, patch):
    from training.methods.image import default_patch_size

    assert default_patch_size(image_size) == patch
    assert image_size % default_patch_size(image_size) == 0
