"""The benchmarks' load generator: both clients against a real server, and the raw client's HTTP reading."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.settings import Settings
from bench.http1 import KeepAliveConnection, ResponseError
from bench.load import run_level
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import EMBEDDING_DIM, live_server, png_base64


def embedding_bodies(count: int) -> list[bytes]:
    return [json.dumps({"model": IMAGE_MODEL, "input": [{"image": png_base64(seed)}]}).encode() for seed in range(count)]


@pytest.mark.parametrize("client", ["raw", "httpx"])
def test_counts_successes_and_errors(image_model_settings: Settings, client: str) -> None:
    checked = []

    def check(body: dict) -> None:
        checked.append(len(body["data"][0]["embedding"]))

    good = embedding_bodies(4)
    bad = [json.dumps({"model": IMAGE_MODEL, "input": [{"image": "bm90IGFuIGltYWdl"}]}).encode()]
    with live_server(image_model_settings) as base_url:
        ok = asyncio.run(run_level(base_url, "/v1/embeddings", good, 1, 4, max_requests=24, max_seconds=20, check_response=check, client=client))
        failing = asyncio.run(run_level(base_url, "/v1/embeddings", bad, 1, 2, max_requests=6, max_seconds=20, client=client))
    assert (ok.requests, ok.succeeded, ok.errors) == (24, 24, {})
    assert checked == [EMBEDDING_DIM]
    assert (failing.succeeded, failing.errors) == (0, {"400": 6})


def test_unknown_client_rejected() -> None:
    with pytest.raises(ValueError, match="client"):
        asyncio.run(run_level("http://127.0.0.1:9", "/", [b"{}"], 1, 1, max_requests=1, max_seconds=1, client="curl"))


async def serve_canned(responses: list[bytes]) -> tuple[asyncio.AbstractServer, int, list[int]]:
    """Start a loopback server that replies to each request with the next canned response; count connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
            await reader.readexactly(length)
            response = responses.pop(0)
            writer.write(response)
            await writer.drain()
            if b"Connection: close" in response:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def test_reads_chunked_and_reconnects() -> None:
    async def scenario() -> tuple[list[tuple[int, bytes]], int]:
        server, port, connections = await serve_canned([
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nback",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Check: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
        ])
        connection = KeepAliveConnection("127.0.0.1", port)
        try:
            results = [await connection.post("/x", b"{}") for _ in range(7)]
        finally:
            await connection.close()
            server.close()
        return results, len(connections)

    results, connections = asyncio.run(scenario())
    assert results == [
        (200, b"first"), (201, b"abcdefg"), (503, b"busy"), (200, b"back"), (204, b""), (200, b"hi"), (200, b"last")
    ]
    assert connections == 2  # the server closed after the third response


def test_refused_connection_raises() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens on the port any more
        await KeepAliveConnection("127.0.0.1", port).post("/x", b"{}")

    with pytest.raises(ResponseError):
        asyncio.run(scenario())


def test_timeout_drops_the_connection() -> None:
    async def scenario() -> tuple[tuple[int, bytes], int]:
        connections: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            number = len(connections)
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
                if number == 1:
                    await asyncio.sleep(0.3)  # the first connection replies too late
                reply = b"stale" if number == 1 else b"fresh"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + reply)
                await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        connection = KeepAliveConnection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(connection.post("/slow", b"{}"), 0.1)
            await asyncio.sleep(0.4)  # the stale reply has arrived on the old socket by now
            return await asyncio.wait_for(connection.post("/x", b"{}"), 5.0), len(connections)
        finally:
            await connection.close()
            server.close()

    result, connections = asyncio.run(scenario())
    assert result == (200, b"fresh")
    assert connections == 2


def test_garbage_response_raises() -> None:
    async def scenario() -> None:
        server, port, _ = await serve_canned([b"SMTP ready\r\n\r\n"])
        connection = KeepAliveConnection("127.0.0.1", port)
        try:
            await connection.post("/x", b"{}")
        finally:
            await connection.close()
            server.close()

    with pytest.raises(ResponseError, match="status line"):
        asyncio.run(scenario())
