"""Faults inside a forward pass: an encoder that raises, runs out of memory or returns garbage.

The served encoder is wrapped by ``FaultyEncoder``, which behaves like the real one
except on a marked input: a gray image whose pixels are all ``MARK``. The fault
therefore hits exactly the batches that contain such an image.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI
from PIL import Image
from torch import nn

from tests.app.helpers import make_settings, running_app
from tests.reliability.helpers import IMAGE_MODEL, b64, encode, noise

pytestmark = pytest.mark.anyio

MARK = 255
MARKED_INPUT = (1.0 - 0.5) / 0.25  # the marked pixel after the artifact's normalisation


class FaultyEncoder(nn.Module):
    """The real encoder, except that a batch containing a marked image triggers ``fault``.

    Faults: ``raise`` (RuntimeError), ``oom`` (torch.OutOfMemoryError), ``nan`` (the
    marked rows become NaN) and ``shape`` (one row too few).
    """

    def __init__(self, encoder: nn.Module, fault: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.fault = fault

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.encoder(images)  # (N, D)
        marked = (images.flatten(1) == MARKED_INPUT).all(dim=1)  # (N, C, H, W) -> (N,)
        if not marked.any():
            return embeddings
        if self.fault == "raise":
            raise RuntimeError("simulated kernel failure")
        if self.fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if self.fault == "nan":
            return torch.where(marked[:, None], torch.full_like(embeddings, float("nan")), embeddings)
        return embeddings[1:]


MARKED = {"image": b64(encode(Image.new("L", (8, 8), MARK), "PNG"))}
CLEAN = [{"image": b64(encode(noise(8, "L", seed), "PNG"))} for seed in range(3)]


def install_fault(app: FastAPI, fault: str) -> None:
    model = app.state.service.registry.models[IMAGE_MODEL]
    model.encoder = FaultyEncoder(model.encoder, fault)


async def embed(client: httpx.AsyncClient, items: list[dict]) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": items})


@pytest.fixture
def single_settings(models_dir_all: Path, tmp_path: Path):
    """Return settings with one item per batch, so that each request is its own batch."""
    return make_settings(models_dir_all, tmp_path / "var", max_batch_size=1)


async def test_raising_batch_fails_alone(single_settings) -> None:
    async with running_app(single_settings) as (app, client):
        install_fault(app, "raise")
        failed, clean = await asyncio.gather(embed(client, [MARKED]), embed(client, CLEAN[:1]))
        later = await embed(client, CLEAN)
        ready = await client.get("/readyz")
        alive = app.state.service.batchers[IMAGE_MODEL].alive

    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "inference_failed"
    assert failed.json()["error"]["message"] == (
        f"inference failed on model {IMAGE_MODEL}: RuntimeError: simulated kernel failure"
    )
    assert clean.status_code == 200
    assert later.status_code == 200
    assert alive
    assert ready.status_code == 200


async def test_shared_batch_fails_together(models_dir_all: Path, tmp_path: Path) -> None:
    """Requests that share a forward pass share its failure; the next batch is unaffected."""
    settings = make_settings(models_dir_all, tmp_path / "var", max_batch_size=8, max_wait_ms=1000.0)
    async with running_app(settings) as (app, client):
        install_fault(app, "raise")
        marked, neighbour = await asyncio.gather(embed(client, [MARKED]), embed(client, CLEAN[:1]))
        later = await embed(client, CLEAN[:1])
    assert marked.status_code == 500
    assert neighbour.status_code == 500
    assert neighbour.json()["error"]["type"] == "inference_failed"
    assert later.status_code == 200


async def test_out_of_memory_is_503(single_settings) -> None:
    async with running_app(single_settings) as (app, client):
        install_fault(app, "oom")
        failed = await embed(client, [MARKED])
        later = await embed(client, CLEAN)
        ready = await client.get("/readyz")
    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "1"
    assert failed.json()["error"]["type"] == "overloaded"
    assert "ran out of memory" in failed.json()["error"]["message"]
    assert later.status_code == 200
    assert ready.status_code == 200


async def test_nan_row_fails_its_request_only(models_dir_all: Path, tmp_path: Path) -> None:
    settings = make_settings(models_dir_all, tmp_path / "var", max_batch_size=8, max_wait_ms=1000.0)
    async with running_app(settings) as (app, client):
        install_fault(app, "nan")
        marked, neighbour = await asyncio.gather(embed(client, [MARKED, CLEAN[0]]), embed(client, CLEAN[1:]))
        batches = app.state.service.metrics.registry.get_sample_value("embed_batch_size_count", {"model": IMAGE_MODEL})
    assert batches == 1
    assert marked.status_code == 500
    assert marked.json()["error"]["message"] == f"model {IMAGE_MODEL} returned a non-finite embedding for this request's items"
    assert neighbour.status_code == 200


async def test_wrong_output_shape_fails_batch(single_settings) -> None:
    async with running_app(single_settings) as (app, client):
        install_fault(app, "shape")
        failed = await asyncio.wait_for(embed(client, [MARKED]), timeout=10.0)
        later = await embed(client, CLEAN[:1])
    assert failed.status_code == 500
    assert "returned embeddings of shape (0, 16), expected (1, 16)" in failed.json()["error"]["message"]
    assert later.status_code == 200


async def test_dead_worker_fails_fast(single_settings) -> None:
    """Once the batching worker is gone, requests get 503 at once instead of waiting for their timeout."""
    settings = single_settings.model_copy(update={"request_timeout_s": 30.0})
    async with running_app(settings) as (app, client):
        worker = app.state.service.batchers[IMAGE_MODEL]._worker
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        response = await asyncio.wait_for(embed(client, CLEAN[:1]), timeout=5.0)
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "not_ready"
    assert ready.status_code == 503


async def test_worker_crash_fails_fast(single_settings) -> None:
    """A bug that ends the worker mid-batch fails that batch and every later request with 503, none hangs."""
    settings = single_settings.model_copy(update={"request_timeout_s": 30.0})
    async with running_app(settings) as (app, client):
        batcher = app.state.service.batchers[IMAGE_MODEL]

        def broken_deliver(batch, embeddings) -> None:
            raise RuntimeError("simulated bug after the forward pass")

        batcher._deliver = broken_deliver
        in_flight = await asyncio.wait_for(embed(client, CLEAN[:1]), timeout=5.0)
        later = await asyncio.wait_for(embed(client, CLEAN[:1]), timeout=5.0)
        ready = await client.get("/readyz")
    assert in_flight.status_code == 503
    assert in_flight.json()["error"]["message"] == f"model {IMAGE_MODEL} stopped while computing this request"
    assert later.status_code == 503
    assert ready.status_code == 503
