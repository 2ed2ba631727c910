"""The FastAPI app: ``create_app`` builds it, its lifespan loads models and starts batchers.

Nothing happens at import. ``create_app`` wires routes, middleware and error handlers.
The lifespan loads and warms every artifact, starts one dynamic batcher per model and
opens the anomaly bank store, and only then marks the service ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI

from app.auth import require_api_key
from app.banks import create_bank_store
from app.batching import DynamicBatcher
from app.cache import EmbeddingCache
from app.error_handlers import install_error_handlers
from app.limits import BodyLimitMiddleware
from app.metrics import LatencyMiddleware, ServiceMetrics
from app.registry import load_models, resolve_device
from app.routes import banks, embeddings, health, models, similarity
from app.settings import Settings
from app.state import ServiceState

logger = logging.getLogger(__name__)

MAX_AUTO_PREPROCESS_THREADS = 4


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service app for ``settings`` (default: read from ``EMBED_*`` variables)."""
    settings = settings if settings is not None else Settings()
    metrics = ServiceMetrics()
    app = FastAPI(
        title="ssl-embed",
        summary="Embeddings, similarity and anomaly scores from self-supervised encoders.",
        version="1",
        lifespan=lifespan,
        # A trailing slash gets 404 instead of a redirect, so that PUT /v1/banks/ (an empty
        # bank name) never turns into a request on another route.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app, metrics)

    app.include_router(health.router)
    protected = [Depends(require_api_key)]
    for module in (models, embeddings, similarity, banks):
        app.include_router(module.router, dependencies=protected)

    # added last runs first: latency wraps everything, the body limit runs before routing
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes, metrics=metrics)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load models, start batchers and open the bank store; stop and close them on shutdown."""
    settings: Settings = app.state.settings
    state = ServiceState(settings=settings, metrics=app.state.metrics, cache=EmbeddingCache(settings.cache_size))
    app.state.service = state
    _warn_about_exposure(settings)

    device, dtype = resolve_device(settings)
    streams = inference_streams(settings, device)
    torch_threads, large_batch_threads = configure_threads(settings)
    state.preprocess_executor = ThreadPoolExecutor(
        max_workers=settings.preprocess_threads or min(MAX_AUTO_PREPROCESS_THREADS, available_cpus()),
        thread_name_prefix="preprocess",
        # a new thread starts with the count last set by any thread, which may be a large batch's
        initializer=torch.set_num_threads,
        initargs=(torch_threads,),
    )
    try:
        logger.info("loading models from %s onto %s (%s)", settings.models_dir, device, str(dtype).removeprefix("torch."))
        state.registry = await asyncio.to_thread(load_models, settings, device, dtype)
        for model in state.registry.models.values():
            batcher = DynamicBatcher(
                model,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_queue_items=settings.max_queue_items,
                metrics=state.metrics,
                torch_threads=torch_threads,
                large_batch_threads=large_batch_threads,
                large_batch_items=settings.large_batch_items,
                streams=streams,
            )
            batcher.start()
            state.batchers[model.id] = batcher
        state.banks = await asyncio.to_thread(create_bank_store, settings)
        state.ready = True
        logger.info("ready: %d models %s", len(state.registry.models), sorted(state.registry.models))
        yield
    finally:
        state.ready = False
        await _shut_down(state)


async def _shut_down(state: ServiceState) -> None:
    for batcher in state.batchers.values():
        await batcher.stop()
    if state.banks is not None:
        await asyncio.to_thread(state.banks.close)
    if state.preprocess_executor is not None:
        state.preprocess_executor.shutdown(wait=True, cancel_futures=True)
    logger.info("stopped")


def available_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def inference_streams(settings: Settings, device: torch.device) -> int:
    """Return how many forward passes of one model may run at once: the setting, else 2 on a multi-core CPU, else 1.

    NOTE: on CUDA the default stays 1, because overlapping passes there has not been measured.
    """
    if settings.inference_streams:
        return settings.inference_streams
    return 2 if device.type == "cpu" and available_cpus() >= 2 else 1


def configure_threads(settings: Settings) -> tuple[int, int]:
    """Set torch's intra-op threads; return the counts for small and for large batches.

    By default a batch of fewer than ``large_batch_items`` runs on one thread per CPU but
    one, at least one: the remaining core keeps the event loop, image decoding and
    tokenising responsive. On 2 cores, 1 thread served the 32 px glyphs model at 156
    requests/s against 102 with 2 threads (one image per request, concurrency 1). A
    larger batch means that requests are queueing behind the model, so it gets every CPU.
    These are the counts of a forward pass that runs alone. Passes that run at once
    (``inference_streams``) split them.

    NOTE: models busy at the same moment each use up to these many threads. Several busy
    models can then oversubscribe the CPUs, so set both counts lower for such loads.
    """
    cpus = available_cpus()
    threads = settings.torch_threads or max(1, cpus - 1)
    large_batch_threads = settings.large_batch_threads or (settings.torch_threads or cpus)
    torch.set_num_threads(threads)
    return threads, large_batch_threads


def _warn_about_exposure(settings: Settings) -> None:
    if settings.exposed and settings.api_key is None:
        logger.warning("listening on %s without an API key; anyone who can reach it may use it", settings.host)
