"""LRU cache of raw embeddings, keyed by model id and a hash of the item's content."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CachedEmbedding:
    """A raw (not normalised) embedding (D,) float32 and the text accounting that produced it."""

    vector: np.ndarray
    tokens: int = 0
    truncated: bool = False


def content_key(model_id: str, kind: str, content: str | bytes) -> tuple[str, str]:
    """Return the cache key of ``content`` (a text or an encoded image) for ``model_id``."""
    # surrogatepass: JSON may carry lone surrogates, which strict UTF-8 cannot encode
    data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    digest = hashlib.sha256(kind.encode("ascii") + b"\0" + data).hexdigest()
    return model_id, digest


class EmbeddingCache:
    """Bounded least-recently-used map from content keys to CachedEmbedding.

    Used from the event loop only, so it needs no lock. ``max_entries`` 0 turns it off.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], CachedEmbedding] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> CachedEmbedding | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str], entry: CachedEmbedding) -> None:
        if not self.enabled:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
