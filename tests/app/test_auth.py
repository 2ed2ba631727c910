"""The optional API key: bearer token on /v1 routes, health routes public."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.settings import Settings
from tests.app.helpers import png_base64, running_app

pytestmark = pytest.mark.anyio

API_KEY = "secret-key-0123456789"


@pytest.fixture
async def keyed_client(image_model_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = image_model_settings.model_copy(update={"api_key": Settings(api_key=API_KEY).api_key})
    async with running_app(settings) as (_, client):
        yield client


async def test_auth_missing_key(keyed_client: httpx.AsyncClient) -> None:
    response = await keyed_client.get("/v1/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "unauthorized"
    assert "missing API key" in response.json()["error"]["message"]


async def test_auth_wrong_key(keyed_client: httpx.AsyncClient) -> None:
    response = await keyed_client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid API key"


async def test_auth_wrong_scheme(keyed_client: httpx.AsyncClient) -> None:
    response = await keyed_client.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"})
    assert response.status_code == 401


async def test_auth_right_key(keyed_client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    models = await keyed_client.get("/v1/models", headers=headers)
    embeddings = await keyed_client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]}, headers=headers)
    assert models.status_code == 200
    assert embeddings.status_code == 200


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/similarity", "/v1/embeddings/upload"])
async def test_auth_guards_post_routes(keyed_client: httpx.AsyncClient, path: str) -> None:
    response = await keyed_client.post(path, json={"input": [{"image": png_base64(1)}]})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_auth_public_routes(keyed_client: httpx.AsyncClient, path: str) -> None:
    response = await keyed_client.get(path)
    assert response.status_code == 200


async def test_auth_off_without_key(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/v1/models")
    assert response.status_code == 200


async def test_auth_guards_bank_routes(keyed_client: httpx.AsyncClient) -> None:
    listing = await keyed_client.get("/v1/banks")
    creation = await keyed_client.put("/v1/banks/parts", json={"model": "tiny-image"})
    assert listing.status_code == 401
    assert creation.status_code == 401
