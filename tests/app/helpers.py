"""Builders for service tests: tiny real artifacts, settings, a started app and test images."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image

from app.http_protocol import http_protocol
from app.main import create_app
from app.settings import Settings
from training.artifact import export_artifact
from training.encoders.resnet import ResNet
from training.encoders.text import TextTransformer
from training.tokenizer import train_tokenizer

IMAGE_SIZE = 8
EMBEDDING_DIM = 16
TEXT_MAX_TOKENS = 32
TEXT_CORPUS = [
    "a small grey cat sleeps on the warm mat",
    "the quick brown fox jumps over the lazy dog",
    "digits are written by hand on paper",
    "an encoder maps each input to a vector",
] * 8


def export_image_model(
    models_dir: Path, name: str, *, channels: int = 1, dim: int = EMBEDDING_DIM, space: str | None = None, seed: int = 0
) -> Path:
    """Export a tiny ResNet with random weights as an image artifact; a stand-in encoder for service tests."""
    torch.manual_seed(seed)
    encoder = ResNet(in_channels=channels, depth=10, width=4, small_stem=True, embedding_dim=dim)
    meta = {
        "name": name,
        "modality": "image",
        "architecture": {
            "name": "resnet",
            "kwargs": {"in_channels": channels, "depth": 10, "width": 4, "small_stem": True, "embedding_dim": dim},
        },
        "embedding_dim": dim,
        "preprocessing": {"size": IMAGE_SIZE, "channels": channels, "mean": [0.5] * channels, "std": [0.25] * channels},
        "normalize": True,
        "method": "simclr",
        "space": space or name,
        "training": {"created": "2026-01-02T03:04:05+00:00", "seed": seed},
        "metrics": {"knn_accuracy": 0.5},
    }
    return export_artifact(models_dir / name, encoder, meta)


def export_text_model(
    models_dir: Path, name: str, *, dim: int = EMBEDDING_DIM, space: str | None = None, seed: int = 0
) -> Path:
    """Export a one-block text Transformer with random weights and a tokenizer trained on a few sentences."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(TEXT_CORPUS, vocab_size=300, lowercase=True)
    kwargs = {
        "vocab_size": tokenizer.get_vocab_size(),
        "max_tokens": TEXT_MAX_TOKENS,
        "width": 16,
        "depth": 1,
        "heads": 2,
        "dropout": 0.0,
        "embedding_dim": dim,
    }
    encoder = TextTransformer(**kwargs)
    meta = {
        "name": name,
        "modality": "text",
        "architecture": {"name": "text_transformer", "kwargs": kwargs},
        "embedding_dim": dim,
        "preprocessing": {"tokenizer": "tokenizer.json", "max_tokens": TEXT_MAX_TOKENS, "lowercase": True},
        "normalize": True,
        "method": "simcse",
        "space": space or name,
        "training": {"seed": seed},
        "metrics": {},
    }
    return export_artifact(models_dir / name, encoder, meta, tokenizer_json=tokenizer.to_str())


def make_settings(models_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    """Return Settings for a test service; batching waits little so tests stay fast."""
    values: dict[str, Any] = {"models_dir": models_dir, "data_dir": data_dir, "max_wait_ms": 1.0, "torch_threads": 1}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Run the app's lifespan and yield it with an httpx client that talks to it over ASGI."""
    app = create_app(settings)
    torch_threads = torch.get_num_threads()  # the lifespan sets torch's process-wide thread count
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service.test") as client:
                yield app, client
    finally:
        torch.set_num_threads(torch_threads)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_in_thread(config: uvicorn.Config, timeout_s: float = 30.0) -> Iterator[None]:
    """Run a uvicorn server for ``config`` in a background thread until the block ends."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {config.port}")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@contextmanager
def live_server(settings: Settings, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve the app with uvicorn on 127.0.0.1 in a background thread and yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        http=http_protocol(settings.http),
        loop=settings.loop,
    )
    with serve_in_thread(config, timeout_s):
        yield f"http://127.0.0.1:{port}"


def png_base64(seed: int = 0, size: int = IMAGE_SIZE, mode: str = "L", data_url: bool = False) -> str:
    """Return a random PNG image as base64, optionally as a data URL."""
    return encode_base64(png_bytes(seed, size, mode), data_url)


def png_bytes(seed: int = 0, size: int = IMAGE_SIZE, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)  # (H, W) is L, (H, W, 3) is RGB
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def encode_base64(data: bytes, data_url: bool = False) -> str:
    text = base64.b64encode(data).decode("ascii")
    return f"data:image/png;base64,{text}" if data_url else text


def decode_vector(text: str) -> np.ndarray:
    """Decode a base64 embedding (little-endian float32 bytes) into (D,) float32."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
