"""POST /v1/embeddings and /v1/embeddings/upload through real HTTP on the real app."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.responses import JSONResponse

from app.embedding import DECODE_GROUP_BYTES, decode_groups
from app.responses import FastJSONResponse
from app.settings import Settings
from training.artifact import load_artifact
from training.tokenizer import tokenize_batch
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import (
    EMBEDDING_DIM,
    TEXT_MAX_TOKENS,
    decode_vector,
    export_image_model,
    export_text_model,
    make_settings,
    png_base64,
    png_bytes,
    running_app,
)

pytestmark = pytest.mark.anyio

TEXT_MODEL = "tiny-text"


@pytest.fixture
def mixed_settings(tmp_path: Path, models_dir: Path) -> Settings:
    export_image_model(models_dir, IMAGE_MODEL)
    export_text_model(models_dir, TEXT_MODEL)
    return make_settings(models_dir, tmp_path / "var")


async def test_embeddings_float_shape(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}, {"image": png_base64(2)}]})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == IMAGE_MODEL
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in body["data"])
    assert len(body["data"][0]["embedding"]) == EMBEDDING_DIM
    assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0, "truncated_inputs": 0}


async def test_embeddings_unit_norm_by_default(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", json={"input": {"image": png_base64(1)}})
    assert response.status_code == 200
    vector = np.array(response.json()["data"][0]["embedding"])
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


async def test_embeddings_normalize_false(service_client: httpx.AsyncClient) -> None:
    image = png_base64(1)
    raw = await service_client.post("/v1/embeddings", json={"input": [{"image": image}], "normalize": False})
    unit = await service_client.post("/v1/embeddings", json={"input": [{"image": image}]})
    assert raw.status_code == 200
    raw_vector = np.array(raw.json()["data"][0]["embedding"])
    unit_vector = np.array(unit.json()["data"][0]["embedding"])
    assert np.linalg.norm(raw_vector) != pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(raw_vector / np.linalg.norm(raw_vector), unit_vector, atol=1e-5)


async def test_embeddings_base64_matches_float(service_client: httpx.AsyncClient) -> None:
    image = png_base64(3)
    as_float = await service_client.post("/v1/embeddings", json={"input": [{"image": image}]})
    as_base64 = await service_client.post("/v1/embeddings", json={"input": [{"image": image}], "encoding_format": "base64"})
    assert as_base64.status_code == 200
    encoded = as_base64.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    np.testing.assert_allclose(decode_vector(encoded), as_float.json()["data"][0]["embedding"], rtol=0, atol=1e-7)


async def test_embeddings_data_url_equals_plain(service_client: httpx.AsyncClient) -> None:
    plain = await service_client.post("/v1/embeddings", json={"input": [{"image": png_base64(4)}]})
    data_url = await service_client.post("/v1/embeddings", json={"input": [{"image": png_base64(4, data_url=True)}]})
    assert data_url.status_code == 200
    assert data_url.json()["data"] == plain.json()["data"]


async def test_embeddings_text_usage(mixed_settings: Settings) -> None:
    async with running_app(mixed_settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": ["a cat", {"text": "the quick brown fox"}]})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == TEXT_MODEL
    assert len(body["data"]) == 2
    expected = tokenize_batch(load_artifact(mixed_settings.models_dir / TEXT_MODEL).tokenizer, ["a cat", "the quick brown fox"], TEXT_MAX_TOKENS, True)
    assert body["usage"]["prompt_tokens"] == sum(expected.lengths)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    assert body["usage"]["truncated_inputs"] == 0


async def test_embeddings_text_truncated_count(mixed_settings: Settings) -> None:
    long_text = " ".join(["encoder"] * 80)
    async with running_app(mixed_settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": [long_text, "a cat"]})
    assert response.status_code == 200
    assert response.json()["usage"]["truncated_inputs"] == 1


async def test_embeddings_truncation_off_rejects(tmp_path: Path, models_dir: Path) -> None:
    export_text_model(models_dir, TEXT_MODEL)
    settings = make_settings(models_dir, tmp_path / "var", truncate_text=False)
    async with running_app(settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": ["a cat", " ".join(["encoder"] * 80)]})
    assert response.status_code == 413
    message = response.json()["error"]["message"]
    assert message.startswith("input[1]: ")
    assert "tokens" in message


async def test_embeddings_lone_surrogate_cached(mixed_settings: Settings) -> None:
    settings = mixed_settings.model_copy(update={"cache_size": 4})
    body = b'{"input": ["\\ud800 lone"]}'
    async with running_app(settings) as (_, client):
        first = await client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
        second = await client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert first.status_code == 200
    assert second.json()["data"] == first.json()["data"]


async def test_embeddings_text_to_image_model(mixed_settings: Settings) -> None:
    async with running_app(mixed_settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": ["a cat"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_input"
    assert "input[0] is text" in error["message"]
    assert f"model '{IMAGE_MODEL}' embeds image" in error["message"]
    assert "use a text model" in error["message"]


async def test_embeddings_image_to_text_model(mixed_settings: Settings) -> None:
    async with running_app(mixed_settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"model": TEXT_MODEL, "input": [{"image": png_base64(1)}]})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert f"model '{TEXT_MODEL}' embeds text" in message
    assert "use an image model" in message


async def test_embeddings_mixed_modalities(mixed_settings: Settings) -> None:
    async with running_app(mixed_settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": ["a cat", {"image": png_base64(1)}]})
    assert response.status_code == 400
    assert "input[1] is image" in response.json()["error"]["message"]


async def test_embeddings_no_text_model(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", json={"input": "a cat"})
    assert response.status_code == 400
    assert "no text model is loaded" in response.json()["error"]["message"]


async def test_embeddings_several_models_need_name(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, "image-a")
    export_image_model(models_dir, "image-b", seed=1)
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
        unnamed = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]})
        named = await client.post("/v1/embeddings", json={"model": "image-b", "input": [{"image": png_base64(1)}]})
    assert unnamed.status_code == 400
    assert "name one in" in unnamed.json()["error"]["message"]
    assert named.status_code == 200
    assert named.json()["model"] == "image-b"


async def test_embeddings_default_model_picked(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, "image-a")
    export_image_model(models_dir, "image-b", seed=1)
    settings = make_settings(models_dir, tmp_path / "var", default_model="image-b")
    async with running_app(settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]})
    assert response.status_code == 200
    assert response.json()["model"] == "image-b"


async def test_embeddings_unknown_model(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", json={"model": "nope", "input": [{"image": png_base64(1)}]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found"
    assert "'nope'" in error["message"]
    assert IMAGE_MODEL in error["message"]


async def test_embeddings_corrupt_image(service_client: httpx.AsyncClient) -> None:
    payload = {"input": [{"image": png_base64(1)}, {"image": "bm90IGFuIGltYWdl"}]}
    response = await service_client.post("/v1/embeddings", json=payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_input"
    assert error["message"].startswith("input[1]: ")


async def test_embeddings_unsupported_image_format(service_client: httpx.AsyncClient) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 not really").decode("ascii")
    response = await service_client.post("/v1/embeddings", json={"input": [{"image": pdf}]})
    assert response.status_code == 415
    assert response.json()["error"]["message"].startswith("input[0]: ")


async def test_embeddings_vector_rejected(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", json={"input": [{"embedding": [0.1] * EMBEDDING_DIM}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("input[0]: embedding vectors are not accepted")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"input": [{"foo": 1}]}, "input[0]: expected a string"),
        ({"input": [[1, 2, 3]]}, "input[0]: token ids are not supported"),
        ({"input": [{"embedding": [1.0, "x"]}]}, 'input[0]: "embedding"[1] must be a number'),
        ({"input": []}, "input: "),
        ({"input": ["a"], "encoding_format": "int8"}, "encoding_format: "),
        ({"input": ["a"], "colour": "blue"}, "colour: unknown field"),
        ({}, "input: field required"),
    ],
)
async def test_embeddings_schema_violation(service_client: httpx.AsyncClient, payload: dict, fragment: str) -> None:
    response = await service_client.post("/v1/embeddings", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "schema_violation"
    assert fragment in error["message"]


async def test_embeddings_invalid_json(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", content=b'{"input": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


async def test_embeddings_wrong_content_type(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "unsupported_media_type"


async def test_embeddings_dimensions_mismatch(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}], "dimensions": 3})
    assert response.status_code == 400
    assert f"returns {EMBEDDING_DIM}" in response.json()["error"]["message"]


async def test_upload_matches_json(service_client: httpx.AsyncClient) -> None:
    files = [("files", ("a.png", png_bytes(5), "image/png")), ("files", ("b.png", png_bytes(6), "image/png"))]
    upload = await service_client.post("/v1/embeddings/upload", files=files, data={"model": IMAGE_MODEL})
    as_json = await service_client.post("/v1/embeddings", json={"input": [{"image": png_base64(5)}, {"image": png_base64(6)}]})
    assert upload.status_code == 200
    assert upload.json()["model"] == IMAGE_MODEL
    np.testing.assert_allclose(
        [item["embedding"] for item in upload.json()["data"]],
        [item["embedding"] for item in as_json.json()["data"]],
        atol=1e-6,
    )


async def test_upload_base64_format(service_client: httpx.AsyncClient) -> None:
    files = [("files", ("a.png", png_bytes(5), "image/png"))]
    response = await service_client.post("/v1/embeddings/upload", files=files, data={"encoding_format": "base64"})
    assert response.status_code == 200
    assert decode_vector(response.json()["data"][0]["embedding"]).shape == (EMBEDDING_DIM,)


async def test_upload_text_part_rejected(service_client: httpx.AsyncClient) -> None:
    files = [("files", ("a.png", png_bytes(5), "image/png")), ("files", ("notes.txt", b"hello", "text/plain"))]
    response = await service_client.post("/v1/embeddings/upload", files=files)
    assert response.status_code == 415
    assert response.json()["error"]["message"].startswith("files[1] (notes.txt)")


async def test_upload_corrupt_file(service_client: httpx.AsyncClient) -> None:
    files = [("files", ("a.png", b"\x89PNG\r\n\x1a\n broken", "image/png"))]
    response = await service_client.post("/v1/embeddings/upload", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("files[0]: ")


async def test_upload_without_files(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings/upload", data={"model": IMAGE_MODEL}, files=[("other", ("x", b"1", "text/plain"))])
    assert response.status_code == 422
    assert "files: field required" in response.json()["error"]["message"]


async def test_upload_json_body_rejected(service_client: httpx.AsyncClient) -> None:
    response = await service_client.post("/v1/embeddings/upload", json={"files": []})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]["message"]


async def test_embeddings_default_per_modality_list(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, "image-a")
    export_image_model(models_dir, "image-b", seed=1)
    settings = make_settings(models_dir, tmp_path / "var", default_model="text-x, image-a")
    async with running_app(settings) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]})
        models = (await client.get("/v1/models")).json()["data"]
    assert response.status_code == 200
    assert response.json()["model"] == "image-a"
    assert [card["default"] for card in models] == [True, False]


async def test_embeddings_default_marked_in_artifact(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, "image-a")
    path = export_image_model(models_dir, "image-b", seed=1)
    meta = json.loads((path / "model.json").read_text())
    meta["default"] = True
    (path / "model.json").write_text(json.dumps(meta))
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]})
    assert response.status_code == 200
    assert response.json()["model"] == "image-b"


@pytest.mark.parametrize("text", ["", "   ", "\t\r\n"])
async def test_embeddings_blank_text_names_index(tmp_path: Path, models_dir: Path, text: str) -> None:
    export_text_model(models_dir, "tiny-text")
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
        response = await client.post("/v1/embeddings", json={"input": ["fine", text]})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "input[1]: text is empty or whitespace only"


@pytest.mark.parametrize(
    ("sizes", "groups"),
    [
        ([], []),
        ([100, 100, 100], [[0, 1, 2]]),  # small images share one pool task
        ([70_000, 10, 70_000, 10], [[0], [1, 2], [3]]),  # a run closes once it reaches the limit
        ([40_000, 40_000, 40_000], [[0, 1], [2]]),
    ],
)
def test_decode_groups(sizes: list[int], groups: list[list[int]]) -> None:
    assert decode_groups(sizes, group_bytes=64 * 1024) == groups


async def test_mixed_image_sizes_keep_order(service_client: httpx.AsyncClient) -> None:
    # a 160 px random RGB PNG is larger than one decoding group, so items spread over several tasks
    images = [png_base64(1), png_base64(2, size=160, mode="RGB"), png_base64(3), png_base64(4), png_base64(5, size=160, mode="RGB")]
    assert len(images[1]) > DECODE_GROUP_BYTES
    together = await service_client.post("/v1/embeddings", json={"input": [{"image": image} for image in images]})
    assert together.status_code == 200
    for index, image in enumerate(images):
        alone = await service_client.post("/v1/embeddings", json={"input": [{"image": image}]})
        np.testing.assert_allclose(
            together.json()["data"][index]["embedding"], alone.json()["data"][0]["embedding"], rtol=1e-5, atol=1e-6
        )


async def test_corrupt_image_in_later_group(service_client: httpx.AsyncClient) -> None:
    images = [png_base64(1), png_base64(2, size=160, mode="RGB"), png_base64(3), "bm90IGFuIGltYWdl", png_base64(4)]
    response = await service_client.post("/v1/embeddings", json={"input": [{"image": image} for image in images]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("input[3]: ")


def test_fast_json_matches_json_module() -> None:
    vector = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    content = {
        "object": "list",
        "data": [{"index": 0, "embedding": vector.tolist(), "tiny": 1e-7, "huge": 3.4e38}],
        "model": "glyphs-é-模型",
        "usage": {"prompt_tokens": 2**40, "flag": True, "none": None},
    }
    fast = FastJSONResponse(content)
    plain = JSONResponse(content)
    assert fast.media_type == "application/json"
    assert json.loads(fast.body) == json.loads(plain.body)
    assert json.loads(fast.body)["data"][0]["embedding"] == vector.tolist()  # every float round-trips exactly
