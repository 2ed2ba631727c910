"""POST /v1/embeddings (OpenAI shape) and POST /v1/embeddings/upload (multipart images)."""

from __future__ import annotations

import base64
import email.message
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from app.embedding import EmbedResult, embed_items, items_modality, resolve_model
from app.errors import InvalidInput, UnsupportedMediaType
from app.limits import check_item_count
from app.responses import FastJSONResponse
from app.routes import JsonBody, StateDep, cancel_on_disconnect
from app.schemas import EmbeddingsRequest, EmbeddingsResponse, ImageItem

router = APIRouter(tags=["embeddings"])

# Upload parts declared with these types are decoded; anything else declared is a 415.
GENERIC_UPLOAD_TYPES = {"application/octet-stream", ""}


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=[JsonBody])
async def create_embeddings(body: EmbeddingsRequest, request: Request, state: StateDep) -> FastJSONResponse:
    """Embed texts or images; request and response follow OpenAI's embeddings API."""
    check_item_count(len(body.input), state.settings.max_items_per_request)
    modality = items_modality(body.input, "input", allow_vectors=False)
    model = resolve_model(state, body.model, modality, body.input, "input")
    if body.dimensions is not None and body.dimensions != model.dim:
        raise InvalidInput(f"dimensions {body.dimensions} is not available; model {model.id!r} returns {model.dim}")

    work = embed_items(state, model.id, body.input, normalize=body.normalize)
    result = await cancel_on_disconnect(request, work)
    return FastJSONResponse(embeddings_body(result, body.encoding_format))


async def require_multipart(request: Request) -> None:
    """Raise UnsupportedMediaType (415) unless the body is multipart/form-data."""
    header = email.message.Message()
    header["content-type"] = request.headers.get("content-type", "")
    if header.get_content_type() != "multipart/form-data":
        declared = request.headers.get("content-type") or "none"
        raise UnsupportedMediaType(f"Content-Type must be multipart/form-data with image parts named files, got {declared}")


@router.post("/v1/embeddings/upload", response_model=EmbeddingsResponse, dependencies=[Depends(require_multipart)])
async def upload_embeddings(
    request: Request,
    state: StateDep,
    files: Annotated[list[UploadFile], File(description="one or more image files")],
    model: Annotated[str | None, Form(description="model id; optional when one image model fits")] = None,
    encoding_format: Annotated[Literal["float", "base64"], Form()] = "float",
    normalize: Annotated[bool | None, Form()] = None,
) -> FastJSONResponse:
    """Embed uploaded image files; the response is the same as for POST /v1/embeddings."""
    check_item_count(len(files), state.settings.max_items_per_request, "files")
    items = []
    for index, upload in enumerate(files):
        declared = (upload.content_type or "").split(";")[0].strip().lower()
        if not declared.startswith("image/") and declared not in GENERIC_UPLOAD_TYPES:
            raise UnsupportedMediaType(f"files[{index}] ({upload.filename}) is declared as {declared}; send image files")
        items.append(ImageItem(await upload.read()))

    work = embed_items(state, model or None, items, field="files", normalize=normalize)
    result = await cancel_on_disconnect(request, work)
    return FastJSONResponse(embeddings_body(result, encoding_format))


def embeddings_body(result: EmbedResult, encoding_format: str) -> dict[str, Any]:
    """Build the OpenAI-shaped response body; base64 encodes the little-endian float32 bytes of each vector."""
    data = []
    for index, row in enumerate(result.embeddings):
        if encoding_format == "base64":
            value: Any = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            value = row.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "total_tokens": result.prompt_tokens,
        "truncated_inputs": result.truncated_inputs,
    }
    return {"object": "list", "model": result.model.id, "data": data, "usage": usage}
