"""Embedding cache: LRU eviction, keys by model and content, and hits through the route."""

from __future__ import annotations

import numpy as np
import pytest

from app.cache import CachedEmbedding, EmbeddingCache, content_key
from app.settings import Settings
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import png_base64, running_app


def entry(value: float) -> CachedEmbedding:
    return CachedEmbedding(np.full(4, value, dtype=np.float32))


def test_cache_evicts_least_recent() -> None:
    cache = EmbeddingCache(2)
    cache.put(("m", "a"), entry(1))
    cache.put(("m", "b"), entry(2))
    assert cache.get(("m", "a")) is not None  # "a" is now the most recent
    cache.put(("m", "c"), entry(3))
    assert cache.get(("m", "b")) is None
    assert cache.get(("m", "a")) is not None
    assert len(cache) == 2


def test_cache_disabled_stores_nothing() -> None:
    cache = EmbeddingCache(0)
    cache.put(("m", "a"), entry(1))
    assert not cache.enabled
    assert cache.get(("m", "a")) is None


def test_cache_rejects_negative_size() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        EmbeddingCache(-1)


def test_content_key_separates_model_and_kind() -> None:
    assert content_key("a", "text", "x") != content_key("b", "text", "x")
    assert content_key("a", "text", "x") != content_key("a", "image", "x")
    assert content_key("a", "image", "x") == content_key("a", "image", b"x")


@pytest.mark.anyio
async def test_cache_hit_returns_same_vector(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(update={"cache_size": 4})
    payload = {"input": [{"image": png_base64(1)}], "normalize": False}
    async with running_app(settings) as (app, client):
        first = await client.post("/v1/embeddings", json=payload)
        second = await client.post("/v1/embeddings", json=payload)
        registry = app.state.service.metrics.registry
        hits = registry.get_sample_value("embed_cache_hits_total", {"model": IMAGE_MODEL})
        batches = registry.get_sample_value("embed_batch_size_count", {"model": IMAGE_MODEL})
    assert second.json()["data"] == first.json()["data"]
    assert hits == 1
    assert batches == 1
