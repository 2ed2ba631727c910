"""Model registry: loading artifacts, picking a model for a request, and padding token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.errors import InvalidInput, NotFound
from app.registry import LoadedModel, ModelRegistry, discover_artifacts, load_model
from tests.app.helpers import EMBEDDING_DIM, export_image_model, export_text_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("registry")
    paths = {
        "pair-image": export_image_model(root, "pair-image", space="pair"),
        "pair-text": export_text_model(root, "pair-text", space="pair"),
        "solo-image": export_image_model(root, "solo-image", seed=1),
    }
    return {name: load_model(path, CPU, torch.float32, set()) for name, path in paths.items()}


def registry_of(models: dict[str, LoadedModel], *names: str, default: str | None = None) -> ModelRegistry:
    return ModelRegistry(models={name: models[name] for name in names}, default_model=default)


def test_load_model_fields(models: dict[str, LoadedModel]) -> None:
    model = models["pair-text"]
    assert model.id == "pair-text"
    assert model.modality == "text"
    assert model.dim == EMBEDDING_DIM
    assert model.space == "pair"
    assert not model.encoder.training


def test_encode_image_shape(models: dict[str, LoadedModel]) -> None:
    embeddings = models["solo-image"].encode([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    assert embeddings.shape == (2, EMBEDDING_DIM)
    assert embeddings.dtype == torch.float32


def test_encode_text_padding_invariant(models: dict[str, LoadedModel]) -> None:
    model = models["pair-text"]
    short = [2, 10, 3]
    long = [2, 10, 11, 12, 13, 14, 3]
    alone = model.encode([short])
    padded = model.encode([short, long])
    torch.testing.assert_close(padded[0], alone[0], rtol=0, atol=1e-5)


def test_resolve_only_model_of_modality(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-image", "pair-text")
    assert registry.resolve(None, "text").id == "pair-text"
    assert registry.resolve(None, "image").id == "pair-image"


def test_resolve_ambiguous_without_default(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-image", "solo-image")
    with pytest.raises(InvalidInput, match="several image models"):
        registry.resolve(None, "image")


def test_resolve_default_breaks_tie(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-image", "solo-image", default="solo-image")
    assert registry.resolve(None, "image").id == "solo-image"


def test_resolve_default_of_other_modality(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-image", "solo-image", "pair-text", default="pair-text")
    with pytest.raises(InvalidInput, match="several image models"):
        registry.resolve(None, "image")


def test_resolve_named_wrong_modality(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-image", "pair-text")
    with pytest.raises(InvalidInput, match="embeds image items, not text"):
        registry.resolve("pair-image", "text")


def test_get_unknown(models: dict[str, LoadedModel]) -> None:
    with pytest.raises(NotFound, match="'absent' is not loaded"):
        registry_of(models, "pair-image").get("absent")


def test_partner_same_space(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-image", "pair-text", "solo-image")
    assert registry.partner(models["pair-image"], "text").id == "pair-text"
    assert registry.partner(models["pair-image"], "image").id == "pair-image"


def test_partner_missing(models: dict[str, LoadedModel]) -> None:
    registry = registry_of(models, "pair-text", "solo-image")
    with pytest.raises(InvalidInput, match="none is loaded"):
        registry.partner(models["solo-image"], "text")


def test_discover_skips_hidden(tmp_path: Path) -> None:
    export_image_model(tmp_path, "visible")
    export_image_model(tmp_path, ".hidden")
    (tmp_path / "empty").mkdir()
    assert discover_artifacts(tmp_path) == [tmp_path / "visible"]
