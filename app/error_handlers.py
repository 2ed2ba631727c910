"""Exception handlers that turn every failure into ``{"error": {"type", "message"}}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import InvalidInput, SchemaViolation, ServiceError
from app.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 5
HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Register the handlers on ``app``; each one counts its error type in ``metrics``."""

    def respond(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(type=error_type).inc()
        return JSONResponse({"error": {"type": error_type, "message": message}}, status_code=status, headers=headers)

    async def on_service_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ServiceError)
        if error.status >= 500:
            logger.warning("%s %s failed: %s: %s", request.method, request.url.path, error.error_type, error.message)
        return respond(error.status, error.error_type, error.message, error.headers)

    async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        problem = describe_validation_errors(error.errors())
        return respond(problem.status, problem.error_type, problem.message)

    async def on_http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        error_type = HTTP_ERROR_TYPES.get(error.status_code, "invalid_input" if error.status_code < 500 else "internal_error")
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif error.status_code == 400:
            message = describe_body_error(error.__cause__) or message
        return respond(error.status_code, error_type, message, dict(error.headers or {}))

    async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.error("%s %s raised an unexpected error", request.method, request.url.path, exc_info=error)
        return respond(500, "internal_error", "internal error; the service log has the details")

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)


def describe_validation_errors(errors: Sequence[dict[str, Any]]) -> ServiceError:
    """Summarise pydantic errors as one ServiceError: 400 for unparsable JSON, else 422.

    Each problem reads ``<field path>: <message>``, with list indices in brackets
    (``input[3]: text must not be empty``).
    """
    for error in errors:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "invalid syntax")
            position = error["loc"][1] if len(error.get("loc", ())) > 1 else "?"
            return InvalidInput(f"request body is not valid JSON: {detail} at character {position}")

    parts = [f"{format_location(error.get('loc', ()))}: {_message(error)}" for error in errors[:MAX_REPORTED_ERRORS]]
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more problems")
    return SchemaViolation("; ".join(parts) or "request does not match the schema")


def describe_body_error(cause: BaseException | None) -> str | None:
    """Describe why FastAPI could not parse a request body, or return None for other causes.

    FastAPI reports every parse failure other than invalid JSON syntax as "There was an
    error parsing the body" and chains the original exception.
    """
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        return f"request body is not valid {cause.encoding.upper()}: byte 0x{byte} at position {cause.start}; send UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "request body nests arrays or objects too deeply to parse"
    return None


def format_location(location: Sequence[str | int]) -> str:
    """Format a pydantic location such as ('body', 'input', 3) as ``input[3]``."""
    parts = list(location)
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return "request body" if text == "body" else text or "request"


def _message(error: dict[str, Any]) -> str:
    """Return the validator's own message for a ValueError, pydantic's message otherwise."""
    context = error.get("ctx") or {}
    if error.get("type") == "value_error" and "error" in context:
        return str(context["error"])
    if error.get("type") == "missing":
        return "field required"
    if error.get("type") == "extra_forbidden":
        return "unknown field; remove it"
    return str(error.get("msg", "invalid value"))
