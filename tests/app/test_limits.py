"""Request limits: body bytes (declared and chunked), items, text length and image pixels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.errors import PayloadTooLarge
from app.limits import check_item_count, check_text_length
from app.settings import Settings
from tests.app.helpers import export_text_model, live_server, png_base64, png_bytes, running_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def limited_client(image_model_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = image_model_settings.model_copy(
        update={"max_request_bytes": 4096, "max_items_per_request": 3, "max_image_pixels": 100}
    )
    async with running_app(settings) as (_, client):
        yield client


def chunks(body: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def async_chunks(body: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks(body):
        yield chunk


async def test_body_declared_too_large(limited_client: httpx.AsyncClient) -> None:
    body = b'{"input": ["' + b"a" * 5000 + b'"]}'
    response = await limited_client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "payload_too_large"
    assert "at most 4096" in error["message"]


async def test_body_chunked_too_large(limited_client: httpx.AsyncClient) -> None:
    body = b'{"input": ["' + b"a" * 5000 + b'"]}'
    request = limited_client.build_request(
        "POST", "/v1/embeddings", content=async_chunks(body), headers={"content-type": "application/json"}
    )
    assert "content-length" not in request.headers
    response = await limited_client.send(request)
    assert response.status_code == 413
    assert "exceeds 4096 bytes" in response.json()["error"]["message"]


async def test_body_chunked_under_limit(limited_client: httpx.AsyncClient) -> None:
    body = b'{"input": [{"image": "' + png_base64(1).encode("ascii") + b'"}]}'
    request = limited_client.build_request(
        "POST", "/v1/embeddings", content=async_chunks(body), headers={"content-type": "application/json"}
    )
    response = await limited_client.send(request)
    assert response.status_code == 200


async def test_too_many_items(limited_client: httpx.AsyncClient) -> None:
    response = await limited_client.post("/v1/embeddings", json={"input": [{"image": png_base64(s)} for s in range(4)]})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "input has 4 items; this service accepts at most 3 per request"


async def test_too_many_uploads(limited_client: httpx.AsyncClient) -> None:
    files = [("files", (f"{s}.png", png_bytes(s), "image/png")) for s in range(4)]
    response = await limited_client.post("/v1/embeddings/upload", files=files)
    assert response.status_code == 413
    assert response.json()["error"]["message"].startswith("files has 4 items")


async def test_too_many_similarity_items(limited_client: httpx.AsyncClient) -> None:
    items = [{"image": png_base64(s)} for s in range(2)]
    response = await limited_client.post("/v1/similarity", json={"queries": items, "candidates": items})
    assert response.status_code == 413


async def test_image_too_many_pixels(limited_client: httpx.AsyncClient) -> None:
    response = await limited_client.post("/v1/embeddings", json={"input": [{"image": png_base64(1, size=11)}]})
    assert response.status_code == 413
    message = response.json()["error"]["message"]
    assert message.startswith("input[0]: image is 11x11")


async def test_text_too_long(image_model_settings: Settings) -> None:
    export_text_model(image_model_settings.models_dir, "tiny-text")
    settings = image_model_settings.model_copy(update={"max_text_chars": 10})
    async with running_app(settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": ["short", "much longer than ten"]})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "input[1]: text has 20 characters; this service accepts at most 10"


def test_check_item_count_passes_at_limit() -> None:
    check_item_count(3, 3)


def test_check_item_count_raises_above() -> None:
    with pytest.raises(PayloadTooLarge, match="queries has 4 items"):
        check_item_count(4, 3, "queries")


def test_check_text_length_raises_above() -> None:
    with pytest.raises(PayloadTooLarge, match=r"input\[2\]: text has 4 characters"):
        check_text_length("abcd", 3, "input[2]")


def test_body_chunked_too_large_uvicorn(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(update={"max_request_bytes": 4096})
    body = b'{"input": ["' + b"a" * 50_000 + b'"]}'
    with live_server(settings) as base_url:
        response = httpx.post(
            f"{base_url}/v1/embeddings", content=chunks(body), headers={"content-type": "application/json"}, timeout=10.0
        )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
