"""Fixtures of the reliability tests: tiny real artifacts and a service on 127.0.0.1.

The artifacts are exported once per session, and each test module gets its own service
(uvicorn in a background thread) with its own data folder, so that modules never see
each other's banks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.app.helpers import export_image_model, export_text_model, live_server, make_settings
from tests.reliability.helpers import IMAGE_MODEL, RGB_MODEL, TEXT_MODEL


@dataclass
class Service:
    """A running service: its settings (data folder included) and a client bound to its URL."""

    settings: Settings
    client: httpx.Client

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


@pytest.fixture(scope="session")
def models_dir_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a models folder with a gray and an RGB image model and a text model, all of width 16."""
    path = tmp_path_factory.mktemp("reliability-models")
    export_image_model(path, IMAGE_MODEL)
    export_image_model(path, RGB_MODEL, channels=3, seed=1)
    export_text_model(path, TEXT_MODEL)
    return path


@pytest.fixture(scope="module")
def service(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Yield a service on 127.0.0.1 that serves every model of ``models_dir_all`` with default limits."""
    settings = make_settings(models_dir_all, tmp_path_factory.mktemp("reliability-data"))
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30.0) as client:
        yield Service(settings, client)
