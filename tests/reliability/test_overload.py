"""Overload and disconnects over HTTP: bursts past the queue, and clients that go away."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.app.helpers import live_server, make_settings
from tests.reliability.helpers import IMAGE_MODEL, b64, encode, metric_value, noise

pytestmark = pytest.mark.anyio

QUEUE_ITEMS = 8
ITEMS_PER_REQUEST = 4
BURST_REQUESTS = 120
BURSTS = 3
IMAGES = [{"image": b64(encode(noise(16, "L", seed), "PNG"))} for seed in range(ITEMS_PER_REQUEST)]


@pytest.fixture(scope="module")
def tight_url(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a service whose queue holds only two requests of four items."""
    settings = make_settings(
        models_dir_all,
        tmp_path_factory.mktemp("tight-data"),
        max_queue_items=QUEUE_ITEMS,
        max_items_per_request=ITEMS_PER_REQUEST,
        max_batch_size=ITEMS_PER_REQUEST,
        max_wait_ms=20.0,
        request_timeout_s=20.0,
    )
    with live_server(settings) as url:
        yield url


async def burst(url: str, requests: int) -> list[httpx.Response]:
    """Send ``requests`` embedding requests at once, each on its own connection."""
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        body = {"model": IMAGE_MODEL, "input": IMAGES}
        return await asyncio.gather(*(client.post("/v1/embeddings", json=body) for _ in range(requests)))


async def test_burst_gets_200_or_503(tight_url: str) -> None:
    statuses: list[int] = []
    retry_after: set[str | None] = set()
    started = time.monotonic()
    for _ in range(BURSTS):
        responses = await burst(tight_url, BURST_REQUESTS)
        statuses += [response.status_code for response in responses]
        retry_after |= {response.headers.get("retry-after") for response in responses if response.status_code == 503}
    elapsed = time.monotonic() - started

    with httpx.Client(base_url=tight_url, timeout=10.0) as client:
        after = client.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": IMAGES})
        ready = client.get("/readyz")
        depth = metric_value(client, "embed_queue_depth", model=IMAGE_MODEL)
        rejected = metric_value(client, "embed_rejected_items_total", model=IMAGE_MODEL)

    assert set(statuses) <= {200, 503}
    assert statuses.count(200) > 0
    assert statuses.count(503) > 0
    assert retry_after == {"1"}
    assert rejected == statuses.count(503) * ITEMS_PER_REQUEST
    assert elapsed < 60.0
    assert after.status_code == 200
    assert ready.status_code == 200
    assert depth == 0


async def test_disconnected_clients_leave_no_work(models_dir_all: Path, tmp_path: Path) -> None:
    """Clients that give up while their items wait in the queue leave nothing computed or queued."""
    settings = make_settings(models_dir_all, tmp_path / "var", max_wait_ms=1000.0, max_batch_size=64)
    clients = 10
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=10.0) as observer:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            body = {"model": IMAGE_MODEL, "input": IMAGES[:2]}
            pending = [asyncio.ensure_future(client.post("/v1/embeddings", json=body)) for _ in range(clients)]
            await wait_for(lambda: metric_value(observer, "embed_queue_depth", model=IMAGE_MODEL) == 2 * clients)
            for request in pending:
                request.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        await wait_for(lambda: metric_value(observer, "embed_skipped_items_total", model=IMAGE_MODEL) == 2 * clients)
        depth = metric_value(observer, "embed_queue_depth", model=IMAGE_MODEL)
        batches = metric_value(observer, "embed_batch_size_count", model=IMAGE_MODEL)
        after = observer.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": IMAGES[:1]})

    assert depth == 0
    assert batches == 0
    assert after.status_code == 200


def test_disconnect_mid_body_leaves_no_work(tight_url: str) -> None:
    """Clients that close the connection halfway through sending their body change nothing."""
    address = urlsplit(tight_url)
    body = ('{"model": "tiny-image", "input": [{"image": "' + IMAGES[0]["image"] + '"}]}').encode()
    for _ in range(20):
        with socket.create_connection((address.hostname, address.port), timeout=5.0) as connection:
            head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            connection.sendall(head.encode() + body[: len(body) // 2])

    with httpx.Client(base_url=tight_url, timeout=10.0) as client:
        batches_before = metric_value(client, "embed_batch_size_count", model=IMAGE_MODEL)
        after = client.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": IMAGES[:1]})
        depth = metric_value(client, "embed_queue_depth", model=IMAGE_MODEL)
        batches_after = metric_value(client, "embed_batch_size_count", model=IMAGE_MODEL)

    assert after.status_code == 200
    assert depth == 0
    assert batches_after == batches_before + 1


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
