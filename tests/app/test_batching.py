"""Dynamic batching: batch independence, the bounded queue, timeouts, cancellation and failures."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app.batching import DynamicBatcher
from app.errors import InferenceFailed, NotReady, Overloaded
from app.metrics import ServiceMetrics
from app.registry import load_model
from app.settings import Settings
from tests.app.conftest import IMAGE_MODEL
from tests.app.helpers import export_image_model, export_text_model, live_server, make_settings, png_base64, running_app

pytestmark = pytest.mark.anyio

TEXT_MODEL = "tiny-text"


def sample(app, name: str, model: str) -> float:
    value = app.state.service.metrics.registry.get_sample_value(name, {"model": model})
    return 0.0 if value is None else value


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def embed_one(client: httpx.AsyncClient, item: object) -> np.ndarray:
    response = await client.post("/v1/embeddings", json={"input": [item], "normalize": False})
    assert response.status_code == 200
    return np.array(response.json()["data"][0]["embedding"])


@pytest.mark.parametrize("modality", ["image", "text"])
async def test_batch_result_independent_of_batch(tmp_path: Path, models_dir: Path, modality: str) -> None:
    if modality == "image":
        export_image_model(models_dir, IMAGE_MODEL)
        target = {"image": png_base64(0)}
        others = [{"image": png_base64(seed, size=12 + seed)} for seed in range(1, 8)]
        model = IMAGE_MODEL
    else:
        export_text_model(models_dir, TEXT_MODEL)
        target = "a cat"
        others = [" ".join(["the quick brown fox"] * seed) for seed in range(1, 8)]  # longer texts pad the target
        model = TEXT_MODEL
    settings = make_settings(models_dir, tmp_path / "var", max_batch_size=8, max_wait_ms=1000)

    async with running_app(settings) as (app, client):
        alone = await embed_one(client, target)
        # A batch of two turns the wait back on: a lone request after a batch of one is sent at once.
        primed = await client.post("/v1/embeddings", json={"input": others[:2]})
        assert primed.status_code == 200
        batched = await asyncio.gather(*(embed_one(client, item) for item in [*others[:3], target, *others[3:]]))
        batches = sample(app, "embed_batch_size_count", model)
        items = sample(app, "embed_batch_size_sum", model)

    assert batches == 3
    assert items == 11
    np.testing.assert_allclose(batched[3], alone, rtol=0, atol=1e-5)


async def test_queue_full_returns_503(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(
        update={"max_queue_items": 4, "max_items_per_request": 4, "max_batch_size": 64, "max_wait_ms": 1000}
    )
    async with running_app(settings) as (app, client):
        batcher = app.state.service.batchers[IMAGE_MODEL]
        first = asyncio.ensure_future(
            client.post("/v1/embeddings", json={"input": [{"image": png_base64(seed)} for seed in range(4)]})
        )
        await wait_until(lambda: batcher.queue_depth == 4)
        rejected = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(9)}]})
        accepted = await first

    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "overloaded"
    assert accepted.status_code == 200


async def test_timeout_returns_504_and_skips_items(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(update={"request_timeout_s": 0.05, "max_wait_ms": 500})
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}, {"image": png_base64(2)}]})
        await wait_until(lambda: sample(app, "embed_skipped_items_total", IMAGE_MODEL) == 2)
        batches = sample(app, "embed_batch_size_count", IMAGE_MODEL)

    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"
    assert batches == 0


async def test_failed_batch_keeps_worker(image_model_settings: Settings) -> None:
    async with running_app(image_model_settings) as (app, client):
        batcher = app.state.service.batchers[IMAGE_MODEL]
        with pytest.raises(InferenceFailed, match="inference failed on model tiny-image"):
            await batcher.submit([torch.zeros(3, 8, 8)])  # three channels into a one-channel encoder
        embeddings = await batcher.submit([torch.zeros(1, 8, 8)])
        response = await client.get("/readyz")
        alive = batcher.alive
    assert embeddings.shape == (1, 16)
    assert alive
    assert response.status_code == 200


async def test_dead_worker_makes_not_ready(image_model_settings: Settings) -> None:
    async with running_app(image_model_settings) as (app, client):
        worker = app.state.service.batchers[IMAGE_MODEL]._worker
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        response = await client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "not_ready"
    assert IMAGE_MODEL in error["message"]


async def test_client_disconnect_skips_items(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(update={"max_wait_ms": 1000})
    queued = f'embed_queue_depth{{model="{IMAGE_MODEL}"}} 1.0'
    skipped = f'embed_skipped_items_total{{model="{IMAGE_MODEL}"}} 1.0'
    with live_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as observer:

            async def metrics_contain(line: str) -> bool:
                return line in (await observer.get("/metrics")).text

            # the client gives up while its item waits in the queue, which closes its connection
            async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
                pending = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [{"image": png_base64(1)}]}))
                await wait_for_metrics(metrics_contain, queued)
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

            await wait_for_metrics(metrics_contain, skipped)
            metrics = (await observer.get("/metrics")).text
    assert f'embed_batch_size_count{{model="{IMAGE_MODEL}"}} 0.0' in metrics


async def wait_for_metrics(metrics_contain, line: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await metrics_contain(line):
        assert time.monotonic() < deadline, f"metrics never showed {line!r}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
        ({"max_queue_items": 0}, "max_queue_items"),
    ],
)
def test_batcher_rejects_bad_arguments(image_model_settings: Settings, overrides: dict, fragment: str) -> None:
    model = load_model(image_model_settings.models_dir / IMAGE_MODEL, torch.device("cpu"), torch.float32, set())
    arguments = {"max_batch_size": 4, "max_wait_ms": 1.0, "max_queue_items": 8, **overrides}
    with pytest.raises(ValueError, match=fragment):
        DynamicBatcher(model, metrics=ServiceMetrics(), **arguments)


async def test_lone_request_after_single_batch_skips_wait(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(update={"max_wait_ms": 1000})
    async with running_app(settings) as (_, client):
        await embed_one(client, {"image": png_base64(1)})  # the first batch waits, then contains one item
        started = time.monotonic()
        await embed_one(client, {"image": png_base64(2)})
        elapsed = time.monotonic() - started
    assert elapsed < 0.5


def test_threads_switch_at_large_batch(image_model_settings: Settings) -> None:
    model = load_model(image_model_settings.models_dir / IMAGE_MODEL, torch.device("cpu"), torch.float32, set())
    arguments = {"max_batch_size": 32, "max_wait_ms": 1.0, "max_queue_items": 64, "metrics": ServiceMetrics()}
    batcher = DynamicBatcher(model, torch_threads=1, large_batch_threads=3, large_batch_items=8, **arguments)
    assert [batcher.threads_for(size) for size in (1, 7, 8, 32)] == [1, 1, 3, 3]
    never = DynamicBatcher(model, torch_threads=1, large_batch_threads=3, large_batch_items=0, **arguments)
    assert never.threads_for(32) == 1
    assert [batcher.threads_for(32, passes) for passes in (1, 2, 3, 4)] == [3, 1, 1, 1]
    assert batcher.threads_for(1, passes=2) == 1


async def test_large_batches_use_own_threads(image_model_settings: Settings) -> None:
    model = load_model(image_model_settings.models_dir / IMAGE_MODEL, torch.device("cpu"), torch.float32, set())
    seen: list[tuple[int, int]] = []  # (batch size, threads inside the forward pass)
    encode = model.encode

    def recording_encode(inputs: list[torch.Tensor]) -> torch.Tensor:
        seen.append((len(inputs), torch.get_num_threads()))
        return encode(inputs)

    model.encode = recording_encode
    caller_threads = torch.get_num_threads()
    batcher = DynamicBatcher(
        model, max_batch_size=8, max_wait_ms=1.0, max_queue_items=64, metrics=ServiceMetrics(),
        torch_threads=1, large_batch_threads=2, large_batch_items=4,
    )
    preprocessing = model.image_preprocessing
    image = torch.rand(preprocessing.channels, preprocessing.size, preprocessing.size)  # (C, H, W)
    batcher.start()
    try:
        small = await batcher.submit([image])
        large = await batcher.submit([image] * 4)
        again = await batcher.submit([image])
    finally:
        await batcher.stop()
    assert seen == [(1, 1), (4, 2), (1, 1)]
    assert torch.get_num_threads() == caller_threads  # only the inference thread changed
    torch.testing.assert_close(large, small.expand(4, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, small)


async def test_preprocess_threads_keep_small_count(image_model_settings: Settings) -> None:
    settings = image_model_settings.model_copy(
        update={"torch_threads": 1, "large_batch_threads": 2, "large_batch_items": 2, "preprocess_threads": 4}
    )
    async with running_app(settings) as (app, client):
        response = await client.post("/v1/embeddings", json={"input": [{"image": png_base64(seed)} for seed in range(4)]})
        assert response.status_code == 200
        executor = app.state.service.preprocess_executor
        barrier = threading.Barrier(4, timeout=10)

        def count_after_all_started() -> int:
            barrier.wait()  # four tasks at once, so each runs on its own thread
            return torch.get_num_threads()

        counts = [future.result(timeout=10) for future in [executor.submit(count_after_all_started) for _ in range(4)]]
    assert counts == [1, 1, 1, 1]


def image_batcher(settings: Settings, encode=None, **overrides) -> tuple[DynamicBatcher, torch.Tensor]:
    """Return a batcher of the tiny image model (its encode replaced by ``encode`` when given) and one input image."""
    model = load_model(settings.models_dir / IMAGE_MODEL, torch.device("cpu"), torch.float32, set())
    if encode is not None:
        model.encode = encode(model.encode)
    arguments = {"max_batch_size": 1, "max_wait_ms": 1.0, "max_queue_items": 64, "metrics": ServiceMetrics(), **overrides}
    preprocessing = model.image_preprocessing
    return DynamicBatcher(model, **arguments), torch.rand(preprocessing.channels, preprocessing.size, preprocessing.size)


@pytest.mark.parametrize("streams", [1, 2])
async def test_streams_run_batches_at_once(image_model_settings: Settings, streams: int) -> None:
    # two one-item batches meet at a barrier inside the forward pass, which only two streams can pass
    barrier = threading.Barrier(2, timeout=2)

    def meeting(encode):
        def encode_after_barrier(inputs):
            barrier.wait()
            return encode(inputs)

        return encode_after_barrier

    batcher, image = image_batcher(image_model_settings, meeting, streams=streams)
    batcher.start()
    try:
        results = await asyncio.gather(batcher.submit([image]), batcher.submit([image]), return_exceptions=True)
    finally:
        barrier.abort()
        await batcher.stop()
    if streams == 2:
        assert all(isinstance(result, torch.Tensor) for result in results)
        torch.testing.assert_close(results[0], results[1])
    else:
        assert all(isinstance(result, InferenceFailed) for result in results)


async def test_streams_keep_items_in_order(image_model_settings: Settings) -> None:
    batcher, _ = image_batcher(image_model_settings, streams=3, max_batch_size=4)
    preprocessing = batcher.model.image_preprocessing
    images = [torch.rand(preprocessing.channels, preprocessing.size, preprocessing.size) for _ in range(24)]
    expected = batcher.model.encode(images)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(images[start : start + 3]) for start in range(0, 24, 3)))
    finally:
        await batcher.stop()
    torch.testing.assert_close(torch.cat(results), expected, rtol=1e-5, atol=1e-5)


async def test_bug_in_batch_ends_worker(image_model_settings: Settings) -> None:
    batcher, image = image_batcher(image_model_settings, streams=2)

    def broken_deliver(batch, embeddings):
        raise RuntimeError("planted bug")

    batcher._deliver = broken_deliver
    batcher.start()
    try:
        with pytest.raises(NotReady, match="stopped while computing"):
            await batcher.submit([image])
        await wait_until(lambda: not batcher.alive)
        with pytest.raises(NotReady, match="not running"):
            await batcher.submit([image])
    finally:
        await batcher.stop()
    assert isinstance(batcher._worker.exception(), RuntimeError)


async def test_stop_fails_batches_in_flight(image_model_settings: Settings) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(encode):
        def encode_slowly(inputs):
            started.set()
            release.wait(timeout=5)
            return encode(inputs)

        return encode_slowly

    batcher, image = image_batcher(image_model_settings, slow, streams=2)
    batcher.start()
    pending = asyncio.ensure_future(batcher.submit([image]))
    await wait_until(started.is_set)
    started_stop = time.monotonic()
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.05)  # runs only if stop() leaves the event loop free while the pass finishes
    release.set()
    await stopping
    assert time.monotonic() - started_stop < 3  # not the 5 s the held pass would wait on its own
    with pytest.raises(NotReady):
        await pending


async def test_passes_at_once_split_threads(image_model_settings: Settings) -> None:
    first_started = threading.Event()
    release = threading.Event()
    seen: list[int] = []  # threads inside each forward pass, in the order they started

    def holding_first(encode):
        def encode_holding_first(inputs):
            seen.append(torch.get_num_threads())
            if len(seen) == 1:
                first_started.set()
                release.wait(timeout=5)
            return encode(inputs)

        return encode_holding_first

    batcher, image = image_batcher(image_model_settings, holding_first, streams=2, torch_threads=2, large_batch_threads=2)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit([image]))
        await wait_until(first_started.is_set)
        second = await batcher.submit([image])  # runs while the first pass is held
        release.set()
        await first
    finally:
        release.set()
        await batcher.stop()
    assert seen == [2, 1]
    assert second.shape == (1, 16)


async def test_stop_right_after_submit_finishes(image_model_settings: Settings) -> None:
    # the worker is waiting for a batch to fill when an item arrives and stop() follows in the same turns
    batcher, image = image_batcher(image_model_settings, max_batch_size=4, max_wait_ms=2000)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit([image]))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(batcher.submit([image]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(batcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert done == {stopping}
    for caller in (first, second):
        with pytest.raises(NotReady):
            await caller


async def test_queue_emptied_while_collecting_keeps_worker(image_model_settings: Settings) -> None:
    batcher, image = image_batcher(image_model_settings, max_batch_size=4, max_wait_ms=50, max_queue_items=2)
    batcher.start()
    await asyncio.sleep(0.01)
    caller = asyncio.ensure_future(batcher.submit([image]))
    await asyncio.sleep(0)  # queued, and the worker wakes up
    caller.cancel()
    await asyncio.sleep(0)  # the worker yields once before it looks at the queue again
    with pytest.raises(Overloaded):
        await batcher.submit([image] * 3)  # too many: drops the abandoned item, which empties the queue
    await asyncio.sleep(0.05)
    try:
        assert batcher.alive
        embeddings = await batcher.submit([image])
    finally:
        await batcher.stop()
    assert embeddings.shape == (1, 16)
