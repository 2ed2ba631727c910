"""Fixtures of the service tests: a models folder with a tiny image model, and a started app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.app.helpers import export_image_model, make_settings, running_app

IMAGE_MODEL = "tiny-image"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """Return an empty models folder under tmp_path."""
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def image_model_settings(tmp_path: Path, models_dir: Path) -> Settings:
    """Return Settings whose models folder contains one tiny image model, ``tiny-image`` (1 channel, 8 px, dim 16)."""
    export_image_model(models_dir, IMAGE_MODEL)
    return make_settings(models_dir, tmp_path / "var")


@pytest.fixture
async def service_client(image_model_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Yield an httpx client on a started app (lifespan run) serving ``image_model_settings``."""
    async with running_app(image_model_settings) as (_, client):
        yield client
