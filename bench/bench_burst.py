"""Bursts far past the batching queue against a real ``ssl-serve`` process.

Each burst opens R connections at once, each sending one request of I images, to a
service whose queue holds only a few requests. Every response must be 200, or 503 with
a Retry-After header. No other 5xx and no hang (a client timeout per request) may occur.
After each burst the queue must be empty and a normal request must get 200 again.

    python -m bench.bench_burst                         # 10 bursts of 500 requests
    python -m bench.bench_burst --bursts 3 --requests 200

The service runs as a child process on 127.0.0.1 with a tiny image model made for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_soak import png_base64
from bench.common import write_result

logger = logging.getLogger("bench.burst")

MODEL = "burst-image"


@dataclass
class BurstReport:
    """Per-burst outcomes of a burst run."""

    bursts: list[dict[str, object]] = field(default_factory=list)

    @property
    def survived(self) -> int:
        """Bursts with only 200 and 503-with-Retry-After responses, after which the service recovered."""
        return sum(1 for burst in self.bursts if burst["survived"])

    def as_dict(self) -> dict[str, object]:
        totals: Counter = Counter()
        for burst in self.bursts:
            totals.update({int(status): number for status, number in burst["statuses"].items()})
        return {
            "bursts": len(self.bursts),
            "bursts_survived": self.survived,
            "requests": sum(totals.values()),
            "statuses": {str(status): number for status, number in sorted(totals.items())},
            "server_errors_other_than_503": sum(number for status, number in totals.items() if status >= 500 and status != 503),
            "hangs": sum(int(burst["hangs"]) for burst in self.bursts),
            "per_burst": self.bursts,
        }


async def one_burst(base_url: str, requests: int, images: list[dict[str, str]], timeout_s: float) -> dict[str, object]:
    """Send ``requests`` requests at once and return their statuses, hangs and slowest latency."""
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
    body = {"model": MODEL, "input": images}
    statuses: Counter = Counter()
    missing_retry_after = 0
    hangs = 0
    latencies: list[float] = []

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def send() -> None:
            nonlocal missing_retry_after, hangs
            started = time.perf_counter()
            try:
                response = await client.post("/v1/embeddings", json=body)
            except httpx.TimeoutException:
                hangs += 1
                return
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            if response.status_code == 503 and "retry-after" not in response.headers:
                missing_retry_after += 1

        await asyncio.gather(*(send() for _ in range(requests)))

    return {
        "statuses": {str(status): number for status, number in sorted(statuses.items())},
        "missing_retry_after": missing_retry_after,
        "hangs": hangs,
        "slowest_s": round(max(latencies, default=0.0), 3),
        "p50_s": round(float(np.median(latencies)) if latencies else 0.0, 3),
    }


def recovered(base_url: str, images: list[dict[str, str]]) -> bool:
    """Return whether the queue is empty and a normal request gets 200 again."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        if client.post("/v1/embeddings", json={"model": MODEL, "input": images}).status_code != 200:
            return False
        for family in text_string_to_metric_families(client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == "embed_queue_depth" and sample.labels.get("model") == MODEL and sample.value != 0:
                    return False
        return client.get("/readyz").status_code == 200


def run_bursts(base_url: str, bursts: int, requests: int, items: int, timeout_s: float, pause_s: float) -> BurstReport:
    """Run ``bursts`` bursts of ``requests`` requests with ``items`` images each, checking recovery after each."""
    images = [{"image": png_base64(seed)} for seed in range(items)]
    report = BurstReport()
    for number in range(bursts):
        outcome = asyncio.run(one_burst(base_url, requests, images, timeout_s))
        statuses = {int(status) for status in outcome["statuses"]}
        outcome["recovered"] = recovered(base_url, images)
        outcome["survived"] = (
            statuses <= {200, 503} and outcome["hangs"] == 0 and outcome["missing_retry_after"] == 0 and outcome["recovered"]
        )
        report.bursts.append(outcome)
        logger.info("burst %d/%d: %s", number + 1, bursts, outcome)
        time.sleep(pause_s)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=10, help="number of bursts")
    parser.add_argument("--requests", type=int, default=500, help="concurrent requests per burst")
    parser.add_argument("--items", type=int, default=4, help="images per request")
    parser.add_argument("--queue-items", type=int, default=16, help="the service's max_queue_items")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, in seconds (a hang)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the results

    from tests.app.helpers import export_image_model
    from tests.reliability.server import start_server

    flags = [
        "--max-queue-items", str(args.queue_items),
        "--max-items-per-request", str(args.items),
        "--max-batch-size", str(args.items),
        "--max-wait-ms", "5",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as folder:
        root = Path(folder)
        export_image_model(root / "models", MODEL, channels=3)
        server = start_server(root / "models", root / "var", root / "server.log", *flags)
        try:
            report = run_bursts(server.url, args.bursts, args.requests, args.items, args.timeout, pause_s=0.5)
            alive = server.process.poll() is None
        finally:
            server.stop()

    result = {
        "requests_per_burst": args.requests,
        "items_per_request": args.items,
        "queue_items": args.queue_items,
        "server_alive_after": alive,
        **report.as_dict(),
    }
    path = write_result("burst", result)
    print(json.dumps({key: value for key, value in result.items() if key != "per_burst"}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
