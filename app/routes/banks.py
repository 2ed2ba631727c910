"""Anomaly banks under ``/v1/banks``: create, inspect, delete, add normal samples and score.

Items become vectors through the service's embedding path (``app.embedding``), so a bank
scores texts, images or client vectors exactly as its model embeds them. Bank store
calls block, so they run in worker threads off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.banks import BankConfig, BankInfo, BankStore, ScoreResult
from app.banks.base import MAX_K, MAX_SAMPLE_ID_LENGTH
from app.embedding import embed_items, run_with_timeout
from app.errors import InvalidInput, NotFound, NotReady
from app.routes import JsonBody, StateDep, cancel_on_disconnect
from app.schemas import Item, as_item_list
from app.state import ServiceState

router = APIRouter(tags=["banks"])


class BankCreateRequest(BaseModel):
    """Body of PUT /v1/banks/{bank}."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model whose embeddings the bank keeps, optional when one model is loaded")
    k: int = Field(5, ge=1, le=MAX_K, description="nearest samples averaged into a score")
    metric: Literal["cosine", "l2"] = Field("cosine", description="cosine (1 - cosine similarity) or l2 (Euclidean) distance")
    threshold_percentile: float = Field(
        95.0, ge=0.0, le=100.0, description="percentile of the bank's leave-one-out scores used as threshold"
    )


class SamplesRequest(BaseModel):
    """Body of POST /v1/banks/{bank}/samples."""

    model_config = ConfigDict(extra="forbid")

    input: list[Item] = Field(min_length=1, description="normal samples: texts, images or vectors")
    ids: list[str] | None = Field(
        None, description=f"one unique id of 1-{MAX_SAMPLE_ID_LENGTH} characters per item, generated when absent"
    )

    _wrap_input = field_validator("input", mode="before")(as_item_list)


class ScoreRequest(BaseModel):
    """Body of POST /v1/banks/{bank}/score."""

    model_config = ConfigDict(extra="forbid")

    input: list[Item] = Field(min_length=1, description="items to score: texts, images or vectors")
    return_neighbors: bool = Field(False, description="also return the nearest samples with their distances")

    _wrap_input = field_validator("input", mode="before")(as_item_list)


@router.put("/v1/banks/{bank}", dependencies=[JsonBody])
async def create_bank(bank: str, body: BankCreateRequest, state: StateDep) -> JSONResponse:
    """Create a bank for one model: 201 when created, 200 when it exists with these settings, 409 otherwise."""
    store = bank_store(state)
    model = state.registry.resolve(body.model, None)
    config = BankConfig(
        model=model.id, dim=model.dim, k=body.k, metric=body.metric, threshold_percentile=body.threshold_percentile
    )
    info, created = await asyncio.to_thread(store.create, bank, config)
    return JSONResponse(info.to_dict(), status_code=201 if created else 200)


@router.get("/v1/banks")
async def list_banks(state: StateDep) -> dict[str, Any]:
    """List every bank with its settings, size and threshold. Unreadable banks show ``status`` unavailable."""
    infos = await asyncio.to_thread(bank_store(state).list_banks)
    return {"data": [info.to_dict() for info in infos]}


@router.get("/v1/banks/{bank}")
async def get_bank(bank: str, state: StateDep) -> dict[str, Any]:
    """Return a bank's settings, size, threshold and index kind."""
    info = await asyncio.to_thread(bank_store(state).info, bank)
    return info.to_dict()


@router.delete("/v1/banks/{bank}")
async def delete_bank(bank: str, state: StateDep) -> dict[str, Any]:
    """Delete a bank with its stored samples and return what it was."""
    info = await asyncio.to_thread(bank_store(state).delete, bank)
    return {**info.to_dict(), "deleted": True}


@router.post("/v1/banks/{bank}/samples", dependencies=[JsonBody])
async def add_samples(bank: str, body: SamplesRequest, request: Request, state: StateDep) -> dict[str, Any]:
    """Embed normal samples and add them, recomputing the threshold before the response.

    The samples are stored durably once this returns 200. Embedding is cancelled when the
    client disconnects or the request times out, but an add that has started completes.
    """
    store = bank_store(state)
    info = await asyncio.to_thread(store.info, bank)
    if body.ids is not None and len(body.ids) != len(body.input):
        raise InvalidInput(f"ids has {len(body.ids)} entries for {len(body.input)} input items: send one id per item, or none")

    vectors = await cancel_on_disconnect(request, embed_for_bank(state, info, body.input))
    result = await asyncio.shield(asyncio.to_thread(store.add, bank, vectors, body.ids))
    return {"added": result.added, "ids": result.ids, "size": result.size, "threshold": result.threshold}


@router.post("/v1/banks/{bank}/score", dependencies=[JsonBody])
async def score_items(bank: str, body: ScoreRequest, request: Request, state: StateDep) -> dict[str, Any]:
    """Score items by their mean distance to the bank's k nearest samples.

    ``is_anomaly`` is ``score > threshold``, and null while the bank has fewer than two
    samples (no threshold yet). ``neighbors_used`` is below k when the bank contains k
    or fewer samples.
    """
    store = bank_store(state)
    info = await asyncio.to_thread(store.info, bank)

    async def score() -> list[ScoreResult]:
        vectors = await embed_for_bank(state, info, body.input)
        return await asyncio.to_thread(store.score, bank, vectors, body.return_neighbors)

    results = await cancel_on_disconnect(request, run_with_timeout(state, score()))
    data = [score_body(index, result, body.return_neighbors) for index, result in enumerate(results)]
    return {"bank": bank, "model": info.config.model if info.config else None, "data": data}


def bank_store(state: ServiceState) -> BankStore:
    """Return the app's bank store; raises NotReady (503) when the service runs without one."""
    if state.banks is None:
        raise NotReady("anomaly banks are not available on this service because the bank store did not start (see the service log)")
    return state.banks


async def embed_for_bank(state: ServiceState, info: BankInfo, items: list[Any]) -> np.ndarray:
    """Embed ``items`` with the bank's model and return vectors (N, D) float32."""
    assert info.config is not None  # store.info raises for unavailable banks
    model_id = info.config.model
    if model_id not in state.registry.models:
        raise NotFound(
            f"model {model_id!r} of bank {info.name!r} is not loaded, so the bank cannot embed items: serve that model again"
        )
    result = await embed_items(state, model_id, items, field="input", allow_vectors=True)
    return result.embeddings


def score_body(index: int, result: ScoreResult, return_neighbors: bool) -> dict[str, Any]:
    """Build one entry of the score response."""
    entry: dict[str, Any] = {
        "index": index,
        "score": result.score,
        "is_anomaly": result.is_anomaly,
        "threshold": result.threshold,
        "neighbors_used": result.neighbors_used,
    }
    if return_neighbors:
        entry["neighbors"] = [{"id": neighbor.id, "distance": neighbor.distance} for neighbor in result.neighbors]
    return entry
