"""State of one running service: settings, models, batchers, cache, metrics and banks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.banks import BankStore
from app.batching import DynamicBatcher
from app.cache import EmbeddingCache
from app.errors import NotReady
from app.metrics import ServiceMetrics
from app.registry import ModelRegistry
from app.settings import Settings


@dataclass
class ServiceState:
    """The state of one app, stored as ``app.state.service`` by the lifespan.

    ``preprocess_executor`` decodes images and tokenizes texts off the event loop.
    ``banks`` is the anomaly bank store, or None when the app runs without one.
    """

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry = field(default_factory=ModelRegistry)
    batchers: dict[str, DynamicBatcher] = field(default_factory=dict)
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(0))
    preprocess_executor: ThreadPoolExecutor | None = None
    banks: BankStore | None = None
    ready: bool = False

    def batcher(self, model_id: str) -> DynamicBatcher:
        """Return the running batcher of ``model_id``; raises NotReady while start-up is still going."""
        batcher = self.batchers.get(model_id)
        if batcher is None or not self.ready:
            raise NotReady(f"model {model_id} is not ready yet; retry once /readyz returns 200")
        return batcher

    def not_ready_reason(self) -> str | None:
        """Return why the service cannot serve every model now, or None when it can."""
        if not self.ready:
            return "models are still loading and warming up"
        dead = sorted(model_id for model_id, batcher in self.batchers.items() if not batcher.alive)
        if dead:
            return f"the batching worker of {dead} stopped; restart the service"
        return None
