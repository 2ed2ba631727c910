"""Optional bearer-token check for the /v1 routes."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import Unauthorized

SCHEME = "bearer"


async def require_api_key(request: Request) -> None:
    """Raise Unauthorized (401) unless the request carries ``Authorization: Bearer <api_key>``.

    Does nothing when no key is configured. The token is compared in constant time so
    that response timing does not reveal how much of a guess was right.
    """
    api_key = request.app.state.service.settings.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != SCHEME or not token:
        raise Unauthorized("missing API key; send the header 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    if not hmac.compare_digest(token.strip().encode("utf-8"), api_key.get_secret_value().encode("utf-8")):
        raise Unauthorized("invalid API key", headers=_CHALLENGE)


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
