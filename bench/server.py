"""Run ``ssl-serve`` as a subprocess on 127.0.0.1 for a benchmark: start, wait for /readyz, stop.

The server gets its settings only through ``EMBED_*`` variables set here. Variables of
that prefix inherited from the caller's environment are dropped, so a stray
``EMBED_API_KEY`` or ``EMBED_HOST`` cannot change what is measured or where it listens.
Its log goes to a file, whose end is included in the error when it fails to start.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.artifacts import REPO_ROOT

logger = logging.getLogger("bench.server")

HOST = "127.0.0.1"
POLL_INTERVAL_S = 0.02
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 3000


class ServerStartError(RuntimeError):
    """The server exited, or /readyz did not return 200 in time. The message ends with the server's log."""


@dataclass
class ServerProcess:
    """A started ``ssl-serve`` process and where it listens."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """Return the user plus system CPU seconds the server has used so far (Linux /proc; 0.0 elsewhere)."""
        return process_cpu_seconds(self.process.pid)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


def serve_command() -> list[str]:
    """Return the command that starts the service: the ``ssl-serve`` script beside this Python, on PATH, or ``python -m app``."""
    beside = Path(sys.executable).with_name("ssl-serve")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ssl-serve")
    return [found] if found else [sys.executable, "-m", "app"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def server_environment(settings: dict[str, str]) -> dict[str, str]:
    """Return this process's environment without inherited ``EMBED_*`` variables, plus ``settings``."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EMBED_")}
    dropped = sorted(key for key in os.environ if key.startswith("EMBED_"))
    if dropped:
        logger.warning("not passing inherited %s to the benchmarked server", ", ".join(dropped))
    environment.update(settings)
    return environment


def start_server(models_dir: Path, data_dir: Path, log_path: Path, settings: dict[str, str] | None = None) -> ServerProcess:
    """Start ``ssl-serve`` on a free port of 127.0.0.1 without waiting for it to be ready.

    ``settings`` are extra ``EMBED_*`` variables, such as ``{"EMBED_MAX_BATCH_SIZE": "1"}``,
    or other environment variables, such as ``{"OMP_WAIT_POLICY": "ACTIVE"}``.
    """
    port = free_port()
    values = {
        "EMBED_HOST": HOST,
        "EMBED_PORT": str(port),
        "EMBED_MODELS_DIR": str(models_dir),
        "EMBED_DATA_DIR": str(data_dir),
        "EMBED_LOG_LEVEL": "WARNING",  # no access log: it would cost the server CPU time per request
    }
    values.update(settings or {})
    for key in values:
        if not key.isupper():
            raise ValueError(f"server setting {key!r} must be an EMBED_ variable or another upper-case environment variable")
    if values["EMBED_HOST"] != HOST:
        raise ValueError(f"the benchmarked server must listen on {HOST}, got EMBED_HOST={values['EMBED_HOST']!r}")

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            serve_command(), cwd=REPO_ROOT, env=server_environment(values), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return ServerProcess(process=process, base_url=f"http://{HOST}:{values['EMBED_PORT']}", log_path=log_path)


def wait_ready(server: ServerProcess, timeout_s: float) -> None:
    """Poll GET /readyz until it returns 200; raise ServerStartError when the server exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=1.0, trust_env=False) as client:
        while True:
            if server.process.poll() is not None:
                raise ServerStartError(
                    f"ssl-serve exited with status {server.process.returncode} before it was ready; log:\n{server.log_tail()}"
                )
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerStartError(f"ssl-serve was not ready after {timeout_s:g} s; log:\n{server.log_tail()}")
            time.sleep(POLL_INTERVAL_S)


def stop_server(server: ServerProcess, timeout_s: float = STOP_TIMEOUT_S) -> float:
    """Stop the server with SIGINT (a graceful shutdown), killing it after ``timeout_s``; return the seconds it took."""
    started = time.perf_counter()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("ssl-serve (pid %d) ignored SIGINT for %g s; killing it", server.pid, timeout_s)
            server.process.kill()
            server.process.wait()
    return time.perf_counter() - started


@contextmanager
def running_server(
    models_dir: Path, data_dir: Path, log_path: Path, settings: dict[str, str] | None = None, timeout_s: float = 180.0
) -> Iterator[ServerProcess]:
    """Start ``ssl-serve``, wait until it is ready, yield it, and stop it on exit."""
    server = start_server(models_dir, data_dir, log_path, settings)
    try:
        wait_ready(server, timeout_s)
        yield server
    finally:
        stop_server(server)


def process_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU seconds of process ``pid`` and its threads (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command name: fields[11] is utime and fields[12] stime, in clock ticks
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
