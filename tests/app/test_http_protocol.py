"""The httptools protocol with a bounded request head, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from app.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol, http_protocol
from app.settings import Settings
from tests.app.helpers import free_port, live_server, serve_in_thread


@pytest.fixture(scope="module")
def base_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Serve an empty models folder once for the module and yield (host, port)."""
    root = tmp_path_factory.mktemp("protocol")
    (root / "models").mkdir()
    settings = Settings(models_dir=root / "models", data_dir=root / "var")
    with live_server(settings) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        yield host, int(port)


def exchange(address: tuple[str, int], payload: bytes, piece: int = 1 << 16, allow_reset: bool = False) -> bytes:
    """Send ``payload`` in pieces of ``piece`` bytes and return all the server writes until it closes.

    A reset while reading fails the call unless ``allow_reset``, because a client that
    gets one may never see the response.
    """
    with socket.create_connection(address, timeout=10) as connection:
        try:
            for start in range(0, len(payload), piece):
                connection.sendall(payload[start : start + piece])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after rejecting the head
        received = b""
        try:
            while chunk := connection.recv(1 << 16):
                received += chunk
        except ConnectionResetError:
            if not allow_reset:
                raise
    return received


def get(path: str = "/healthz", headers: bytes = b"", close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test\r\n" + headers + connection + b"\r\n"


def statuses(response: bytes) -> list[int]:
    """Return the status of each response in ``response``, whose bodies never contain a status line."""
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


def test_oversized_head_after_good_request(base_address: tuple[str, int]) -> None:
    payload = get() + get(headers=b"x-big: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n")
    response = exchange(base_address, payload, piece=4096)
    assert statuses(response) == [200, 431]


def chunked_post(head_padding: int, trailer_bytes: int) -> bytes:
    """Return a chunked POST with one body chunk and ``trailer_bytes`` of trailers in lines of 100 bytes."""
    body = json.dumps({"input": ["word"]}).encode()
    head = b"POST /v1/embeddings HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
    head += b"x-pad: " + b"p" * head_padding + b"\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    trailers = b"".join(b"x-t%05d: %s\r\n" % (index, b"t" * 88) for index in range(trailer_bytes // 100))
    return head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailers + b"\r\n"


def test_trailers_count_apart_from_head(base_address: tuple[str, int]) -> None:
    response = exchange(base_address, chunked_post(40_000, 30_000), piece=4096)
    assert statuses(response) == [400]  # no model is loaded: the request reached the route


def test_oversized_trailers_close_connection(base_address: tuple[str, int]) -> None:
    response = exchange(base_address, chunked_post(100, 2 * MAX_HEAD_BYTES), piece=4096, allow_reset=True)
    assert statuses(response) == []


def test_head_padded_with_spaces_gets_431(base_address: tuple[str, int]) -> None:
    # The parser drops spaces before a header value, so they never reach its callbacks.
    padded = get(headers=b"x-p:" + b" " * 100_000 + b"v\r\n", close=True)
    assert statuses(exchange(base_address, padded, piece=1 << 20)) == [431]


class CountingProtocol(BoundedHttpToolsProtocol):
    """The bounded protocol, noting how many bytes it took in before rejecting a head."""

    bytes_before_rejection: list[int] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_read = 0
        self.noted = False

    def data_received(self, data: bytes) -> None:
        if self.stopped_parser is None:
            self.bytes_read += len(data)
        super().data_received(data)
        if self.stopped_parser is not None and not self.noted:
            self.noted = True
            CountingProtocol.bytes_before_rejection.append(self.bytes_read)


async def slow_app(scope: dict, receive: Callable, send: Callable) -> None:
    """Respond to every HTTP request with 200 after 0.3 s."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def slow_server(protocol: type[asyncio.Protocol]) -> Iterator[tuple[str, int]]:
    """Serve ``slow_app`` with ``protocol`` on 127.0.0.1 in a background thread and yield (host, port)."""
    port = free_port()
    config = uvicorn.Config(slow_app, host="127.0.0.1", port=port, http=protocol, log_config=None)
    with serve_in_thread(config):
        yield "127.0.0.1", port


def test_431_waits_for_pending_response() -> None:
    with slow_server(BoundedHttpToolsProtocol) as address:
        response = exchange(address, get() + get(headers=b"x-big: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n"))
    assert statuses(response) == [200, 431]
    assert response.index(b"ok") < response.index(b"431")


def test_pipelined_requests_served_before_431() -> None:
    many_headers = b"".join(b"x-h%d: %s\r\n" % (index, b"c" * 90) for index in range(700))
    with slow_server(BoundedHttpToolsProtocol) as address:
        response = exchange(address, get() + get() + get(headers=many_headers), piece=1 << 20)
    assert statuses(response) == [200, 200, 431]


def test_431_logs_no_invalid_request_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), slow_server(BoundedHttpToolsProtocol) as address:
        exchange(address, get(headers=b"x-big: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n"))
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "Invalid HTTP request" in message]
    assert len([message for message in messages if message.startswith("rejected request from")]) == 1


def test_pending_response_that_closes_drops_431() -> None:
    with slow_server(BoundedHttpToolsProtocol) as address:
        response = exchange(address, get(close=True) + get(headers=b"x-big: " + b"a" * (1 << 20) + b"\r\n"))
    assert statuses(response) == [200]


def test_endless_trailer_line_closes_connection() -> None:
    CountingProtocol.bytes_before_rejection.clear()
    head = b"POST /slow HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: "
    with slow_server(CountingProtocol) as address:
        response = exchange(address, head + b"t" * (8 << 20), allow_reset=True)
    assert statuses(response) == []
    assert len(CountingProtocol.bytes_before_rejection) == 1
    assert CountingProtocol.bytes_before_rejection[0] <= MAX_HEAD_BYTES + 256 * 1024  # reads are at most 256 KiB


def test_head_rejected_within_one_read() -> None:
    CountingProtocol.bytes_before_rejection.clear()
    with slow_server(CountingProtocol) as address:
        response = exchange(address, get(headers=b"x-big: " + b"a" * (4 << 20) + b"\r\n"))
    assert statuses(response) == [431]
    assert len(CountingProtocol.bytes_before_rejection) == 1
    assert CountingProtocol.bytes_before_rejection[0] <= MAX_HEAD_BYTES + 256 * 1024  # reads are at most 256 KiB


def test_large_body_not_counted_as_head(base_address: tuple[str, int]) -> None:
    body = json.dumps({"input": ["word " * 100_000]}).encode()
    head = b"POST /v1/embeddings HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    response = exchange(base_address, head + body)
    assert statuses(response) == [400]
    assert b"no text model is loaded" in response  # the request got past its head to the route


def test_server_serves_after_rejecting_heads(base_address: tuple[str, int]) -> None:
    exchange(base_address, get(headers=b"x-big: " + b"a" * (1 << 20) + b"\r\n"))
    assert statuses(exchange(base_address, get(close=True))) == [200]
