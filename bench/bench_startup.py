"""Service start-up time: seconds from starting ``ssl-serve`` until GET /readyz returns 200.

Each run starts a fresh ``ssl-serve`` subprocess on 127.0.0.1 (free port, empty data
folder), polls /readyz every 20 ms, then stops the server with SIGINT and records how
long the graceful shutdown took. The time covers interpreter start, imports, loading and
warming up every model, and opening the bank store. The full mode measures the whole
models folder and each model alone; the median of the repeats is the figure to quote.

    python -m bench.bench_startup            # full: 3 starts each, median
    python -m bench.bench_startup --quick    # one start of the whole models folder
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.artifacts import DEFAULT_MODELS_DIR, list_artifacts, single_model_dir
from bench.common import write_result
from bench.logs import configure_logging
from bench.server import start_server, stop_server, wait_ready

logger = logging.getLogger("bench.startup")


def measure_starts(label: str, models_dir: Path, repeats: int, timeout_s: float, work_dir: Path) -> dict[str, Any]:
    """Start and stop ``ssl-serve`` on ``models_dir`` ``repeats`` times; return ready and stop seconds."""
    ready_seconds, stop_seconds = [], []
    for attempt in range(repeats):
        data_dir = work_dir / f"var-{label}-{attempt}"
        log_path = work_dir / f"serve-{label}-{attempt}.log"
        started = time.perf_counter()
        server = start_server(models_dir, data_dir, log_path)
        try:
            wait_ready(server, timeout_s)
            ready_seconds.append(time.perf_counter() - started)
        finally:
            stop_seconds.append(stop_server(server))
        logger.info("%s: ready after %.2f s, stopped in %.2f s", label, ready_seconds[-1], stop_seconds[-1])
    return {
        "ready_s_median": round(statistics.median(ready_seconds), 3),
        "ready_s": [round(value, 3) for value in ready_seconds],
        "stop_s_median": round(statistics.median(stop_seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one start of the whole models folder only")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="folder of model artifacts (default: the repository's models/)")
    parser.add_argument("--repeats", type=int, default=None, help="starts per configuration (default: 3, --quick: 1)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for /readyz before giving up on a start")
    args = parser.parse_args()
    configure_logging()
    repeats = args.repeats
    if repeats is None:
        repeats = 1 if args.quick else 3
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, got {repeats}")

    artifacts = list_artifacts(args.models_dir)
    logger.info("models: %s", [artifact.name for artifact in artifacts])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as temporary:
        work_dir = Path(temporary)
        configurations = [("all", args.models_dir)]
        if not args.quick and len(artifacts) > 1:
            configurations += [(artifact.name, single_model_dir(artifact, work_dir)) for artifact in artifacts]
        for label, models_dir in configurations:
            rows.append({"models": label, "repeats": repeats, **measure_starts(label, models_dir, repeats, args.timeout, work_dir)})

    command = "python -m bench.bench_startup" + (" --quick" if args.quick else "")
    result = {
        "command": command,
        "unit": "seconds from process start to /readyz 200",
        "models": [{"name": artifact.name, "modality": artifact.modality} for artifact in artifacts],
        "rows": rows,
    }
    path = write_result("startup-quick" if args.quick else "startup", result)
    print(json.dumps({"rows": rows, "record": str(path)}, indent=2))


if __name__ == "__main__":
    main()
