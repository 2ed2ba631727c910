"""HTTP routes of the anomaly banks under ``/v1/banks``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
