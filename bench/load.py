"""A bounded, closed-loop HTTP load generator.

``concurrency`` workers each keep one HTTP/1.1 connection (or share an httpx pool).
Each sends a request, waits for the whole response, and sends the next, until
``max_requests`` are issued or ``max_seconds`` have passed. Requests already in flight
then finish, each within ``timeout_s``. The
request bodies are encoded once in advance, and responses are only counted by status,
except the first successful one, which is checked. That keeps the generator's own CPU
use low, which matters because it shares the cores with the server it loads.

Only 127.0.0.1 is accepted as the target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.http1 import KeepAliveConnection, ResponseError

logger = logging.getLogger("bench.load")

JSON_HEADERS = {"content-type": "application/json"}
LOOPBACK = "127.0.0.1"
CLIENTS = ("raw", "httpx")

Sender = Callable[[int, str, bytes], Awaitable[tuple[int, bytes]]]


@dataclass
class LevelStats:
    """Measurements of one concurrency level; latencies are those of successful requests, in ms."""

    concurrency: int
    requests: int
    succeeded: int
    items: int
    elapsed_s: float
    latencies_ms: list[float]
    errors: dict[str, int]
    client_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Return the level as a JSON-ready row: rates, latency percentiles and errors by status."""
        latencies = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_per_s": round(self.succeeded / self.elapsed_s, 1) if self.elapsed_s > 0 else None,
            "embeddings_per_s": round(self.items / self.elapsed_s, 1) if self.elapsed_s > 0 else None,
            "latency_ms": {
                name: _rounded(float(np.percentile(latencies, q))) for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
            }
            | {"mean": _rounded(float(latencies.mean())), "max": _rounded(float(latencies.max()))},
            "errors": dict(self.errors),
            "client_cpu_cores": round(self.client_cpu_s / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            **self.extra,
        }


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 3)


def check_loopback(base_url: str) -> None:
    """Raise ValueError unless ``base_url`` is http://127.0.0.1:PORT."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname != LOOPBACK:
        raise ValueError(f"the load generator only targets http://{LOOPBACK}, got {base_url!r}")


async def run_level(
    base_url: str,
    path: str,
    bodies: list[bytes],
    items_per_request: int,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 30.0,
    check_response: Callable[[dict[str, Any]], None] | None = None,
    client: str = "raw",
) -> LevelStats:
    """POST ``bodies`` (cycled) to ``path`` from ``concurrency`` workers; return what was measured.

    ``check_response`` receives the first successful response's JSON and raises when it is
    wrong. Errors are counted by HTTP status, or by exception name when no response came.
    ``client`` is ``raw`` (one kept-alive connection per worker, see bench.http1) or
    ``httpx`` (one shared httpx.AsyncClient pool, which costs the generator far more CPU).
    """
    check_loopback(base_url)
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError(f"concurrency, max_requests and max_seconds must be positive, got {concurrency}, {max_requests}, {max_seconds}")
    if not bodies:
        raise ValueError("run_level needs at least one request body")
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    checked = check_response is None
    send, close = _sender(client, base_url, concurrency, timeout_s)

    async def worker(number: int, deadline: float) -> None:
        nonlocal issued, checked
        while issued < max_requests and time.perf_counter() < deadline:
            body = bodies[issued % len(bodies)]
            issued += 1
            started = time.perf_counter()
            try:
                status, content = await send(number, path, body)
            except (httpx.HTTPError, ResponseError, asyncio.TimeoutError) as error:
                errors[type(error).__name__] += 1
                continue
            if status != 200:
                errors[str(status)] += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            if not checked:
                checked = True
                check_response(json.loads(content))  # type: ignore[misc]

    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + max_seconds
    workers = [asyncio.create_task(worker(number, deadline)) for number in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*workers), max_seconds + timeout_s + 5)
    finally:
        for task in workers:
            task.cancel()
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
        await close()

    succeeded = len(latencies)
    return LevelStats(
        concurrency=concurrency,
        requests=issued,
        succeeded=succeeded,
        items=succeeded * items_per_request,
        elapsed_s=elapsed,
        latencies_ms=latencies,
        errors=dict(errors),
        client_cpu_s=client_cpu,
    )


def _sender(client: str, base_url: str, concurrency: int, timeout_s: float) -> tuple[Sender, Callable[[], Awaitable[None]]]:
    """Return ``send(worker, path, body) -> (status, content)`` for ``client`` and a function that closes it."""
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        pool = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s, trust_env=False)

        async def send_httpx(worker: int, path: str, body: bytes) -> tuple[int, bytes]:
            response = await pool.post(path, content=body, headers=JSON_HEADERS)
            return response.status_code, response.content

        return send_httpx, pool.aclose

    parts = urlsplit(base_url)
    connections = [KeepAliveConnection(LOOPBACK, parts.port or 80) for _ in range(concurrency)]

    async def send_raw(worker: int, path: str, body: bytes) -> tuple[int, bytes]:
        return await asyncio.wait_for(connections[worker].post(path, body), timeout_s)

    async def close_all() -> None:
        for connection in connections:
            await connection.close()

    return send_raw, close_all
