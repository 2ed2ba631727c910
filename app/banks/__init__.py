"""Anomaly banks: normal samples of one model, scored by k-nearest-neighbour distance."""

from __future__ import annotations

from typing import Any

from app.banks.base import (
    AddResult,
    BankConfig,
    BankInfo,
    BankStore,
    BankUnavailable,
    Neighbor,
    ScoreResult,
    validate_bank_name,
)
from app.banks.faiss_store import FaissBankStore

__all__ = [
    "AddResult",
    "BankConfig",
    "BankInfo",
    "BankStore",
    "BankUnavailable",
    "FaissBankStore",
    "Neighbor",
    "ScoreResult",
    "create_bank_store",
    "validate_bank_name",
]

# Defaults for settings the service may not define. HNSW values are a common trade-off of
# recall against build and search time; tune them for the data.
DEFAULT_DATA_DIR = "var"
DEFAULT_HNSW_MIN_SIZE = 50_000
DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_CONSTRUCTION = 200
DEFAULT_HNSW_EF_SEARCH = 128
# Requests already run concurrently in a thread pool next to torch, so one OpenMP thread
# per FAISS call keeps the two from oversubscribing the cores.
DEFAULT_FAISS_THREADS = 1


def create_bank_store(settings: Any) -> BankStore:
    """Build the bank store from service settings and load every stored bank."""
    faiss_threads = getattr(settings, "faiss_threads", None) or DEFAULT_FAISS_THREADS
    store = FaissBankStore(
        getattr(settings, "data_dir", DEFAULT_DATA_DIR),
        hnsw_min_size=getattr(settings, "bank_hnsw_min_size", DEFAULT_HNSW_MIN_SIZE),
        hnsw_m=getattr(settings, "bank_hnsw_m", DEFAULT_HNSW_M),
        hnsw_ef_construction=getattr(settings, "bank_hnsw_ef_construction", DEFAULT_HNSW_EF_CONSTRUCTION),
        hnsw_ef_search=getattr(settings, "bank_hnsw_ef_search", DEFAULT_HNSW_EF_SEARCH),
        faiss_threads=faiss_threads,
    )
    store.load()
    return store
