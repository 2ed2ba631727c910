"""Empty, over-long, non-string and badly encoded text over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.app.helpers import live_server, make_settings
from tests.reliability.conftest import Service
from tests.reliability.helpers import IMAGE_MODEL, TEXT_MODEL, bank_state, encode, error_of, noise

ROUTES = ["embeddings", "samples", "score"]
BANK = "texts"
LONG_TEXT = " ".join(["encoder"] * 80)  # far more than the model's 32 tokens


@pytest.fixture(scope="module")
def bank(service: Service) -> str:
    assert service.client.put(f"/v1/banks/{BANK}", json={"model": TEXT_MODEL, "k": 2}).status_code == 201
    added = service.client.post(f"/v1/banks/{BANK}/samples", json={"input": ["a cat", "a dog", "a fox"]})
    assert added.status_code == 200
    return BANK


def post_json(service: Service, route: str, body: bytes) -> httpx.Response:
    """POST raw JSON bytes whose ``input`` is spliced in, to ``route`` (the text model, or the text bank)."""
    url = "/v1/embeddings" if route == "embeddings" else f"/v1/banks/{BANK}/{route}"
    model = b'"model": "tiny-text", ' if route == "embeddings" else b""
    return service.client.post(url, content=b"{" + model + b'"input": ' + body + b"}", headers={"content-type": "application/json"})


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("raw_input", "status", "message"),
    [
        (b'["fine", {"text": 5}]', 422, 'input[1]: "text" must be a string, got int'),
        (b'["fine", null]', 422, "input[1]: expected a string, "),
        (b'["fine", ["nested"]]', 422, "input[1]: expected a string, "),
        (b'["fine", true]', 422, "input[1]: token ids are not supported"),
        (b'["fine", 7]', 422, "input[1]: token ids are not supported"),
    ],
    ids=["number-in-object", "null", "nested-list", "bool", "number"],
)
def test_bad_text_rejected(service: Service, bank: str, route: str, raw_input: bytes, status: int, message: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = post_json(service, route, raw_input)
    assert response.status_code == status
    assert error_of(response)["type"] == "schema_violation"
    assert error_of(response)["message"].startswith(message)
    assert bank_state(service.client, service.data_dir, bank) == before


@pytest.mark.parametrize("route", ROUTES)
def test_invalid_utf8_body_rejected(service: Service, bank: str, route: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = post_json(service, route, b'["fine", "caf\xe9 \xff"]')
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_input"
    assert "request body is not valid UTF-8: byte 0xe9 at position" in error_of(response)["message"]
    assert bank_state(service.client, service.data_dir, bank) == before


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("raw_input", [b'["fine", ""]', b'["fine", {"text": ""}]', b'["fine", "   "]', b'["fine", {"text": "\\t\\r\\n"}]'])
def test_blank_text_rejected(service: Service, bank: str, route: str, raw_input: bytes) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = post_json(service, route, raw_input)
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_input"
    assert error_of(response)["message"] == "input[1]: text is empty or whitespace only"
    assert bank_state(service.client, service.data_dir, bank) == before


def test_long_text_truncated_and_reported(service: Service) -> None:
    short = service.client.post("/v1/embeddings", json={"model": TEXT_MODEL, "input": ["a cat"]}).json()["usage"]
    response = service.client.post("/v1/embeddings", json={"model": TEXT_MODEL, "input": ["a cat", LONG_TEXT]})
    usage = response.json()["usage"]
    assert response.status_code == 200
    assert usage["truncated_inputs"] == 1
    assert usage["prompt_tokens"] == short["prompt_tokens"] + 32  # the long text is cut to the model's 32 tokens


@pytest.fixture(scope="module")
def strict_client(models_dir_all, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Yield a client of a service that rejects over-long texts instead of truncating them."""
    settings = make_settings(models_dir_all, tmp_path_factory.mktemp("strict-data"), truncate_text=False)
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30.0) as client:
        yield client


def test_long_text_413_without_truncation(strict_client: httpx.Client) -> None:
    assert strict_client.put("/v1/banks/strict", json={"model": TEXT_MODEL}).status_code == 201
    embedded = strict_client.post("/v1/embeddings", json={"model": TEXT_MODEL, "input": ["a cat", LONG_TEXT]})
    added = strict_client.post("/v1/banks/strict/samples", json={"input": ["a cat", LONG_TEXT]})
    size = strict_client.get("/v1/banks/strict").json()["size"]

    assert embedded.status_code == 413
    assert error_of(embedded)["type"] == "payload_too_large"
    assert error_of(embedded)["message"].startswith("input[1]: text is longer than the 32 tokens")
    assert added.status_code == 413
    assert size == 0


def multipart(parts: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Build a multipart body by hand from (disposition, content type, content) parts, so that raw bytes pass unchanged."""
    body = b""
    for disposition, content_type, content in parts:
        body += b"--b0undary\r\nContent-Disposition: form-data; " + disposition + b"\r\n"
        if content_type:
            body += b"Content-Type: " + content_type + b"\r\n"
        body += b"\r\n" + content + b"\r\n"
    return body + b"--b0undary--\r\n"


def post_multipart(service: Service, body: bytes) -> httpx.Response:
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    return service.client.post("/v1/embeddings/upload", content=body, headers=headers)


def test_multipart_invalid_utf8_model(service: Service) -> None:
    image = encode(noise(8), "PNG")
    body = multipart([(b'name="model"', b"", b"tiny-\xff\xfe"), (b'name="files"; filename="a.png"', b"image/png", image)])
    response = post_multipart(service, body)
    assert response.status_code == 404
    assert "is not loaded" in error_of(response)["message"]


def test_multipart_invalid_utf8_filename(service: Service) -> None:
    image = encode(noise(8), "PNG")
    body = multipart([(b'name="model"', b"", IMAGE_MODEL.encode()), (b'name="files"; filename="\xff\xfe.png"', b"image/png", image)])
    response = post_multipart(service, body)
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1


def test_multipart_text_part_415(service: Service) -> None:
    body = multipart([(b'name="files"; filename="note.txt"', b"text/plain; charset=utf-8", b"caf\xe9 \xff")])
    response = post_multipart(service, body)
    assert response.status_code == 415
    assert error_of(response)["message"].startswith("files[0] (note.txt) is declared as text/plain")
