"""Fuzz the HTTP API from its OpenAPI schema with schemathesis and count server errors.

For every operation in ``/openapi.json``, schemathesis generates requests that follow
the schema (positive) and requests that break it (negative). Every response must be
below 500. The run is bounded by a number of examples per operation and mode, and by
wall-clock time.

    python -m bench.bench_fuzz                         # 300 examples per operation and mode
    python -m bench.bench_fuzz --examples 50 --max-seconds 120

The service runs as a child ``ssl-serve`` process on 127.0.0.1 with tiny models made
for the run, one of each modality, and a bank with a few samples so that bank routes
reach their handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import hypothesis
import schemathesis
from schemathesis import GenerationMode

from bench.common import write_result

logger = logging.getLogger("bench.fuzz")

BANK = "fuzz"


@dataclass
class FuzzReport:
    """Outcome of a fuzz run: requests sent, statuses seen and every 5xx with its request."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[dict[str, object]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "cases": self.cases,
            "server_errors": len(self.server_errors),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "elapsed_s": round(self.elapsed_s, 1),
            "stopped_early": self.stopped_early,
            "first_server_errors": self.server_errors[:10],
        }


def fuzz_api(base_url: str, examples: int, max_seconds: float, seed: int | None = 0) -> FuzzReport:
    """Send up to ``examples`` generated requests per operation and mode to ``base_url``.

    Server errors are recorded, not raised, so hypothesis never stops or shrinks on one.
    ``seed`` fixes the generated requests (None draws fresh ones). Stops early once
    ``max_seconds`` have passed.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    report = FuzzReport()
    started = time.monotonic()
    deadline = started + max_seconds
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                report.stopped_early = True
                break
            _fuzz_operation(operation, mode, base_url, examples, seed, deadline, report)
    report.elapsed_s = time.monotonic() - started
    return report


def _fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    examples: int,
    seed: int | None,
    deadline: float,
    report: FuzzReport,
) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    def send(case: schemathesis.Case) -> None:
        if time.monotonic() > deadline:
            report.stopped_early = True
            return
        response = case.call(base_url=base_url, timeout=30)
        report.cases += 1
        report.statuses[response.status_code] += 1
        if response.status_code >= 500:
            report.server_errors.append(
                {
                    "operation": f"{operation.method.upper()} {operation.path}",
                    "mode": mode.value,
                    "status": response.status_code,
                    "request": case.as_curl_command(),
                    "response": response.text[:500],
                }
            )

    if seed is not None:
        send = hypothesis.seed(seed)(send)
    try:
        send()
    except hypothesis.errors.Unsatisfiable:  # nothing to break, such as the negative mode of GET /healthz
        logger.debug("no %s requests exist for %s %s", mode.value, operation.method.upper(), operation.path)


def prepare_bank(base_url: str, model: str, dim: int) -> None:
    """Create the bank ``fuzz`` for ``model`` with three samples of width ``dim``."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        client.put(f"/v1/banks/{BANK}", json={"model": model}).raise_for_status()
        samples = [{"embedding": [float(i == j) for j in range(dim)]} for i in range(3)]
        client.post(f"/v1/banks/{BANK}/samples", json={"input": samples}).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300, help="generated requests per operation and mode")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="wall-clock bound of the run, in seconds")
    parser.add_argument("--seed", type=int, default=None, help="fix the generated requests (default: fresh ones)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the results

    from tests.app.helpers import EMBEDDING_DIM, export_image_model, export_text_model
    from tests.reliability.server import start_server

    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as folder:
        root = Path(folder)
        export_image_model(root / "models", "fuzz-image")
        export_text_model(root / "models", "fuzz-text")
        server = start_server(root / "models", root / "var", root / "server.log")
        try:
            prepare_bank(server.url, "fuzz-image", EMBEDDING_DIM)
            logger.info("fuzzing %s with %d examples per operation and mode", server.url, args.examples)
            report = fuzz_api(server.url, args.examples, args.max_seconds, args.seed)
        finally:
            server.stop()

    result = {"examples_per_operation_and_mode": args.examples, "seed": args.seed, **report.as_dict()}
    path = write_result("fuzz", result)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
