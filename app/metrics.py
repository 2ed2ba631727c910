"""Prometheus metrics of one service instance, kept in the instance's own registry.

A registry per app (not the global one) lets several apps live in one process, as they
do in tests, without duplicate-metric errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ServiceMetrics:
    """The service's metrics, all in ``registry``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.request_latency = Histogram(
            "embed_request_duration_seconds",
            "Time from request start to response end, by route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "embed_queue_depth", "Items waiting in a model's batching queue.", ["model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "embed_batch_size", "Items per forward pass.", ["model"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference_seconds = Histogram(
            "embed_inference_duration_seconds",
            "Time of one forward pass, including the copy back to the CPU.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "embed_errors", "Error responses by error type.", ["type"], registry=self.registry
        )
        self.rejected_items = Counter(
            "embed_rejected_items", "Items refused because the queue was full.", ["model"], registry=self.registry
        )
        self.skipped_items = Counter(
            "embed_skipped_items",
            "Queued items never computed because their request was cancelled or timed out.",
            ["model"],
            registry=self.registry,
        )
        self.cache_hits = Counter("embed_cache_hits", "Embeddings served from the cache.", ["model"], registry=self.registry)
        self.cache_misses = Counter(
            "embed_cache_misses", "Embeddings not in the cache, computed.", ["model"], registry=self.registry
        )

    def register_model(self, model_id: str) -> None:
        """Create the per-model series at zero, so that dashboards see a model before its first request."""
        for metric in (
            self.batch_size,
            self.inference_seconds,
            self.rejected_items,
            self.skipped_items,
            self.cache_hits,
            self.cache_misses,
        ):
            metric.labels(model=model_id)


class LatencyMiddleware:
    """ASGI middleware that records each HTTP request's latency by route template.

    The route template (``/v1/banks/{bank}``), not the raw path, is the label, so that the
    number of series stays bounded whatever paths clients send.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )
