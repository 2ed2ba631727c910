"""A short soak of a real ``ssl-serve`` process; ``python -m bench.bench_soak`` is the long one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_soak import run_soak
from tests.reliability.server import start_server

REQUESTS = 400
WARMUP = 150
# A few hundred requests leave allocator noise of a few MiB, so the bound here is looser
# than the 10 % that the long benchmark aims for.
MAX_GROWTH_PERCENT = 15.0


@pytest.mark.slow
def test_short_soak(models_dir_all: Path, tmp_path: Path) -> None:
    server = start_server(models_dir_all, tmp_path / "var", tmp_path / "server.log")
    try:
        report = run_soak(server, REQUESTS, WARMUP, concurrency=4, max_seconds=120.0)
        alive = server.process.poll() is None
    finally:
        server.stop()
    bad = {status for status in report.statuses if status not in (200, 400, 404)}

    assert alive
    assert report.requests == REQUESTS
    assert report.transport_errors == 0
    assert report.server_errors == 0
    assert bad == set()
    assert report.statuses[200] > REQUESTS * 0.8
    assert report.growth_percent < MAX_GROWTH_PERCENT
