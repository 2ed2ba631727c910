"""Schema-driven fuzzing: schemathesis generates requests from /openapi.json, none may get a 5xx.

Each API operation gets ``EXAMPLES`` generated requests that follow its schema and as
many that break it, with a fixed seed, against a service on 127.0.0.1 that serves an
image and a text model and has one bank. A longer run is ``python -m bench.bench_fuzz``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_fuzz import BANK, fuzz_api, prepare_bank
from tests.app.helpers import EMBEDDING_DIM, live_server, make_settings
from tests.reliability.helpers import IMAGE_MODEL

EXAMPLES = 20
MAX_SECONDS = 60.0


@pytest.fixture(scope="module")
def fuzz_url(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(models_dir_all, tmp_path_factory.mktemp("fuzz-data"), request_timeout_s=10.0)
    with live_server(settings) as url:
        prepare_bank(url, IMAGE_MODEL, EMBEDDING_DIM)
        yield url


@pytest.mark.slow
def test_fuzz_no_server_error(fuzz_url: str) -> None:
    report = fuzz_api(fuzz_url, EXAMPLES, MAX_SECONDS, seed=0)
    assert report.server_errors == []
    assert report.cases > 100
    assert sum(count for status, count in report.statuses.items() if 200 <= status < 300) > 0
    assert BANK  # the bank routes were reachable: prepare_bank raised otherwise
