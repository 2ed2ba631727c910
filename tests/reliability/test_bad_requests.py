"""Malformed requests: body size, item count, unknown names, bank names, media types and API keys."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.app.helpers import live_server, make_settings
from tests.reliability.conftest import Service
from tests.reliability.helpers import IMAGE_MODEL, TEXT_MODEL, b64, bank_state, encode, error_of, noise, vectors

LIMIT_BYTES = 64 * 1024
API_KEY = "reliability-test-key-0123456789"
BANK = "requests"


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- raw HTTP ----------------------------------------------------------------------------


def exchange(base_url: str, head: bytes, body_parts: list[bytes], timeout_s: float = 10.0) -> tuple[int, dict, bytes]:
    """Send a request head and body parts over a plain socket, then read the response.

    The body parts are sent as given and the socket stays open, so a server that waits
    for the rest of a declared body never responds and the read times out.
    """
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as connection:
        connection.sendall(head)
        for part in body_parts:
            connection.sendall(part)
        return read_response(connection)


def read_response(connection: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def limited(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a service that accepts at most 64 KiB bodies and 4 items."""
    settings = make_settings(
        models_dir_all, tmp_path_factory.mktemp("limited-data"), max_request_bytes=LIMIT_BYTES, max_items_per_request=4
    )
    with live_server(settings) as url:
        yield url


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/embeddings/upload", "/v1/banks/any/samples"])
def test_declared_body_rejected_unread(limited: str, path: str) -> None:
    head = request_head("POST", path, {"Content-Type": "application/json", "Content-Length": str(10**10)})
    status, headers, body = exchange(limited, head, [b'{"input": ["'])
    assert status == 413
    assert headers["connection"] == "close"
    assert f"at most {LIMIT_BYTES}" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v1/embeddings", "application/json"), ("/v1/embeddings/upload", "multipart/form-data; boundary=b0undary")],
)
def test_chunked_body_rejected_midway(limited: str, path: str, content_type: str) -> None:
    head = request_head("POST", path, {"Content-Type": content_type, "Transfer-Encoding": "chunked"})
    chunk = b"a" * 16384
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    status, _, body = exchange(limited, head, [framed] * 5)  # 80 KiB sent, no final chunk
    assert status == 413
    assert f"exceeds {LIMIT_BYTES} bytes" in json.loads(body)["error"]["message"]


def test_limited_service_still_serves(limited: str) -> None:
    response = httpx.post(f"{limited}/v1/embeddings", json={"model": TEXT_MODEL, "input": ["a cat"]}, timeout=10.0)
    assert response.status_code == 200


@pytest.mark.parametrize("route", ["embeddings", "samples", "score", "similarity"])
def test_too_many_items(limited: str, route: str) -> None:
    items = vectors(5, 16)
    with httpx.Client(base_url=limited, timeout=10.0) as client:
        client.put("/v1/banks/many", json={"model": IMAGE_MODEL})
        if route == "embeddings":
            response = client.post("/v1/embeddings", json={"model": TEXT_MODEL, "input": ["a"] * 5})
        elif route == "similarity":
            response = client.post("/v1/similarity", json={"queries": items[:3], "candidates": items[3:] * 1 + items[:1]})
        else:
            response = client.post(f"/v1/banks/many/{route}", json={"input": items})
        size = client.get("/v1/banks/many").json()["size"]
    assert response.status_code == 413
    assert "this service accepts at most 4 per request" in error_of(response)["message"]
    assert size == 0


# --- unknown names, bank names and settings -------------------------------------------------


@pytest.fixture(scope="module")
def bank(service: Service) -> str:
    assert service.client.put(f"/v1/banks/{BANK}", json={"model": IMAGE_MODEL, "k": 2}).status_code == 201
    assert service.client.post(f"/v1/banks/{BANK}/samples", json={"input": vectors(3, 16)}).status_code == 200
    return BANK


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("POST", "/v1/embeddings", {"model": "nope", "input": ["a"]}, "model 'nope' is not loaded"),
        ("POST", "/v1/similarity", {"model": "nope", "queries": ["a"], "candidates": ["b"]}, "model 'nope' is not loaded"),
        ("PUT", "/v1/banks/new-bank", {"model": "nope"}, "model 'nope' is not loaded"),
        ("GET", "/v1/banks/nope", None, "bank 'nope' not found"),
        ("DELETE", "/v1/banks/nope", None, "bank 'nope' not found"),
        ("POST", "/v1/banks/nope/samples", {"input": ["a"]}, "bank 'nope' not found"),
        ("POST", "/v1/banks/nope/score", {"input": ["a"]}, "bank 'nope' not found"),
    ],
)
def test_unknown_name_404(service: Service, method: str, path: str, body: dict | None, fragment: str) -> None:
    before = files_under(service.data_dir)
    response = service.client.request(method, path, json=body)
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found"
    assert fragment in error_of(response)["message"]
    assert files_under(service.data_dir) == before


def test_unknown_model_upload_404(service: Service) -> None:
    files = [("files", ("a.png", encode(noise(8), "PNG"), "image/png"))]
    response = service.client.post("/v1/embeddings/upload", files=files, data={"model": "nope"})
    assert response.status_code == 404
    assert "model 'nope' is not loaded" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("raw_path", "status", "fragment"),
    [
        ("/v1/banks/..", 400, "bank name '..' is invalid"),
        ("/v1/banks/%2E%2E", 400, "bank name '..' is invalid"),
        ("/v1/banks/.", 400, "bank name '.' is invalid"),
        ("/v1/banks/..%2Fx", 404, "no route PUT /v1/banks/../x"),
        ("/v1/banks/..%2F..%2Fescape", 404, "no route PUT"),
        ("/v1/banks/%2Fetc", 404, "no route PUT"),
        ("/v1/banks/", 404, "no route PUT /v1/banks/"),
        ("/v1/banks/" + "a" * 65, 400, "is invalid: use 1-64 letters"),
        ("/v1/banks/a%00b", 400, "bank name 'a\\x00b' is invalid"),
        ("/v1/banks/a%20b", 400, "bank name 'a b' is invalid"),
        ("/v1/banks/%C3%A9", 400, "bank name 'é' is invalid"),
        ("/v1/banks/~create~x", 400, "bank name '~create~x' is invalid"),
    ],
)
def test_invalid_bank_name(service: Service, raw_path: str, status: int, fragment: str) -> None:
    """Send the path unnormalised over a socket, as a hostile client would, and check nothing is written."""
    before = files_under(service.data_dir.parent)
    body = json.dumps({"model": IMAGE_MODEL}).encode()
    head = request_head("PUT", raw_path, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    got, _, answer = exchange(str(service.client.base_url), head, [body])
    assert got == status
    assert fragment in json.loads(answer)["error"]["message"]
    assert files_under(service.data_dir.parent) == before


def test_sixty_four_character_name_accepted(service: Service) -> None:
    response = service.client.put("/v1/banks/" + "b" * 64, json={"model": IMAGE_MODEL})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"model": TEXT_MODEL}, "model is 'tiny-image', requested 'tiny-text'"),
        ({"model": IMAGE_MODEL, "k": 3}, "k is 2, requested 3"),
        ({"model": IMAGE_MODEL, "k": 2, "metric": "l2"}, "metric is 'cosine', requested 'l2'"),
        ({"model": IMAGE_MODEL, "k": 2, "threshold_percentile": 90}, "threshold_percentile is 95.0, requested 90.0"),
    ],
)
def test_conflicting_bank_settings_409(service: Service, bank: str, settings: dict, fragment: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = service.client.put(f"/v1/banks/{bank}", json=settings)
    assert response.status_code == 409
    assert error_of(response)["type"] == "conflict"
    assert fragment in error_of(response)["message"]
    assert bank_state(service.client, service.data_dir, bank) == before


def test_same_bank_settings_200(service: Service, bank: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = service.client.put(f"/v1/banks/{bank}", json={"model": IMAGE_MODEL, "k": 2})
    assert response.status_code == 200
    assert bank_state(service.client, service.data_dir, bank) == before


# --- media types and multipart ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/similarity"),
        ("PUT", f"/v1/banks/{BANK}"),
        ("POST", f"/v1/banks/{BANK}/samples"),
        ("POST", f"/v1/banks/{BANK}/score"),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_json_route_wrong_content_type_415(
    service: Service, bank: str, method: str, path: str, content_type: str | None
) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    headers = {"content-type": content_type} if content_type else {}
    response = service.client.request(method, path, content=b'{"input": ["a"]}', headers=headers)
    assert response.status_code == 415
    assert error_of(response)["message"].startswith("Content-Type must be application/json")
    assert bank_state(service.client, service.data_dir, bank) == before


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_upload_wrong_content_type_415(service: Service, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = service.client.post("/v1/embeddings/upload", content=b'{"input": ["a"]}', headers=headers)
    assert response.status_code == 415
    assert error_of(response)["message"].startswith("Content-Type must be multipart/form-data")


PNG = encode(noise(8), "PNG")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=b0undary", b"\x00\x01\x02" * 50),
        ("multipart/form-data; boundary=b0undary", b'--other\r\nContent-Disposition: form-data; name="files"\r\n\r\nx\r\n--other--\r\n'),
        ("multipart/form-data; boundary=b0undary", b"--b0undary\r\nContent-Disposition form-data\r\n\r\n" + PNG + b"\r\n--b0undary--\r\n"),
        ("multipart/form-data; boundary=b0undary", b"--b0undary\r\nContent-Type: image/png\r\n\r\n" + PNG + b"\r\n--b0undary--\r\n"),
        ("multipart/form-data", b"--b0undary\r\n\r\n"),
    ],
    ids=["garbage", "other-boundary", "broken-header", "no-disposition", "no-boundary"],
)
def test_malformed_multipart_400(service: Service, content_type: str, body: bytes) -> None:
    response = service.client.post("/v1/embeddings/upload", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_input"


# NOTE: Starlette 1.10 leaves the unfinished part's SpooledTemporaryFile for the garbage
# collector to close when a multipart body ends without its closing boundary. It is
# freed with the request, but its ResourceWarning would fail this in-process test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_multipart_names_files(service: Service) -> None:
    """A body cut before its first part ends contains no complete file, and the error names the missing field."""
    body = b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + PNG
    response = service.client.post(
        "/v1/embeddings/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status_code == 422
    assert error_of(response)["message"] == "files: field required"


# --- API key ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = make_settings(models_dir_all, tmp_path_factory.mktemp("guarded-data"), api_key=API_KEY)
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        yield client


GUARDED_ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"model": TEXT_MODEL, "input": ["a"]}),
    ("POST", "/v1/similarity", {"queries": ["a"], "candidates": ["b"]}),
    ("GET", "/v1/banks", None),
    ("PUT", "/v1/banks/guarded", {"model": IMAGE_MODEL}),
    ("GET", "/v1/banks/guarded", None),
    ("POST", "/v1/banks/guarded/samples", {"input": vectors(1, 16)}),
    ("POST", "/v1/banks/guarded/score", {"input": vectors(1, 16)}),
    ("DELETE", "/v1/banks/guarded", None),
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED_ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Basic {API_KEY}", f"Bearer {API_KEY[:-1]}", f"Bearer {API_KEY}x", "Bearer \u00e9t\u00e9"],
    ids=["missing", "empty", "no-token", "basic", "short", "long", "non-ascii"],
)
def test_wrong_key_401(guarded: httpx.Client, method: str, path: str, body: dict | None, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization.encode("utf-8")}
    response = guarded.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_of(response)["type"] == "unauthorized"
    assert guarded.get("/v1/banks", headers={"authorization": f"Bearer {API_KEY}"}).json()["data"] == []


def test_upload_wrong_key_401(guarded: httpx.Client) -> None:
    files = [("files", ("a.png", PNG, "image/png"))]
    response = guarded.post("/v1/embeddings/upload", files=files, headers={"authorization": "Bearer wrong"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_public_with_key(guarded: httpx.Client, path: str) -> None:
    assert guarded.get(path).status_code == 200


def test_right_key_accepted(guarded: httpx.Client) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    response = guarded.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": [{"image": b64(PNG)}]}, headers=headers)
    assert response.status_code == 200
