"""App start-up: loading artifacts, skipping or failing on invalid ones, and the ssl-serve command."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from app import main as app_main
from app.main import configure_threads, create_app, inference_streams
from app.registry import ModelLoadError, resolve_device
from app.settings import Settings
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import export_image_model, free_port, make_settings, png_base64, running_app
from training.artifact import META_FILE, WEIGHTS_FILE

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]


def break_weights(path: Path) -> None:
    (path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")


def break_meta(path: Path) -> None:
    (path / META_FILE).write_text("{ not json", encoding="utf-8")


def mismatch_dim(path: Path) -> None:
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    meta["embedding_dim"] = 99
    (path / META_FILE).write_text(json.dumps(meta), encoding="utf-8")


def drop_weights(path: Path) -> None:
    (path / WEIGHTS_FILE).unlink()


@pytest.mark.parametrize("damage", [break_weights, break_meta, mismatch_dim, drop_weights])
async def test_invalid_artifact_skipped(
    tmp_path: Path, models_dir: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    export_image_model(models_dir, IMAGE_MODEL)
    damage(export_image_model(models_dir, "broken", seed=1))
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
            ready = await client.get("/readyz")
            models = await client.get("/v1/models")
    assert ready.status_code == 200
    assert [card["id"] for card in models.json()["data"]] == [IMAGE_MODEL]
    assert any(str(models_dir / "broken") in record.getMessage() for record in caplog.records)


async def test_invalid_artifact_fails_start(tmp_path: Path, models_dir: Path) -> None:
    break_weights(export_image_model(models_dir, "broken"))
    settings = make_settings(models_dir, tmp_path / "var", on_model_error="fail")
    with pytest.raises(ModelLoadError, match="broken"):
        async with running_app(settings):
            pass


async def test_duplicate_name_skipped(tmp_path: Path, models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    export_image_model(models_dir, IMAGE_MODEL)
    copy = export_image_model(models_dir, "z-duplicate", seed=1)  # sorts after the original
    meta = json.loads((copy / META_FILE).read_text(encoding="utf-8"))
    meta["name"] = IMAGE_MODEL
    (copy / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        async with running_app(make_settings(models_dir, tmp_path / "var")) as (app, _):
            loaded = app.state.service.registry.get(IMAGE_MODEL).path
    assert loaded == models_dir / IMAGE_MODEL
    assert any("already loaded" in record.getMessage() for record in caplog.records)


async def test_hidden_and_plain_folders_ignored(tmp_path: Path, models_dir: Path) -> None:
    export_image_model(models_dir, IMAGE_MODEL)
    (models_dir / ".staging").mkdir()
    (models_dir / "notes").mkdir()
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (app, _):
        loaded = sorted(app.state.service.registry.models)
    assert loaded == [IMAGE_MODEL]


async def test_missing_models_dir_fails(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder"):
        async with running_app(make_settings(tmp_path / "absent", tmp_path / "var")):
            pass


async def test_empty_models_dir_ready(tmp_path: Path, models_dir: Path) -> None:
    async with running_app(make_settings(models_dir, tmp_path / "var")) as (_, client):
        ready = await client.get("/readyz")
        embedding = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]})
    assert ready.status_code == 200
    assert embedding.status_code == 400
    assert "no image model is loaded" in embedding.json()["error"]["message"]


async def test_unknown_default_model_fails_in_fail_mode(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(update={"default_model": "absent", "on_model_error": "fail"})
    with pytest.raises(ModelLoadError, match="default_model 'absent'"):
        async with running_app(settings):
            pass


def test_create_app_reads_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBED_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("EMBED_MAX_BATCH_SIZE", "3")
    app = create_app()
    assert app.state.settings.models_dir == tmp_path
    assert app.state.settings.max_batch_size == 3


def test_import_builds_nothing() -> None:
    module = importlib.import_module("app.main")
    assert not hasattr(module, "app")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal of half precision")
def test_half_precision_needs_cuda() -> None:
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_device(Settings(device="auto", dtype="float16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a missing CUDA device")
def test_cuda_device_missing() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(Settings(device="cuda"))


def test_ssl_serve_command(image_model_settings: Settings) -> None:
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EMBED_")}
    environment["EMBED_TORCH_THREADS"] = "1"
    command = [
        sys.executable, "-m", "app",
        "--models-dir", str(image_model_settings.models_dir),
        "--data-dir", str(image_model_settings.data_dir),
        "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode("utf-8", "replace")
            assert time.monotonic() < deadline, "ssl-serve did not become ready in 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings", json={"input": [{"image": png_base64(1)}]}, timeout=10.0
        )
        assert response.status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        server.stdout.close()
    assert server.returncode == 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, (3, 4)),  # small batches leave a core to the event loop, large ones take all
        ({"torch_threads": 2}, (2, 2)),  # a fixed count applies to every batch
        ({"large_batch_threads": 5}, (3, 5)),
        ({"torch_threads": 1, "large_batch_threads": 4}, (1, 4)),
    ],
)
def test_configure_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict, expected: tuple) -> None:
    monkeypatch.setattr(app_main, "available_cpus", lambda: 4)
    previous = torch.get_num_threads()
    try:
        assert configure_threads(Settings(models_dir=tmp_path, **values)) == expected
        assert torch.get_num_threads() == expected[0]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(
    ("cpus", "device", "values", "expected"),
    [(2, "cpu", {}, 2), (16, "cpu", {}, 2), (1, "cpu", {}, 1), (8, "cuda", {}, 1), (1, "cpu", {"inference_streams": 3}, 3)],
)
def test_inference_streams_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpus: int, device: str, values: dict, expected: int
) -> None:
    monkeypatch.setattr(app_main, "available_cpus", lambda: cpus)
    assert inference_streams(Settings(models_dir=tmp_path, **values), torch.device(device)) == expected
