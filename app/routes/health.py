"""Liveness, readiness and Prometheus metrics; public even when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.errors import NotReady
from app.routes import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Return 200 while the process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> dict[str, object]:
    """Return 200 once every model is loaded and warmed up and every batcher runs, else 503."""
    reason = state.not_ready_reason()
    if reason is not None:
        raise NotReady(f"not ready: {reason}")
    return {"status": "ready", "models": sorted(state.registry.models)}


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Return the service's metrics in the Prometheus text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
