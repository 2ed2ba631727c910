"""ssl-serve's entry point: what it sets up before the service and torch load."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from app.__main__ import set_openmp_wait_policy


def test_entry_module_does_not_load_torch() -> None:
    # Importing the entry point must leave time to set OpenMP's policy before torch loads.
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, app.__main__; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert completed.stdout.strip() == "False"


def test_openmp_policy_defaults_to_passive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    set_openmp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_openmp_policy_keeps_callers_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_openmp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_openmp_policy_warns_after_torch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import torch  # noqa: F401  (loaded, as in this test process)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with caplog.at_level(logging.WARNING, logger="app"):
        set_openmp_wait_policy()
    assert "loaded before OMP_WAIT_POLICY" in caplog.text
