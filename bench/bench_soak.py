"""Soak a real ``ssl-serve`` process with a long mixed workload and measure its memory growth.

Sends N requests (default 20,000) from a few concurrent clients to a child process on
127.0.0.1: image and text embeddings, uploads, similarity, bank scores and a share of
bad requests (a corrupt image, an unknown model). Stored state stays the same size, so
resident memory (RSS) should level off after warm-up. The run reports the RSS growth from
the end of warm-up to the end, with the status counts and latency percentiles.

    python -m bench.bench_soak                          # 20,000 requests, at most 30 minutes
    python -m bench.bench_soak --requests 2000 --max-seconds 120

The service serves the artifacts of ``--models-dir`` (default: tiny models made for
the run, one of each modality).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.common import write_result

logger = logging.getLogger("bench.soak")

BANK = "soak"


@dataclass
class SoakReport:
    """Statuses, latencies and resident memory of a soak run."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    rss_start_bytes: int = 0
    rss_after_warmup_bytes: int = 0
    rss_end_bytes: int = 0
    elapsed_s: float = 0.0
    transport_errors: int = 0
    stopped_early: bool = False

    @property
    def server_errors(self) -> int:
        return sum(number for status, number in self.statuses.items() if status >= 500)

    @property
    def growth_percent(self) -> float:
        """RSS growth from the end of warm-up to the end of the run, in percent."""
        return 100.0 * (self.rss_end_bytes - self.rss_after_warmup_bytes) / max(self.rss_after_warmup_bytes, 1)

    def as_dict(self) -> dict[str, object]:
        latencies = np.array(self.latencies_s) * 1000 if self.latencies_s else np.zeros(1)
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "transport_errors": self.transport_errors,
            "statuses": {str(status): number for status, number in sorted(self.statuses.items())},
            "elapsed_s": round(self.elapsed_s, 1),
            "requests_per_s": round(self.requests / max(self.elapsed_s, 1e-9), 1),
            "latency_ms": {q: round(float(np.percentile(latencies, int(q[1:]))), 2) for q in ("p50", "p90", "p99")},
            "rss_mib": {
                "start": round(self.rss_start_bytes / 2**20, 1),
                "after_warmup": round(self.rss_after_warmup_bytes / 2**20, 1),
                "end": round(self.rss_end_bytes / 2**20, 1),
            },
            "rss_growth_percent": round(self.growth_percent, 2),
            "stopped_early": self.stopped_early,
        }


def png_base64(seed: int, size: int = 16) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Workload:
    """The request mix: call ``request(n)`` for the n-th request's method, path and keyword arguments.

    Images and texts vary with n, so that the service never serves the same request
    from a cache, and one request in twenty is a bad one that must get a 4xx.
    """

    def __init__(self, image_model: str | None, text_model: str | None) -> None:
        if image_model is None and text_model is None:
            raise ValueError("the soak needs at least one image or text model")
        self.image_model = image_model
        self.text_model = text_model
        self.images = [png_base64(seed) for seed in range(64)]
        self.raw_images = [base64.b64decode(image) for image in self.images[:8]]

    def request(self, n: int) -> tuple[str, str, dict]:
        kind = n % 20
        if kind == 19:
            return "POST", "/v1/embeddings", {"json": {"model": "no-such-model", "input": ["x"]}}
        if kind == 18 and self.image_model:
            return "POST", "/v1/embeddings", {"json": {"model": self.image_model, "input": [{"image": "aGVsbG8="}]}}
        if self.text_model and (self.image_model is None or kind % 3 == 0):
            texts = [f"sample text {n} number {n % 97} of the soak run"] * (1 + n % 4)
            return "POST", "/v1/embeddings", {"json": {"model": self.text_model, "input": texts}}
        image = self.images[n % len(self.images)]
        if kind % 5 == 1:
            files = [("files", (f"{n}.png", self.raw_images[n % len(self.raw_images)], "image/png"))]
            return "POST", "/v1/embeddings/upload", {"files": files, "data": {"model": self.image_model}}
        if kind % 5 == 2:
            body = {"model": self.image_model, "queries": [{"image": image}], "candidates": [{"image": i} for i in self.images[:3]]}
            return "POST", "/v1/similarity", {"json": body}
        if kind % 5 == 3:
            return "POST", f"/v1/banks/{BANK}/score", {"json": {"input": [{"image": image}], "return_neighbors": True}}
        return "POST", "/v1/embeddings", {"json": {"model": self.image_model, "input": [{"image": image}] * (1 + n % 3)}}

    def prepare(self, client: httpx.Client) -> None:
        """Create the bank the workload scores against, with eight image samples."""
        if self.image_model is None:
            return
        client.put(f"/v1/banks/{BANK}", json={"model": self.image_model}).raise_for_status()
        samples = [{"image": image} for image in self.images[:8]]
        client.post(f"/v1/banks/{BANK}/samples", json={"input": samples}).raise_for_status()


async def _send_all(base_url: str, workload: Workload, first: int, last: int, concurrency: int, deadline: float, report: SoakReport) -> None:
    """Send requests ``first`` to ``last - 1`` from ``concurrency`` clients, stopping at ``deadline``."""
    numbers = iter(range(first, last))

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as client:
            for n in numbers:
                if time.monotonic() > deadline:
                    report.stopped_early = True
                    return
                method, path, options = workload.request(n)
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, **options)
                except httpx.TransportError as error:
                    report.transport_errors += 1
                    logger.warning("request %d (%s %s) failed: %s", n, method, path, error)
                    continue
                report.latencies_s.append(time.perf_counter() - started)
                report.statuses[response.status_code] += 1
                report.requests += 1

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))


def discover_models(base_url: str) -> tuple[str | None, str | None]:
    """Return the first image model and the first text model the service lists."""
    cards = httpx.get(f"{base_url}/v1/models", timeout=30.0).json()["data"]
    image = next((card["id"] for card in cards if card["modality"] == "image"), None)
    text = next((card["id"] for card in cards if card["modality"] == "text"), None)
    return image, text


def run_soak(server, requests: int, warmup: int, concurrency: int, max_seconds: float) -> SoakReport:
    """Soak ``server`` (a tests.reliability.server.ServerProcess): ``warmup`` requests, then the rest.

    RSS is read before, after warm-up and at the end. The whole run stops at ``max_seconds``.
    """
    if not 0 <= warmup < requests:
        raise ValueError(f"warmup must be in [0, requests), got {warmup} of {requests}")
    workload = Workload(*discover_models(server.url))
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        workload.prepare(client)

    report = SoakReport(rss_start_bytes=server.rss_bytes())
    started = time.monotonic()
    deadline = started + max_seconds
    asyncio.run(_send_all(server.url, workload, 0, warmup, concurrency, deadline, report))
    report.rss_after_warmup_bytes = server.rss_bytes()
    asyncio.run(_send_all(server.url, workload, warmup, requests, concurrency, deadline, report))
    report.rss_end_bytes = server.rss_bytes()
    report.elapsed_s = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests to send in all")
    parser.add_argument("--warmup", type=int, default=None, help="requests before the memory baseline (default: 10%%)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="wall-clock bound of the run, in seconds")
    parser.add_argument("--models-dir", type=Path, default=None, help="artifacts to serve (default: tiny ones made for the run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the results

    from tests.app.helpers import export_image_model, export_text_model
    from tests.reliability.server import start_server

    warmup = args.warmup if args.warmup is not None else args.requests // 10
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        root = Path(folder)
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = root / "models"
            export_image_model(models_dir, "soak-image", channels=3)
            export_text_model(models_dir, "soak-text")
        server = start_server(models_dir, root / "var", root / "server.log")
        try:
            logger.info("soaking %s with %d requests (%d warm-up, %d clients)", server.url, args.requests, warmup, args.concurrency)
            report = run_soak(server, args.requests, warmup, args.concurrency, args.max_seconds)
        finally:
            server.stop()

    result = {"models_dir": str(args.models_dir or "tiny test models"), "concurrency": args.concurrency, "warmup": warmup, **report.as_dict()}
    path = write_result("soak", result)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
