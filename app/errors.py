"""Errors that map to HTTP responses of the form {"error": {"type", "message"}}."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``error_type`` the machine-readable kind."""

    status = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status = 400
    error_type = "invalid_input"


class Unauthorized(ServiceError):
    status = 401
    error_type = "unauthorized"


class NotFound(ServiceError):
    status = 404
    error_type = "not_found"


class Conflict(ServiceError):
    status = 409
    error_type = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    error_type = "payload_too_large"


class HeadersTooLarge(ServiceError):
    status = 431
    error_type = "headers_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    error_type = "unsupported_media_type"


class SchemaViolation(ServiceError):
    status = 422
    error_type = "schema_violation"


class Overloaded(ServiceError):
    status = 503
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    status = 503
    error_type = "not_ready"


class Timeout(ServiceError):
    status = 504
    error_type = "timeout"


class ClientClosedRequest(ServiceError):
    """The client disconnected before the response was ready, so nothing reads it."""

    status = 499
    error_type = "client_closed_request"


class InferenceFailed(ServiceError):
    """A forward pass raised; the batch's requests fail and the worker goes on."""

    status = 500
    error_type = "inference_failed"
