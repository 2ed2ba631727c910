"""GET /healthz, /readyz, /metrics and /v1/models, and the error shape of unknown routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.metrics import ServiceMetrics
from app.state import ServiceState
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import export_image_model, make_settings, png_base64, running_app

pytestmark = pytest.mark.anyio


async def test_healthz_ok(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_lists_models(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": [IMAGE_MODEL]}


def test_not_ready_before_start(image_model_settings) -> None:
    state = ServiceState(settings=image_model_settings, metrics=ServiceMetrics())
    assert state.not_ready_reason() == "models are still loading and warming up"


async def test_metrics_after_requests(image_model_settings) -> None:
    settings = image_model_settings.model_copy(update={"cache_size": 8})
    async with running_app(settings) as (_, client):
        for _ in range(2):
            await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]})
        await client.post("/v1/embeddings", json={"model": "nope", "input": [{"image": png_base64(1)}]})
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'embed_request_duration_seconds_count{method="POST",route="/v1/embeddings",status="200"} 2.0' in text
    assert f'embed_queue_depth{{model="{IMAGE_MODEL}"}} 0.0' in text
    assert f'embed_batch_size_count{{model="{IMAGE_MODEL}"}} 1.0' in text
    assert f'embed_inference_duration_seconds_count{{model="{IMAGE_MODEL}"}} 1.0' in text
    assert 'embed_errors_total{type="not_found"} 1.0' in text
    assert f'embed_cache_hits_total{{model="{IMAGE_MODEL}"}} 1.0' in text
    assert f'embed_cache_misses_total{{model="{IMAGE_MODEL}"}} 1.0' in text


async def test_models_card(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["data"] == [
        {
            "id": IMAGE_MODEL,
            "object": "model",
            "created": 1767323045,
            "owned_by": "ssl-embed",
            "modality": "image",
            "dim": 16,
            "space": IMAGE_MODEL,
            "method": "simclr",
            "normalize": True,
            "default": False,
            "metrics": {"knn_accuracy": 0.5},
        }
    ]


async def test_models_default_flag(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, "image-a")
    export_image_model(models_dir, "image-b", seed=1)
    async with running_app(make_settings(models_dir, tmp_path / "var", default_model="image-b")) as (_, client):
        response = await client.get("/v1/models")
    assert response.status_code == 200
    flags = {card["id"]: card["default"] for card in response.json()["data"]}
    assert flags == {"image-a": False, "image-b": True}


async def test_unknown_route_404(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert "/v2/nothing" in response.json()["error"]["message"]


async def test_wrong_method_405(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/v1/embeddings")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "method_not_allowed"


async def test_openapi_schema_builds(service_client: httpx.AsyncClient) -> None:
    response = await service_client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/v1/embeddings" in paths
    assert "/v1/similarity" in paths
    assert "/v1/embeddings/upload" in paths
