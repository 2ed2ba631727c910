"""SIGKILL of a real ``ssl-serve`` process while samples are being added, then a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.helpers import IMAGE_MODEL, vectors
from tests.reliability.server import start_server

BANK = "crash"
BATCH = 4
ACKS_BEFORE_KILL = 6


class Writer(threading.Thread):
    """Add batches of four vectors back to back until the server dies, counting acknowledged ones.

    Batch n carries the ids ``n-0`` to ``n-3``. Batches are sent one after another, so
    at most one is in flight when the server is killed.
    """

    def __init__(self, url: str) -> None:
        super().__init__(name="crash-writer", daemon=True)
        self.url = url
        self.acknowledged = 0
        self.deadline = time.monotonic() + 60.0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            batch = 0
            while time.monotonic() < self.deadline:
                body = {"input": vectors(BATCH, 16, seed=batch), "ids": [f"{batch}-{j}" for j in range(BATCH)]}
                try:
                    response = client.post(f"/v1/banks/{BANK}/samples", json=body)
                except httpx.TransportError:
                    return  # the server was killed
                assert response.status_code == 200, response.text
                self.acknowledged = batch + 1
                batch += 1


@pytest.mark.slow
def test_kill_during_adds_keeps_acknowledged(models_dir_all: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    server = start_server(models_dir_all, data_dir, tmp_path / "first.log")
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            assert client.put(f"/v1/banks/{BANK}", json={"model": IMAGE_MODEL, "k": 3}).status_code == 201
            for seed in (10_000, 10_001):  # 400 samples, so that each later save takes a while
                seeded = client.post(f"/v1/banks/{BANK}/samples", json={"input": vectors(200, 16, seed=seed)})
                assert seeded.status_code == 200
        writer = Writer(server.url)
        writer.start()
        while writer.acknowledged < ACKS_BEFORE_KILL and writer.is_alive():
            time.sleep(0.01)
        time.sleep(0.05)  # let the next add reach the save
    finally:
        server.kill()
    writer.join(timeout=30)
    acknowledged = writer.acknowledged

    restarted = start_server(models_dir_all, data_dir, tmp_path / "second.log")
    try:
        with httpx.Client(base_url=restarted.url, timeout=10.0) as client:
            info = client.get(f"/v1/banks/{BANK}").json()
            first_again = client.post(f"/v1/banks/{BANK}/samples", json={"input": vectors(1, 16), "ids": ["0-0"]})
            last_again = client.post(
                f"/v1/banks/{BANK}/samples", json={"input": vectors(1, 16), "ids": [f"{acknowledged - 1}-{BATCH - 1}"]}
            )
            scored = client.post(f"/v1/banks/{BANK}/score", json={"input": vectors(2, 16, seed=99)})
    finally:
        restarted.stop()
    files = sorted(path.name for path in (data_dir / "banks" / BANK).iterdir())

    assert acknowledged >= ACKS_BEFORE_KILL
    assert info["status"] == "ready"
    assert info["size"] - 400 in (BATCH * acknowledged, BATCH * (acknowledged + 1))  # the in-flight add may have committed
    assert info["threshold"] is not None
    assert first_again.status_code == 409
    assert last_again.status_code == 409
    assert scored.status_code == 200
    assert len(files) == 3  # one committed version, stale files of the interrupted save removed
    assert files[0].startswith("index-")
    assert files[1] == "meta.json"
