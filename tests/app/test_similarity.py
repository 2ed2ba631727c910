"""POST /v1/similarity: cosine scores, top-k, raw vectors and the shared-space rule."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from app.settings import Settings
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import EMBEDDING_DIM, export_image_model, export_text_model, make_settings, png_base64, running_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair_settings(tmp_path: Path, models_dir: Path) -> Settings:
    """Settings with an image and a text model sharing space ``pair``, like the two towers of CLIP."""
    export_image_model(models_dir, "pair-image", space="pair")
    export_text_model(models_dir, "pair-text", space="pair")
    return make_settings(models_dir, tmp_path / "var")


async def embed(client: httpx.AsyncClient, items: list) -> np.ndarray:
    response = await client.post("/v1/embeddings", json={"input": items})
    assert response.status_code == 200
    return np.array([row["embedding"] for row in response.json()["data"]])


async def test_similarity_scores_are_cosine(service_client: httpx.AsyncClient) -> None:
    queries = [{"image": png_base64(1)}, {"image": png_base64(2)}]
    candidates = [{"image": png_base64(3)}, {"image": png_base64(1)}, {"image": png_base64(4)}]
    response = await service_client.post("/v1/similarity", json={"queries": queries, "candidates": candidates})
    assert response.status_code == 200
    scores = np.array(response.json()["scores"])
    expected = await embed(service_client, queries) @ (await embed(service_client, candidates)).T
    assert scores.shape == (2, 3)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert "matches" not in response.json()


async def test_similarity_top_k(service_client: httpx.AsyncClient) -> None:
    candidates = [{"image": png_base64(seed)} for seed in (3, 1, 4)]
    payload = {"queries": [{"image": png_base64(1)}], "candidates": candidates, "top_k": 2}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 200
    body = response.json()
    matches = body["matches"][0]
    assert len(matches) == 2
    assert matches[0]["index"] == 1
    assert matches[0]["score"] == pytest.approx(body["scores"][0][1])
    assert matches[0]["score"] >= matches[1]["score"]


async def test_similarity_top_k_above_candidates(service_client: httpx.AsyncClient) -> None:
    payload = {"queries": [{"image": png_base64(1)}], "candidates": [{"image": png_base64(2)}], "top_k": 10}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 200
    assert len(response.json()["matches"][0]) == 1


async def test_similarity_raw_vectors(service_client: httpx.AsyncClient) -> None:
    image = {"image": png_base64(7)}
    vector = (await embed(service_client, [image]))[0]
    payload = {"queries": [{"embedding": (vector * 3).tolist()}], "candidates": [image]}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 200
    assert response.json()["scores"][0][0] == pytest.approx(1.0, abs=1e-5)


async def test_similarity_vectors_only(service_client: httpx.AsyncClient) -> None:
    payload = {"queries": [{"embedding": [1.0, 0.0]}], "candidates": [{"embedding": [0.0, 2.0]}, {"embedding": [3.0, 3.0]}]}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["scores"], [[0.0, np.sqrt(0.5)]], atol=1e-6)


async def test_similarity_vector_wrong_width(service_client: httpx.AsyncClient) -> None:
    payload = {"queries": [{"image": png_base64(1)}], "candidates": [{"image": png_base64(2)}, {"embedding": [1.0, 2.0]}]}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("candidates[1]: embedding has 2 values")
    assert f"expected {EMBEDDING_DIM}" in message


async def test_similarity_cross_modal_shared_space(pair_settings: Settings) -> None:
    async with running_app(pair_settings) as (_, client):
        payload = {"queries": ["a cat", "a dog"], "candidates": [{"image": png_base64(1)}]}
        response = await client.post("/v1/similarity", json=payload)
        texts = await embed(client, ["a cat", "a dog"])
        images = await embed(client, [{"image": png_base64(1)}])
    assert response.status_code == 200
    assert response.json()["models"] == ["pair-image", "pair-text"]
    np.testing.assert_allclose(response.json()["scores"], texts @ images.T, atol=1e-5)


async def test_similarity_named_model_uses_partner(pair_settings: Settings) -> None:
    async with running_app(pair_settings) as (_, client):
        payload = {"model": "pair-image", "queries": ["a cat"], "candidates": [{"image": png_base64(1)}]}
        response = await client.post("/v1/similarity", json=payload)
    assert response.status_code == 200
    assert response.json()["models"] == ["pair-image", "pair-text"]


async def test_similarity_cross_space_rejected(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, IMAGE_MODEL)
    export_text_model(models_dir, "other-text")
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
        payload = {"queries": ["a cat"], "candidates": [{"image": png_base64(1)}]}
        response = await client.post("/v1/similarity", json=payload)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "share a space" in message
    assert f"'{IMAGE_MODEL}'" in message
    assert "'other-text'" in message


async def test_similarity_named_model_without_partner(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, IMAGE_MODEL)
    export_text_model(models_dir, "other-text")
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
        payload = {"model": IMAGE_MODEL, "queries": ["a cat"], "candidates": [{"image": png_base64(1)}]}
        response = await client.post("/v1/similarity", json=payload)
    assert response.status_code == 400
    assert "text items need a text model in that space" in response.json()["error"]["message"]


async def test_similarity_unknown_model(service_client: httpx.AsyncClient) -> None:
    payload = {"model": "nope", "queries": [{"image": png_base64(1)}], "candidates": [{"image": png_base64(2)}]}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"queries": [], "candidates": ["a"]}, "queries: "),
        ({"queries": ["a"]}, "candidates: field required"),
        ({"queries": ["a"], "candidates": ["b"], "top_k": 0}, "top_k: "),
        ({"queries": ["a"], "candidates": [{"image": 5}]}, 'candidates[0]: "image" must be'),
    ],
)
async def test_similarity_schema_violation(service_client: httpx.AsyncClient, payload: dict, fragment: str) -> None:
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 422
    assert fragment in response.json()["error"]["message"]


async def test_similarity_corrupt_candidate(service_client: httpx.AsyncClient) -> None:
    payload = {"queries": [{"image": png_base64(1)}], "candidates": [{"image": png_base64(2)}, {"image": "%%%"}]}
    response = await service_client.post("/v1/similarity", json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("candidates[1]: ")
