"""Bank routes under /v1/banks: every status with its message, restarts and unchanged state on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.settings import Settings
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import EMBEDDING_DIM, export_text_model, live_server, make_settings, png_base64, running_app

pytestmark = pytest.mark.anyio

IMAGES = [{"image": png_base64(seed)} for seed in range(8)]


def vector(seed: int, width: int = EMBEDDING_DIM) -> dict[str, list[float]]:
    return {"embedding": np.random.default_rng(seed).normal(size=width).round(6).tolist()}


def assert_error(response: httpx.Response, status: int, error_type: str, message: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert message in error["message"]


async def create(client: httpx.AsyncClient, name: str = "parts", **settings: Any) -> httpx.Response:
    return await client.put(f"/v1/banks/{name}", json={"model": IMAGE_MODEL, **settings})


async def filled(client: httpx.AsyncClient, name: str = "parts") -> dict[str, Any]:
    """Create bank ``name`` with the eight test images as samples and return its info."""
    assert (await create(client, name)).status_code == 201
    response = await client.post(f"/v1/banks/{name}/samples", json={"input": IMAGES, "ids": [f"img-{i}" for i in range(8)]})
    assert response.status_code == 200, response.text
    return (await client.get(f"/v1/banks/{name}")).json()


# --- PUT, GET, DELETE -----------------------------------------------------------------


async def test_create_returns_201(service_client: httpx.AsyncClient) -> None:
    response = await create(service_client, k=3, metric="l2", threshold_percentile=90)
    assert response.status_code == 201
    assert response.json() == {
        "name": "parts",
        "status": "ready",
        "model": IMAGE_MODEL,
        "dim": EMBEDDING_DIM,
        "k": 3,
        "metric": "l2",
        "threshold_percentile": 90.0,
        "size": 0,
        "threshold": None,
        "index": "flat",
    }


async def test_create_again_returns_200(service_client: httpx.AsyncClient) -> None:
    await create(service_client)
    response = await create(service_client)
    assert response.status_code == 200
    assert response.json()["name"] == "parts"


async def test_create_other_settings_409(service_client: httpx.AsyncClient) -> None:
    await create(service_client)
    assert_error(await create(service_client, k=7), 409, "conflict", "k is 5, requested 7")


async def test_create_model_optional_with_one_model(service_client: httpx.AsyncClient) -> None:
    response = await service_client.put("/v1/banks/solo", json={})
    assert response.status_code == 201
    assert response.json()["model"] == IMAGE_MODEL


async def test_create_unknown_model_404(service_client: httpx.AsyncClient) -> None:
    response = await service_client.put("/v1/banks/parts", json={"model": "nope"})
    assert_error(response, 404, "not_found", "nope")


async def test_create_invalid_name_400(service_client: httpx.AsyncClient) -> None:
    response = await service_client.put("/v1/banks/bad%20name", json={"model": IMAGE_MODEL})
    assert_error(response, 400, "invalid_input", "bank name 'bad name' is invalid")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": IMAGE_MODEL, "k": 0}, "k"),
        ({"model": IMAGE_MODEL, "metric": "dot"}, "metric"),
        ({"model": IMAGE_MODEL, "threshold_percentile": 101}, "threshold_percentile"),
        ({"model": IMAGE_MODEL, "size": 3}, "size: unknown field"),
    ],
)
async def test_create_schema_violation_422(service_client: httpx.AsyncClient, body: dict, message: str) -> None:
    response = await service_client.put("/v1/banks/parts", json=body)
    assert_error(response, 422, "schema_violation", message)
    assert (await service_client.get("/v1/banks/parts")).status_code == 404


async def test_create_not_json_415(service_client: httpx.AsyncClient) -> None:
    response = await service_client.put("/v1/banks/parts", content=b"model=x", headers={"content-type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type", "application/json")


async def test_create_broken_json_400(service_client: httpx.AsyncClient) -> None:
    response = await service_client.put(
        "/v1/banks/parts", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_input", "not valid JSON")


async def test_get_bank(service_client: httpx.AsyncClient) -> None:
    info = await filled(service_client)
    assert info["size"] == 8
    assert info["threshold"] is not None
    assert info["index"] == "flat"


async def test_get_unknown_bank_404(service_client: httpx.AsyncClient) -> None:
    assert_error(await service_client.get("/v1/banks/nope"), 404, "not_found", "bank 'nope' not found")


async def test_list_banks(service_client: httpx.AsyncClient) -> None:
    await create(service_client, "b")
    await create(service_client, "a")
    response = await service_client.get("/v1/banks")
    assert response.status_code == 200
    assert [bank["name"] for bank in response.json()["data"]] == ["a", "b"]


async def test_delete_bank(service_client: httpx.AsyncClient) -> None:
    await filled(service_client)
    response = await service_client.delete("/v1/banks/parts")
    assert response.status_code == 200
    assert response.json()["deleted"] is True
    assert response.json()["size"] == 8
    assert (await service_client.get("/v1/banks/parts")).status_code == 404
    assert_error(await service_client.delete("/v1/banks/parts"), 404, "not_found", "'parts' not found")


# --- samples --------------------------------------------------------------------------


async def test_add_images_and_vectors(service_client: httpx.AsyncClient) -> None:
    await create(service_client)
    response = await service_client.post("/v1/banks/parts/samples", json={"input": [*IMAGES[:3], vector(1)]})
    assert response.status_code == 200
    body = response.json()
    assert body["added"] == 4
    assert body["size"] == 4
    assert body["threshold"] is not None
    assert len(body["ids"]) == 4


async def test_add_single_item(service_client: httpx.AsyncClient) -> None:
    await create(service_client)
    response = await service_client.post("/v1/banks/parts/samples", json={"input": IMAGES[0]})
    assert response.status_code == 200
    assert response.json()["threshold"] is None


async def test_add_unknown_bank_404(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/banks/nope/samples", json={"input": IMAGES[:1]})
    assert_error(response, 404, "not_found", "bank 'nope' not found")


BAD_SAMPLES = [
    ({"input": ["a text"]}, 400, "invalid_input", "image"),
    ({"input": [vector(1, width=3)]}, 400, "invalid_input", "3 values"),
    ({"input": [{"image": "bm90IGFuIGltYWdl"}]}, 400, "invalid_input", "input[0]"),
    ({"input": [{"image": "%%%"}]}, 400, "invalid_input", "base64"),
    ({"input": IMAGES[:2], "ids": ["one"]}, 400, "invalid_input", "ids has 1 entries for 2 input items"),
    ({"input": IMAGES[:2], "ids": ["x", "x"]}, 400, "invalid_input", "more than once"),
    ({"input": IMAGES[:1], "ids": ["img-0"]}, 409, "conflict", "'img-0' already exists"),
    ({"input": []}, 422, "schema_violation", "input"),
    ({"input": IMAGES[:1], "extra": 1}, 422, "schema_violation", "extra: unknown field"),
]


@pytest.mark.parametrize(("body", "status", "error_type", "message"), BAD_SAMPLES)
async def test_add_bad_input_leaves_bank(
    service_client: httpx.AsyncClient, body: dict, status: int, error_type: str, message: str
) -> None:
    before = await filled(service_client)
    response = await service_client.post("/v1/banks/parts/samples", json=body)
    assert_error(response, status, error_type, message)
    assert (await service_client.get("/v1/banks/parts")).json() == before


async def test_add_text_to_image_bank_names_model(service_client: httpx.AsyncClient) -> None:
    await create(service_client)
    response = await service_client.post("/v1/banks/parts/samples", json={"input": ["hello"]})
    assert_error(response, 400, "invalid_input", IMAGE_MODEL)


# --- score ----------------------------------------------------------------------------


async def test_score_known_and_unknown(service_client: httpx.AsyncClient) -> None:
    info = await filled(service_client)
    response = await service_client.post("/v1/banks/parts/score", json={"input": [IMAGES[0], vector(5)]})
    assert response.status_code == 200
    data = response.json()["data"]
    assert [entry["index"] for entry in data] == [0, 1]
    assert data[0]["threshold"] == info["threshold"]
    assert data[0]["neighbors_used"] == 5
    assert isinstance(data[0]["is_anomaly"], bool)
    assert "neighbors" not in data[0]
    assert data[0]["score"] < data[1]["score"]


async def test_score_returns_neighbors(service_client: httpx.AsyncClient) -> None:
    await filled(service_client)
    response = await service_client.post("/v1/banks/parts/score", json={"input": [IMAGES[3]], "return_neighbors": True})
    assert response.status_code == 200
    neighbors = response.json()["data"][0]["neighbors"]
    assert len(neighbors) == 5
    assert neighbors[0]["id"] == "img-3"
    assert neighbors[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert [neighbor["distance"] for neighbor in neighbors] == sorted(neighbor["distance"] for neighbor in neighbors)


async def test_score_batch_equals_single(service_client: httpx.AsyncClient) -> None:
    await filled(service_client)
    queries = [vector(seed) for seed in range(10, 16)]
    batch = (await service_client.post("/v1/banks/parts/score", json={"input": queries})).json()["data"]
    for index, query in enumerate(queries):
        single = (await service_client.post("/v1/banks/parts/score", json={"input": [query]})).json()["data"][0]
        assert single["score"] == batch[index]["score"]


async def test_score_empty_bank_nulls(service_client: httpx.AsyncClient) -> None:
    await create(service_client)
    response = await service_client.post("/v1/banks/parts/score", json={"input": [IMAGES[0]]})
    assert response.status_code == 200
    entry = response.json()["data"][0]
    assert entry["score"] is None
    assert entry["is_anomaly"] is None
    assert entry["threshold"] is None
    assert entry["neighbors_used"] == 0


async def test_score_wrong_width_400(service_client: httpx.AsyncClient) -> None:
    await filled(service_client)
    response = await service_client.post("/v1/banks/parts/score", json={"input": [vector(1, width=4)]})
    assert_error(response, 400, "invalid_input", "expects 16")


async def test_score_unknown_bank_404(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/banks/nope/score", json={"input": [IMAGES[0]]})
    assert_error(response, 404, "not_found", "bank 'nope' not found")


async def test_score_unloaded_model_404(tmp_path: Path, models_dir: Path, image_model_settings: Settings) -> None:
    async with running_app(image_model_settings) as (_, client):
        await filled(client)
    export_text_model(models_dir, "other-text")
    (models_dir / IMAGE_MODEL / "model.json").unlink()  # the bank's model is gone after the restart
    settings = make_settings(models_dir, image_model_settings.data_dir)
    async with running_app(settings) as (_, client):
        response = await client.post("/v1/banks/parts/score", json={"input": [vector(1)]})
        assert_error(response, 404, "not_found", f"model '{IMAGE_MODEL}' of bank 'parts' is not loaded")
        assert (await client.get("/v1/banks/parts")).status_code == 200


# --- restarts -------------------------------------------------------------------------


def test_banks_survive_restart(image_model_settings: Settings) -> None:
    queries = {"input": [IMAGES[0], vector(9)], "return_neighbors": True}
    with live_server(image_model_settings) as url, httpx.Client(base_url=url) as client:
        assert client.put("/v1/banks/parts", json={"model": IMAGE_MODEL, "k": 3}).status_code == 201
        ids = [f"img-{i}" for i in range(8)]
        assert client.post("/v1/banks/parts/samples", json={"input": IMAGES, "ids": ids}).status_code == 200
        before_info = client.get("/v1/banks/parts").json()
        before_scores = client.post("/v1/banks/parts/score", json=queries).json()

    with live_server(image_model_settings) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/banks/parts").json() == before_info
        assert client.post("/v1/banks/parts/score", json=queries).json() == before_scores
        response = client.post("/v1/banks/parts/samples", json={"input": IMAGES[:1], "ids": ["img-0"]})
        assert response.status_code == 409


def test_corrupt_bank_503_after_restart(image_model_settings: Settings) -> None:
    with live_server(image_model_settings) as url, httpx.Client(base_url=url) as client:
        for name in ("good", "bad"):
            assert client.put(f"/v1/banks/{name}", json={"model": IMAGE_MODEL}).status_code == 201
            assert client.post(f"/v1/banks/{name}/samples", json={"input": IMAGES[:4]}).status_code == 200

    folder = image_model_settings.data_dir / "banks" / "bad"
    index_file = json.loads((folder / "meta.json").read_text())["index_file"]
    (folder / index_file).write_bytes(b"not a faiss index")

    with live_server(image_model_settings) as url, httpx.Client(base_url=url) as client:
        listed = {bank["name"]: bank for bank in client.get("/v1/banks").json()["data"]}
        assert listed["bad"]["status"] == "unavailable"
        assert index_file in listed["bad"]["error"]
        assert listed["good"]["status"] == "ready"
        assert_error(client.get("/v1/banks/bad"), 503, "bank_unavailable", index_file)
        assert_error(client.post("/v1/banks/bad/score", json={"input": IMAGES[:1]}), 503, "bank_unavailable", index_file)
        assert client.post("/v1/banks/good/score", json={"input": IMAGES[:1]}).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.delete("/v1/banks/bad").status_code == 200
        assert client.put("/v1/banks/bad", json={"model": IMAGE_MODEL}).status_code == 201
