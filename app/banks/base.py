"""Anomaly bank interface: bank settings, results and the abstract bank store.

A bank is a set of embeddings of normal samples from one model. A query's anomaly score
is its mean distance to the k nearest samples in the bank, and its threshold is a
percentile of the bank's own leave-one-out scores. Any vector engine that keeps these
semantics can implement ``BankStore``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.errors import InvalidInput, ServiceError

BANK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_K = 1024
MAX_SAMPLE_ID_LENGTH = 256

Metric = Literal["cosine", "l2"]


class BankUnavailable(ServiceError):
    """A bank exists on disk but could not be loaded (corrupt or unreadable files)."""

    status = 503
    error_type = "bank_unavailable"


class BankConfig(BaseModel):
    """Settings fixed when a bank is created: its model, the model's width and the scoring rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    dim: int = Field(gt=0)
    k: int = Field(default=5, ge=1, le=MAX_K)
    metric: Metric = "cosine"
    threshold_percentile: float = Field(default=95.0, ge=0.0, le=100.0)

    def differences(self, other: BankConfig) -> list[str]:
        """Return one phrase per setting where ``other`` differs from this config."""
        return [
            f"{name} is {getattr(self, name)!r}, requested {getattr(other, name)!r}"
            for name in type(self).model_fields
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass(frozen=True)
class BankInfo:
    """A bank's settings and state. ``config`` is None when its files could not be read."""

    name: str
    status: Literal["ready", "unavailable"]
    config: BankConfig | None = None
    size: int = 0
    threshold: float | None = None
    index: Literal["flat", "hnsw"] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form used by the HTTP API."""
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.config is not None:
            out.update(self.config.model_dump())
        out.update(size=self.size, threshold=self.threshold, index=self.index)
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class AddResult:
    """Outcome of an acknowledged add: new samples, their ids, bank size and threshold."""

    added: int
    ids: list[str]
    size: int
    threshold: float | None


@dataclass(frozen=True)
class Neighbor:
    """A bank sample near a query, with its distance (cosine: 1 - inner product; l2: Euclidean)."""

    id: str
    distance: float


@dataclass(frozen=True)
class ScoreResult:
    """Anomaly score of one query.

    ``score`` is the mean distance to the ``neighbors_used`` nearest samples, which is
    fewer than k when the bank contains k or fewer samples, and None for an empty bank.
    ``is_anomaly`` is ``score > threshold``, and None whenever the bank has no threshold
    (fewer than 2 samples).
    """

    score: float | None
    is_anomaly: bool | None
    threshold: float | None
    neighbors_used: int
    neighbors: list[Neighbor] = field(default_factory=list)


def validate_bank_name(name: str) -> str:
    """Return ``name`` when it is a valid bank name, else raise InvalidInput."""
    if not BANK_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(
            f"bank name {name!r} is invalid: use 1-64 letters, digits, '_', '.' or '-', and not '.' or '..'"
        )
    return name


class BankStore(ABC):
    """Named anomaly banks: create, inspect, delete, add samples and score queries.

    Methods are blocking and thread-safe; the service calls them from a thread pool.
    Errors are ServiceError subclasses (InvalidInput, NotFound, Conflict,
    BankUnavailable), and a failed call leaves every bank unchanged.
    """

    @abstractmethod
    def load(self) -> None:
        """Load every stored bank; a bank that cannot be read is kept as unavailable."""

    def close(self) -> None:
        """Release the store's locks and connections. The store is unusable afterwards."""

    @abstractmethod
    def create(self, name: str, config: BankConfig) -> tuple[BankInfo, bool]:
        """Create bank ``name``, or return it unchanged when it exists with ``config``.

        Returns the bank's info and whether it was created. Raises Conflict when the bank
        exists with other settings.
        """

    @abstractmethod
    def info(self, name: str) -> BankInfo:
        """Return the settings and state of bank ``name`` (NotFound, BankUnavailable)."""

    @abstractmethod
    def list_banks(self) -> list[BankInfo]:
        """Return every bank sorted by name, unavailable ones included."""

    @abstractmethod
    def delete(self, name: str) -> BankInfo:
        """Delete bank ``name`` with its stored files (an unavailable bank too); return its last info."""

    @abstractmethod
    def add(self, name: str, vectors: np.ndarray, ids: list[str] | None = None) -> AddResult:
        """Add normal samples (N, D) with optional unique string ids, then recompute the threshold.

        Returns once the samples are stored durably. Raises InvalidInput for a wrong width,
        non-finite values or invalid ids, and Conflict for an id already in the bank.
        """

    @abstractmethod
    def score(self, name: str, vectors: np.ndarray, return_neighbors: bool = False) -> list[ScoreResult]:
        """Score queries (N, D) against bank ``name``; each result is independent of the others."""
