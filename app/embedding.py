"""Items to embeddings: the one path every route takes to turn items into vectors.

The steps are: pick the model, check limits, look up the cache, decode images and
tokenize texts in the preprocessing thread pool, run the rest through the model's
dynamic batcher, then place client vectors and normalise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from app.cache import CachedEmbedding, content_key
from app.errors import InvalidInput, PayloadTooLarge, ServiceError, Timeout
from app.limits import check_item_count, check_text_length
from app.preprocess import decode_image_item
from app.registry import LoadedModel, ModelInput
from app.schemas import EmbeddingItem, ImageItem, ParsedItem, TextItem
from app.state import ServiceState
from training.artifact import ImagePreprocessing
from training.tokenizer import encode_texts

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Encoded image bytes that one preprocessing task decodes before the next item gets a task of its own.
DECODE_GROUP_BYTES = 64 * 1024


@dataclass
class EmbedResult:
    """Embeddings of a request's items, in order.

    ``embeddings`` is (N, D) float32. ``prompt_tokens`` counts the text tokens embedded
    (``[CLS]`` and ``[SEP]`` included, after truncation) and ``truncated_inputs`` the
    texts cut to the model's token budget.
    """

    model: LoadedModel
    embeddings: np.ndarray
    prompt_tokens: int = 0
    truncated_inputs: int = 0


async def embed_items(
    state: ServiceState,
    model_id: str | None,
    items: Sequence[ParsedItem],
    *,
    field: str = "input",
    allow_vectors: bool = False,
    normalize: bool | None = None,
) -> EmbedResult:
    """Embed ``items`` with the model ``model_id`` within the request timeout.

    Args:
        state: the app's ServiceState (``request.app.state.service``).
        model_id: the model to use; None picks the only loaded model of the items'
            modality, or the default model.
        items: parsed items (``app.schemas.Item``); EmbeddingItem vectors pass through.
        field: the request field the items came from, used in error messages
            (``input[3]: ...``).
        allow_vectors: whether EmbeddingItem vectors are accepted; each must have the
            model's width.
        normalize: L2-normalise every row; None uses the model's ``normalize`` setting.

    Returns an EmbedResult with embeddings (N, D) float32 in the order of ``items``.

    Raises app.errors.ServiceError subclasses:
        NotFound: unknown model.
        InvalidInput: an item the model cannot embed (wrong modality, wrong vector
            width, corrupt image).
        PayloadTooLarge: too many items, too large a text or image, or a text over the
            model's token budget with truncation off.
        UnsupportedMediaType: an unsupported image format.
        Overloaded: the batching queue is full.
        Timeout: the request took longer than ``request_timeout_s``.
    """
    check_item_count(len(items), state.settings.max_items_per_request, field)
    modality = items_modality(items, field, allow_vectors)
    model = resolve_model(state, model_id, modality, items, field)
    return await run_with_timeout(state, embed_with_model(state, model, items, field=field, normalize=normalize))


async def run_with_timeout(state: ServiceState, work: Awaitable[T]) -> T:
    """Await ``work`` for at most ``request_timeout_s``; raises Timeout (504) past it.

    On timeout the work is cancelled, so its items still queued are never computed.
    """
    timeout = state.settings.request_timeout_s
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError as error:
        raise Timeout(f"request took longer than {timeout:g} s; retry later or send fewer items") from error


def items_modality(items: Sequence[ParsedItem], field: str, allow_vectors: bool) -> str | None:
    """Return the one modality of the non-vector items, None when all are vectors.

    Raises InvalidInput for a vector where none are accepted, for text that is empty or
    only whitespace, and for mixed text and images.
    """
    modality = None
    first = -1
    for index, item in enumerate(items):
        if isinstance(item, TextItem) and not item.text.strip():
            raise InvalidInput(f"{field}[{index}]: text is empty or whitespace only")
        if isinstance(item, EmbeddingItem):
            if not allow_vectors:
                raise InvalidInput(f"{field}[{index}]: embedding vectors are not accepted here; send text or an image")
            continue
        if modality is None:
            modality, first = item.modality, index
        elif item.modality != modality:
            raise InvalidInput(
                f"{field}[{index}] is {item.modality} but {field}[{first}] is {modality}; "
                "one request embeds one modality, so send them separately"
            )
    return modality


def resolve_model(
    state: ServiceState, model_id: str | None, modality: str | None, items: Sequence[ParsedItem], field: str
) -> LoadedModel:
    """Return the model for ``items``; a named model of the wrong modality is an InvalidInput naming the item."""
    if model_id is None:
        return state.registry.resolve(None, modality)
    model = state.registry.get(model_id)
    if modality is not None and model.modality != modality:
        index = next(i for i, item in enumerate(items) if item.modality == modality)
        others = [m.id for m in state.registry.of_modality(modality)]
        raise InvalidInput(
            f"{field}[{index}] is {modality} but model {model.id!r} embeds {model.modality}; "
            f"send {model.modality} items or use {'an' if modality == 'image' else 'a'} {modality} model (loaded: {others})"
        )
    return model


async def embed_with_model(
    state: ServiceState,
    model: LoadedModel,
    items: Sequence[ParsedItem],
    *,
    field: str = "input",
    positions: Sequence[int] | None = None,
    normalize: bool | None = None,
) -> EmbedResult:
    """Embed ``items`` with ``model`` (already resolved); see embed_items for the contract.

    ``positions`` are the items' indices in the request field ``field``, for error
    messages, when ``items`` is a subset of it (default: 0 to N-1). Vectors are accepted
    whenever their width matches, so callers that do not accept vectors check with
    items_modality first. No timeout is applied.
    """
    settings = state.settings
    positions = list(positions) if positions is not None else list(range(len(items)))
    if len(positions) != len(items):
        raise ValueError(f"positions has {len(positions)} entries for {len(items)} items")
    embeddings = np.empty((len(items), model.dim), dtype=np.float32)  # (N, D)
    tokens = [0] * len(items)
    truncated = [False] * len(items)

    # vectors and cache hits need no forward pass
    pending: list[int] = []
    keys: dict[int, tuple[str, str]] = {}
    for index, item in enumerate(items):
        if isinstance(item, EmbeddingItem):
            embeddings[index] = _client_vector(item, model, f"{field}[{positions[index]}]")
            continue
        if isinstance(item, TextItem):
            check_text_length(item.text, settings.max_text_chars, f"{field}[{positions[index]}]")
        if state.cache.enabled:
            keys[index] = _cache_key(model, item)
            hit = state.cache.get(keys[index])
            if hit is not None:
                state.metrics.cache_hits.labels(model=model.id).inc()
                embeddings[index], tokens[index], truncated[index] = hit.vector, hit.tokens, hit.truncated
                continue
            state.metrics.cache_misses.labels(model=model.id).inc()
        pending.append(index)

    # the rest goes through preprocessing and the batcher
    if pending:
        where = [f"{field}[{positions[i]}]" for i in pending]
        inputs, counts, cut = await _preprocess(state, model, [items[i] for i in pending], where)
        raw = await state.batcher(model.id).submit(inputs)  # (len(pending), D)
        rows = raw.numpy()
        for row, index in enumerate(pending):
            embeddings[index] = rows[row]
            tokens[index], truncated[index] = counts[row], cut[row]
            if index in keys:
                state.cache.put(keys[index], CachedEmbedding(rows[row].copy(), counts[row], cut[row]))

    unit_norm = model.meta.normalize if normalize is None else normalize
    if unit_norm:
        embeddings = l2_normalize(embeddings)
    return EmbedResult(model, embeddings, prompt_tokens=sum(tokens), truncated_inputs=sum(truncated))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Return rows of ``vectors`` (N, D) scaled to unit L2 norm as float32; all-zero rows stay zero.

    Norms are computed in float64: in float32 the squares of values near the float32
    maximum overflow to inf and the squares of subnormal values underflow to zero.
    """
    wide = vectors.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)  # (N, 1)
    unit = np.divide(wide, norms, out=np.zeros_like(wide), where=norms > 0)
    return unit.astype(np.float32)


def _client_vector(item: EmbeddingItem, model: LoadedModel, where: str) -> np.ndarray:
    vector = np.asarray(item.embedding, dtype=np.float32)
    if vector.shape != (model.dim,):
        raise InvalidInput(f"{where}: embedding has {vector.shape[0]} values; model {model.id!r} expects {model.dim}")
    if not np.isfinite(vector).all():
        raise InvalidInput(f"{where}: embedding has values outside the float32 range")
    return vector


def _cache_key(model: LoadedModel, item: TextItem | ImageItem) -> tuple[str, str]:
    if isinstance(item, TextItem):
        return content_key(model.id, "text", item.text)
    return content_key(model.id, "image", item.image)


async def _preprocess(
    state: ServiceState, model: LoadedModel, items: list[ParsedItem], where: list[str]
) -> tuple[list[ModelInput], list[int], list[bool]]:
    """Return model inputs, token counts and truncation flags of ``items``, named ``where`` in errors."""
    loop = asyncio.get_running_loop()
    executor = state.preprocess_executor
    if model.modality == "text":
        texts = [item.text for item in items]
        inputs, counts, cut = await loop.run_in_executor(executor, _tokenize, model, texts)
        if not state.settings.truncate_text and any(cut):
            raise PayloadTooLarge(
                f"{where[cut.index(True)]}: text is longer than the {model.text_preprocessing.max_tokens} tokens "
                f"model {model.id!r} accepts; shorten it (truncation is off on this service)"
            )
        return inputs, counts, cut

    prep = model.image_preprocessing
    max_pixels = state.settings.max_image_pixels
    groups = decode_groups([len(item.image) for item in items])
    decoded_groups = await asyncio.gather(
        *(
            loop.run_in_executor(executor, _decode_images, [items[i].image for i in group], prep, max_pixels)
            for group in groups
        )
    )
    decoded = [result for results in decoded_groups for result in results]
    for name, result in zip(where, decoded):
        if isinstance(result, BaseException):
            raise _item_error(result, name)
    return decoded, [0] * len(items), [False] * len(items)


def decode_groups(sizes: Sequence[int], group_bytes: int = DECODE_GROUP_BYTES) -> list[list[int]]:
    """Split item indices 0..N-1 into runs of consecutive items, each decoded by one pool task.

    A run closes once its items' encoded sizes reach ``group_bytes``. Small images then
    share one thread hop, whose cost is larger than their decoding, while large ones get
    a task each and decode in parallel.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(sizes):
        current.append(index)
        total += size
        if total >= group_bytes:
            groups.append(current)
            current, total = [], 0
    if current:
        groups.append(current)
    return groups


def _decode_images(
    values: list[str | bytes], prep: ImagePreprocessing, max_pixels: int
) -> list[torch.Tensor | Exception]:
    """Decode each image of ``values`` to (C, H, W); an item that fails gives its exception instead."""
    decoded: list[torch.Tensor | Exception] = []
    for value in values:
        try:
            decoded.append(decode_image_item(value, prep, max_pixels))
        except Exception as error:  # reported per item by the caller, with the item's position
            decoded.append(error)
    return decoded


def _tokenize(model: LoadedModel, texts: list[str]) -> tuple[list[list[int]], list[int], list[bool]]:
    """Tokenize ``texts`` and return the unpadded token ids of each text, their lengths and truncation flags."""
    prep = model.text_preprocessing
    sequences, truncated = encode_texts(model.tokenizer, texts, prep.max_tokens, prep.lowercase)
    return sequences, [len(ids) for ids in sequences], truncated


def _item_error(error: BaseException, where: str) -> ServiceError:
    """Return ``error`` as a ServiceError of the same kind whose message starts with ``where``."""
    if isinstance(error, ServiceError):
        return type(error)(f"{where}: {error.message}") if type(error).__init__ is ServiceError.__init__ else error
    logger.warning("%s: image decoding raised %s: %s", where, type(error).__name__, error)
    return InvalidInput(f"{where}: image could not be decoded ({type(error).__name__}: {error})")
