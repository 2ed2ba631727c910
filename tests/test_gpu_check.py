"""The prepared GPU check script parses and calls the benches only with flags they accept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def bench_commands() -> list[tuple[str, list[str]]]:
    """Return (module, flags) of each bench the script runs, with continued lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = re.search(r"-m (bench\.\w+)(.*)", line)
        if match:
            commands.append((match.group(1), re.findall(r"(--[a-z][a-z-]*)", match.group(2))))
    return commands


def test_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_script_runs_both_benches() -> None:
    assert {module for module, _ in bench_commands()} == {"bench.bench_serving", "bench.bench_methods"}


@pytest.mark.parametrize(("module", "flags"), bench_commands())
def test_script_flags_exist(module: str, flags: list[str]) -> None:
    usage = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in flags:
        assert flag in usage, f"{module} has no {flag}"
