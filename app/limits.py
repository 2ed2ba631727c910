"""Request limits: body bytes (enforced while the body streams in), items and text length."""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge
from app.metrics import ServiceMetrics

logger = logging.getLogger(__name__)


def check_item_count(count: int, limit: int, field: str = "input") -> None:
    """Raise PayloadTooLarge when a request carries more than ``limit`` items."""
    if count > limit:
        raise PayloadTooLarge(f"{field} has {count} items; this service accepts at most {limit} per request")


def check_text_length(text: str, limit: int, where: str) -> None:
    """Raise PayloadTooLarge when the text at ``where`` (such as ``input[3]``) exceeds ``limit`` characters."""
    if len(text) > limit:
        raise PayloadTooLarge(f"{where}: text has {len(text)} characters; this service accepts at most {limit}")


class BodyLimitMiddleware:
    """ASGI middleware that responds 413 as soon as a request body passes ``max_bytes``.

    A declared Content-Length above the limit is rejected before any byte is read. A body
    without one (chunked transfer encoding) is counted while it streams in and rejected
    the moment it crosses the limit, so the service never buffers more than ``max_bytes``
    of it. Bodies under the limit are buffered, then replayed to the app unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, f"request body is {declared} bytes; this service accepts at most {self.max_bytes}")
            return

        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client disconnected before sending its body, so no response is sent
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._reject(send, f"request body exceeds {self.max_bytes} bytes, the most this service accepts")
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break

        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, send: Send, message: str) -> None:
        error = PayloadTooLarge(message)
        self.metrics.errors.labels(type=error.error_type).inc()
        logger.info("rejected request: %s", message)
        body = json.dumps({"error": {"type": error.error_type, "message": message}}).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """Return a receive callable that yields ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
