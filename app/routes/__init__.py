"""HTTP routes, one module per resource, and the dependencies they share.

Route modules declare their ``router``; ``app.main`` includes them, adding the API-key
check to everything under ``/v1``.
"""

from __future__ import annotations

import asyncio
import email.message
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from app.errors import ClientClosedRequest, UnsupportedMediaType
from app.state import ServiceState

T = TypeVar("T")


async def get_state(request: Request) -> ServiceState:
    """Return the ServiceState the lifespan stored on the app."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def require_json(request: Request) -> None:
    """Raise UnsupportedMediaType (415) unless the body is declared as JSON."""
    declared = request.headers.get("content-type")
    if declared:
        header = email.message.Message()
        header["content-type"] = declared
        subtype = header.get_content_subtype()
        if header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json")):
            return
    raise UnsupportedMediaType(f"Content-Type must be application/json, got {declared or 'none'}")


JsonBody = Depends(require_json)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it when the client disconnects first.

    Cancelling leaves the request's items still queued in a batcher uncomputed. Call it
    only after the body has been read in full (FastAPI reads it before the handler runs),
    because it consumes the request's remaining ASGI messages.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientClosedRequest("client disconnected before the response was ready")
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
