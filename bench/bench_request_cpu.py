"""Server CPU per request under OpenMP wait policies, beside requests/s, in one run.

The policies are ``OMP_WAIT_POLICY`` unset, PASSIVE or ACTIVE, and GNU OpenMP's spin
count cut to 100,000. For each, the script starts ``ssl-serve`` on 127.0.0.1 with the
shipped models and sends bounded rounds of one-text requests to the default text model
from ``--concurrency`` kept-alive connections. It reads the server's CPU seconds from
``/proc`` before and after each round. Policies alternate round by round, so a change in
the machine's load falls on all of them alike. ``--busy-cores N`` keeps N other processes
spinning meanwhile, as a training job beside the server would.

Sleeping threads must be woken at each parallel region, so the script also times the
image model's two-thread forward pass under each policy. Each policy gets a fresh process,
because OpenMP reads the policy when torch loads. An idle gap precedes each call, as
between a server's batches.

    python -m bench.bench_request_cpu                  # 3 rounds of 2000 requests per policy
    python -m bench.bench_request_cpu --busy-cores 1   # the same beside one busy core
    python -m bench.bench_request_cpu --quick          # 1 round of 100 requests per policy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.artifacts import REPO_ROOT
from bench.common import write_result
from bench.http1 import KeepAliveConnection
from bench.logs import configure_logging
from bench.server import running_server

logger = logging.getLogger("bench.request_cpu")

POLICIES = {
    "unset (default)": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
}
TEXT = "a small library for parsing command line options"
MODEL = "debian-simcse"
# A busy process spins until this many seconds have passed, even if the bench dies first.
BUSY_LIMIT_S = 1800
BUSY_LOOP = f"import time\nend = time.monotonic() + {BUSY_LIMIT_S}\nwhile time.monotonic() < end:\n    pass\n"
FORWARD_IMAGE_MODEL = "glyphs-simclr"
FORWARD_BATCHES = (1, 8, 128)
FORWARD_GAP_S = 0.002
# Runs in a fresh interpreter: argv[1] is the artifact folder, argv[2] the calls per batch size.
FORWARD_SCRIPT = f"""
import json, sys, time, torch
from training.artifact import load_artifact
torch.set_num_threads(2)
encoder = load_artifact(sys.argv[1]).encoder.eval()
result = {{}}
with torch.inference_mode():
    for batch in {FORWARD_BATCHES}:
        images = torch.rand(batch, 1, 32, 32)
        for _ in range(3):
            encoder(images)
        times = []
        for _ in range(int(sys.argv[2])):
            time.sleep({FORWARD_GAP_S})
            started = time.perf_counter()
            encoder(images)
            times.append(time.perf_counter() - started)
        result[batch] = round(sorted(times)[len(times) // 2] * 1000, 2)
print(json.dumps(result))
"""


def forward_p50_ms(args: argparse.Namespace, environment: dict[str, str]) -> dict[str, float]:
    """Return the median forward ms per batch size of the image model under ``environment``."""
    calls = 5 if args.quick else 40
    completed = subprocess.run(
        [sys.executable, "-c", FORWARD_SCRIPT, str(args.models_dir / FORWARD_IMAGE_MODEL), str(calls)],
        env={**os.environ, **environment},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(completed.stdout)


def start_busy_processes(count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` Python processes that each keep one core busy."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


async def send_round(base_url: str, count: int, concurrency: int) -> float:
    """Send ``count`` one-text requests from ``concurrency`` connections; return the seconds it took."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "input": [TEXT]}).encode()

    async def worker(requests: int) -> None:
        connection = KeepAliveConnection(host, int(port))
        try:
            for _ in range(requests):
                status, reply = await connection.post("/v1/embeddings", body)
                if status != 200:
                    raise RuntimeError(f"request failed with status {status}: {reply[:200]!r}")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    return time.perf_counter() - started


def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, list[dict[str, float]]]:
    """Return per policy one row per round: server CPU ms per request and requests/s."""
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in POLICIES}
    for round_number in range(args.rounds):
        for name, environment in POLICIES.items():
            log_path = work_dir / f"server-{round_number}-{len(rows[name])}.log"
            with running_server(args.models_dir, work_dir / "var", log_path, environment) as server:
                asyncio.run(send_round(server.base_url, args.concurrency * 10, args.concurrency))  # warm-up
                before = server.cpu_seconds()
                seconds = asyncio.run(send_round(server.base_url, args.requests, args.concurrency))
                cpu = server.cpu_seconds() - before
            row = {"cpu_ms_per_request": round(cpu / args.requests * 1000, 3), "requests_per_s": round(args.requests / seconds, 1)}
            logger.info("round %d, %s: %s", round_number + 1, name, row)
            rows[name].append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 100 requests per policy")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models", help="folder of model artifacts")
    parser.add_argument("--requests", type=int, help="requests per round (default: 2000, --quick: 100)")
    parser.add_argument("--rounds", type=int, help="rounds per policy (default: 3, --quick: 1)")
    parser.add_argument("--concurrency", type=int, default=8, help="kept-alive connections sending at once")
    parser.add_argument("--busy-cores", type=int, default=0, help="processes that keep a core busy during the measurement")
    args = parser.parse_args()
    args.requests = args.requests or (100 if args.quick else 2000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.requests < args.concurrency or args.rounds < 1 or args.concurrency < 1 or args.busy_cores < 0:
        parser.error("--requests must be at least --concurrency, --rounds and --concurrency positive, --busy-cores not negative")
    args.requests -= args.requests % args.concurrency  # so that every connection sends as many requests
    return args


def main() -> None:
    args = parse_args()
    configure_logging()
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if os.environ.pop(name, None) is not None:
            logger.warning("ignoring %s from the environment: each policy sets its own", name)
    busy = start_busy_processes(args.busy_cores)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-request-cpu-") as temporary:
            rows = measure(args, Path(temporary))
        forward = {name: forward_p50_ms(args, environment) for name, environment in POLICIES.items()}
        logger.info("forward p50 ms by batch size: %s", forward)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    command = "python -m bench.bench_request_cpu " + " ".join(sys.argv[1:])
    result: dict[str, Any] = {
        "command": command.strip(),
        "model": MODEL,
        "concurrency": args.concurrency,
        "busy_cores": args.busy_cores,
        "requests_per_round": args.requests,
        "policies": rows,
        "forward_model": FORWARD_IMAGE_MODEL,
        "forward_p50_ms_by_batch": forward,
    }
    record = write_result("request-cpu", result)
    print(json.dumps({**result, "record": str(record)}, indent=2))


if __name__ == "__main__":
    main()
