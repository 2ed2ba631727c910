"""Run ``ssl-serve`` as a child process on 127.0.0.1, for crash, soak and burst runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.app.helpers import free_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class ServerProcess:
    """A started ``python -m app`` process, its base URL and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Return the resident memory of the process, read from /proc (Linux only)."""
        fields = Path(f"/proc/{self.pid}/statm").read_text().split()
        return int(fields[1]) * PAGE_SIZE

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """Send SIGKILL, as a crash or the kernel's OOM killer would, and reap the process."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> int:
        """Send SIGTERM, wait for a graceful exit and return the exit status (SIGKILL past the timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("server %d did not stop in %.0f s; killing it", self.pid, timeout_s)
                self.kill()
        return self.process.returncode


def server_command(models_dir: Path, data_dir: Path, port: int, *flags: str) -> list[str]:
    """Return the command line of a service on 127.0.0.1:``port`` with one torch thread."""
    return [
        sys.executable, "-m", "app",
        "--models-dir", str(models_dir),
        "--data-dir", str(data_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--torch-threads", "1",
        "--preprocess-threads", "1",
        "--log-level", "WARNING",
        *flags,
    ]  # fmt: skip


def start_server(
    models_dir: Path,
    data_dir: Path,
    log_path: Path,
    *flags: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> ServerProcess:
    """Start the service and return once /readyz returns 200.

    Raises RuntimeError with the end of the server log when the process exits or is not
    ready within ``timeout_s``, after killing the process.
    """
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - the child process keeps writing to it
    process = subprocess.Popen(
        server_command(models_dir, data_dir, port, *flags),
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(server, timeout_s)
    except BaseException:
        server.kill()
        raise
    return server


def wait_ready(server: ServerProcess, timeout_s: float) -> None:
    """Poll /readyz until it returns 200. Raise RuntimeError if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with status {server.process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server was not ready within {timeout_s:.0f} s:\n{server.log_text()[-3000:]}")
