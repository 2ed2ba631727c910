"""ssl-serve's entry point: flags are parsed before torch loads."""

from __future__ import annotations

import subprocess
import sys


def test_entry_module_does_not_load_torch() -> None:
    # Loading torch takes seconds, so --help and flag errors return without it.
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, app.__main__; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert completed.stdout.strip() == "False"
