"""Request and response bodies of the HTTP API, and the items they carry.

An item is a text string, ``{"text": str}``, ``{"image": str}`` (base64, with or without a
``data:image/...;base64,`` prefix) or ``{"embedding": [float, ...]}``. Items are parsed into
the frozen dataclasses below by one validator so that a malformed item yields one
message naming its index, instead of one error per union member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, field_validator

# Vectors are computed in float32, so larger magnitudes would turn into infinities.
FLOAT32_MAX = 3.4028234663852886e38
ITEM_SHAPES = 'a string, {"text": str}, {"image": base64 str} or {"embedding": [float, ...]}'


@dataclass(frozen=True)
class TextItem:
    """A text to embed."""

    text: str

    modality = "text"


@dataclass(frozen=True)
class ImageItem:
    """An encoded image: base64 text (optionally a data URL) or raw file bytes from an upload."""

    image: str | bytes

    modality = "image"


@dataclass(frozen=True)
class EmbeddingItem:
    """A vector the client computed already, shape (D,)."""

    embedding: tuple[float, ...]

    modality = None


ParsedItem = Union[TextItem, ImageItem, EmbeddingItem]


def parse_item(raw: Any) -> ParsedItem:
    """Turn one JSON item into a TextItem, ImageItem or EmbeddingItem.

    Raises ValueError with a message that names the problem and lists the valid shapes.
    """
    if isinstance(raw, (TextItem, ImageItem, EmbeddingItem)):
        return raw
    if isinstance(raw, str):
        return _text_item(raw)
    if isinstance(raw, (bool, int, float)) or (isinstance(raw, list) and all(isinstance(v, int) for v in raw)):
        raise ValueError(f"token ids are not supported; expected {ITEM_SHAPES}")
    if not isinstance(raw, dict):
        raise ValueError(f"expected {ITEM_SHAPES}, got {type(raw).__name__}")

    keys = sorted(raw)
    if keys == ["text"]:
        if not isinstance(raw["text"], str):
            raise ValueError(f'"text" must be a string, got {type(raw["text"]).__name__}')
        return _text_item(raw["text"])
    if keys == ["image"]:
        if not isinstance(raw["image"], str) or not raw["image"]:
            raise ValueError('"image" must be a non-empty base64 string')
        return ImageItem(raw["image"])
    if keys == ["embedding"]:
        return EmbeddingItem(_vector(raw["embedding"]))
    raise ValueError(f"expected {ITEM_SHAPES}, got an object with keys {keys}")


def _text_item(text: str) -> TextItem:
    # Empty and whitespace-only texts are well-formed, so they pass the schema. Embedding
    # rejects them with a 400 that names the item, because they carry nothing to embed.
    return TextItem(text)


def _vector(values: Any) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise ValueError('"embedding" must be a non-empty list of numbers')
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'"embedding"[{position}] must be a number, got {type(value).__name__}')
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer literal too large for a float
            finite = False
        if not finite:
            raise ValueError(f'"embedding"[{position}] must be a finite number')
        if abs(value) > FLOAT32_MAX:
            raise ValueError(f'"embedding"[{position}] is {value:g}, outside the float32 range of +-{FLOAT32_MAX:.4g}')
    return tuple(float(value) for value in values)


ITEM_JSON_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        {"type": "object", "properties": {"image": {"type": "string", "contentEncoding": "base64"}}, "required": ["image"]},
        {
            "type": "object",
            "properties": {"embedding": {"type": "array", "items": {"type": "number"}}},
            "required": ["embedding"],
        },
    ]
}

# One item in a request body; use ``list[Item]`` in request models of other routes.
Item = Annotated[ParsedItem, PlainValidator(parse_item), WithJsonSchema(ITEM_JSON_SCHEMA)]


def as_item_list(value: Any) -> Any:
    """Wrap a single item in a list so that ``"input": "text"`` and ``["text"]`` both work."""
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]  # one token-id array, rejected with a clear message by parse_item
    if isinstance(value, list):
        return value
    return [value]


class EmbeddingsRequest(BaseModel):
    """Body of POST /v1/embeddings (the OpenAI shape plus ``normalize``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model id; optional when one model fits the input")
    input: list[Item] = Field(min_length=1, description="one item or a list of items")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float lists, or base64 of little-endian float32 bytes"
    )
    normalize: bool | None = Field(None, description="L2-normalise; default is the model's own setting")
    dimensions: int | None = Field(None, gt=0, description="accepted only when equal to the model's width")
    user: str | None = Field(None, description="accepted for OpenAI compatibility and ignored")

    _wrap_input = field_validator("input", mode="before")(as_item_list)


class SimilarityRequest(BaseModel):
    """Body of POST /v1/similarity."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model id; items of the other modality use its space partner")
    queries: list[Item] = Field(min_length=1)
    candidates: list[Item] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, description="also return the top_k best candidates per query")

    _wrap_queries = field_validator("queries", "candidates", mode="before")(as_item_list)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="text tokens embedded, after truncation")
    total_tokens: int
    truncated_inputs: int = Field(0, description="text items cut to the model's token budget")


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[EmbeddingData]
    usage: Usage


class Match(BaseModel):
    index: int
    score: float


class SimilarityResponse(BaseModel):
    models: list[str] = Field(description="models that embedded the items")
    scores: list[list[float]] = Field(description="cosine similarity, queries x candidates")
    matches: list[list[Match]] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    modality: Literal["image", "text"]
    dim: int
    space: str
    method: str
    normalize: bool
    default: bool
    metrics: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
