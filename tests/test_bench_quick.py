"""Every benchmark's --quick mode runs, prints its JSON summary and writes its result record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = {
    "bench_training": [],
    "bench_serving": [],
    "bench_banks": [],
    "bench_startup": [],
    "bench_methods": [],
    "bench_bank_auroc": ["--model", "digits-simclr"],
    "bench_quality": [],
    "bench_request_cpu": [],
}
TIMEOUT_S = 300


@pytest.mark.bench
@pytest.mark.parametrize("bench", BENCHES)
def test_quick_mode_writes_record(bench: str) -> None:
    if bench in ("bench_bank_auroc", "bench_quality") and not (REPO.parent / "shared" / "data" / "glyphs").is_dir():
        pytest.skip("the glyphs data set is not beside the repository")
    finished = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--quick", *BENCHES[bench]],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    summary = json.loads(finished.stdout)
    record = Path(summary["record"])
    plots = [Path(path) for path in summary.get("plots", [])] + ([Path(summary["plot"])] if "plot" in summary else [])
    try:
        assert record.is_file()
        contents = json.loads(record.read_text())
        assert contents["command"].endswith("--quick")
        assert "commit" in contents["machine"]
        for plot in plots:
            assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        for path in [record, *plots]:
            path.unlink(missing_ok=True)
