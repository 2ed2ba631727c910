"""The httptools protocol with a bounded request head, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn

from app.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol, http_protocol
from app.settings import Settings
from tests.app.helpers import free_port, live_server


@pytest.fixture(scope="module")
def base_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Serve an empty models folder once for the module and yield (host, port)."""
    root = tmp_path_factory.mktemp("protocol")
    (root / "models").mkdir()
    settings = Settings(models_dir=root / "models", data_dir=root / "var")
    with live_server(settings) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        yield host, int(port)


def exchange(address: tuple[str, int], payload: bytes, piece: int = 1 << 16) -> bytes:
    """Send ``payload`` in pieces of ``piece`` bytes and return all the server writes until it closes."""
    with socket.create_connection(address, timeout=10) as connection:
        try:
            for start in range(0, len(payload), piece):
                connection.sendall(payload[start : start + piece])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after rejecting the head
        received = b""
        while chunk := connection.recv(1 << 16):
            received += chunk
    return received


def get(path: str = "/healthz", headers: bytes = b"", close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test\r\n" + headers + connection + b"\r\n"


def statuses(response: bytes) -> list[int]:
    """Return the status of each response in ``response``; the bodies here never contain a status line."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", response)]


def test_auto_and_httptools_pick_bounded_protocol() -> None:
    assert http_protocol("auto") is BoundedHttpToolsProtocol
    assert http_protocol("httptools") is BoundedHttpToolsProtocol


def test_h11_stays_h11() -> None:
    assert http_protocol("h11") == "h11"


def test_one_huge_header_gets_431(base_address: tuple[str, int]) -> None:
    response = exchange(base_address, get(headers=b"x-big: " + b"a" * (1 << 20) + b"\r\n"))
    assert statuses(response) == [431]
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "headers_too_large"
    assert str(MAX_HEAD_BYTES) in body["error"]["message"]


def test_many_headers_sent_slowly_get_431(base_address: tuple[str, int]) -> None:
    headers = b"".join(b"x-h%d: %s\r\n" % (index, b"b" * 100) for index in range(20_000))
    response = exchange(base_address, get(headers=headers), piece=4096)
    assert statuses(response) == [431]


def test_head_under_limit_is_served(base_address: tuple[str, int]) -> None:
    headers = b"x-big: " + b"a" * (MAX_HEAD_BYTES - 1024) + b"\r\n"
    response = exchange(base_address, get(headers=headers, close=True), piece=1000)
    assert statuses(response) == [200]


def test_limit_counts_each_kept_alive_request(base_address: tuple[str, int]) -> None:
    header = b"x-mid: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n"
    requests = [get(headers=header) for _ in range(5)] + [get(close=True)]
    response = exchange(base_address, b"".join(requests), piece=8192)
    assert statuses(response) == [200] * 6


def test_oversized_head_after_good_request_gets_431(base_address: tuple[str, int]) -> None:
    payload = get() + get(headers=b"x-big: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n")
    response = exchange(base_address, payload, piece=4096)
    assert statuses(response) == [200, 431]


async def slow_app(scope: dict, receive: Callable, send: Callable) -> None:
    """Respond to every HTTP request with 200 after 0.3 s."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_431_waits_for_pending_response() -> None:
    port = free_port()
    config = uvicorn.Config(slow_app, host="127.0.0.1", port=port, http=BoundedHttpToolsProtocol, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        payload = get() + get(headers=b"x-big: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n")
        response = exchange(("127.0.0.1", port), payload)
    finally:
        server.should_exit = True
        thread.join(10)
    assert statuses(response) == [200, 431]
    assert response.index(b"ok") < response.index(b"431")


def test_large_body_does_not_count_as_head(base_address: tuple[str, int]) -> None:
    body = json.dumps({"input": ["word " * 100_000]}).encode()
    head = b"POST /v1/embeddings HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    response = exchange(base_address, head + body)
    assert statuses(response) == [400]
    assert b"no text model is loaded" in response  # the request got past its head to the route


def test_server_serves_after_rejecting_heads(base_address: tuple[str, int]) -> None:
    exchange(base_address, get(headers=b"x-big: " + b"a" * (1 << 20) + b"\r\n"))
    assert statuses(exchange(base_address, get(close=True))) == [200]
