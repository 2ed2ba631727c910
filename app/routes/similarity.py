"""POST /v1/similarity: cosine scores between queries and candidates, optionally top-k."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from app.embedding import embed_with_model, l2_normalize, run_with_timeout
from app.errors import InvalidInput, PayloadTooLarge
from app.limits import check_item_count
from app.registry import LoadedModel
from app.responses import FastJSONResponse
from app.routes import JsonBody, StateDep, cancel_on_disconnect
from app.schemas import EmbeddingItem, ParsedItem, SimilarityRequest, SimilarityResponse
from app.state import ServiceState

router = APIRouter(tags=["similarity"])

# Maximum size of the score matrix of one response (about 20 MB of JSON at this size).
MAX_SCORES = 1_000_000


@router.post("/v1/similarity", response_model=SimilarityResponse, dependencies=[JsonBody])
async def similarity(body: SimilarityRequest, request: Request, state: StateDep) -> FastJSONResponse:
    """Score every query against every candidate by cosine similarity.

    Items of different modalities are compared only when their models share a space.
    Raw vectors must have that space's width.
    """
    check_item_count(len(body.queries) + len(body.candidates), state.settings.max_items_per_request, "queries and candidates")
    if len(body.queries) * len(body.candidates) > MAX_SCORES:
        raise PayloadTooLarge(
            f"{len(body.queries)} queries x {len(body.candidates)} candidates is more than {MAX_SCORES} scores; split the request"
        )
    models = resolve_space(state, body.model, [*body.queries, *body.candidates])
    width = vector_width(body, models)

    async def score() -> np.ndarray:
        queries, candidates = await asyncio.gather(
            embed_side(state, models, body.queries, "queries", width),
            embed_side(state, models, body.candidates, "candidates", width),
        )
        return queries @ candidates.T  # (Q, D) @ (D, C) -> (Q, C)

    scores = await cancel_on_disconnect(request, run_with_timeout(state, score()))
    content: dict[str, Any] = {"models": sorted(model.id for model in models.values()), "scores": scores.tolist()}
    if body.top_k is not None:
        content["matches"] = top_matches(scores, body.top_k)
    return FastJSONResponse(content)


def resolve_space(state: ServiceState, model_id: str | None, items: Sequence[ParsedItem]) -> dict[str, LoadedModel]:
    """Return the model of each modality present in ``items``, all in one space.

    A named model serves its own modality; the other modality uses the model that shares
    its space. Without a name each modality takes its only (or default) model. Raises
    InvalidInput when the models found live in different spaces.
    """
    registry = state.registry
    named = registry.get(model_id) if model_id is not None else None
    modalities = sorted({item.modality for item in items if item.modality is not None})
    models = {}
    for modality in modalities:
        models[modality] = registry.partner(named, modality) if named is not None else registry.resolve(None, modality)

    chosen = list(models.values())
    if named is not None and named not in chosen:
        chosen.append(named)
    for other in chosen[1:]:
        if other.space != chosen[0].space:
            raise InvalidInput(
                f"cross-modal similarity needs models that share a space: model {chosen[0].id!r} is in space "
                f"{chosen[0].space!r} and model {other.id!r} in space {other.space!r}"
            )
        if other.dim != chosen[0].dim:
            raise InvalidInput(
                f"models {chosen[0].id!r} ({chosen[0].dim}) and {other.id!r} ({other.dim}) share a space "
                "but not a width, so their embeddings cannot be compared"
            )
    if named is not None and not models:
        models[named.modality] = named
    return models


def vector_width(body: SimilarityRequest, models: dict[str, LoadedModel]) -> int:
    """Return the embedding width of the request; every raw vector must match it."""
    if models:
        return next(iter(models.values())).dim
    first = body.queries[0]
    assert isinstance(first, EmbeddingItem)  # no model means every item is a vector
    return len(first.embedding)


async def embed_side(
    state: ServiceState, models: dict[str, LoadedModel], items: list[ParsedItem], field: str, width: int
) -> np.ndarray:
    """Embed one side (queries or candidates) and return unit-norm rows (N, D) float32."""
    vectors = np.empty((len(items), width), dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, EmbeddingItem):
            vectors[index] = _client_vector(item, width, f"{field}[{index}]", models)
        else:
            groups.setdefault(item.modality, []).append(index)

    results = await asyncio.gather(
        *(
            embed_with_model(state, models[modality], [items[i] for i in positions], field=field, positions=positions)
            for modality, positions in groups.items()
        )
    )
    for positions, result in zip(groups.values(), results):
        vectors[positions] = result.embeddings
    return l2_normalize(vectors)


def _client_vector(item: EmbeddingItem, width: int, where: str, models: dict[str, LoadedModel]) -> np.ndarray:
    vector = np.asarray(item.embedding, dtype=np.float32)
    if vector.shape != (width,):
        source = f"the width of model {next(iter(models.values())).id!r}" if models else "the width of queries[0]"
        raise InvalidInput(f"{where}: embedding has {vector.shape[0]} values; expected {width}, {source}")
    if not np.isfinite(vector).all():
        raise InvalidInput(f"{where}: embedding has values outside the float32 range")
    return vector


def top_matches(scores: np.ndarray, top_k: int) -> list[list[dict[str, float | int]]]:
    """Return the ``top_k`` best candidates of each query (Q, C), best first; ties keep candidate order."""
    k = min(top_k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return [[{"index": int(c), "score": float(row[c])} for c in ranks] for row, ranks in zip(scores, order)]
