"""The artifacts shipped in models/: they load, serve over real HTTP and stay small."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from app.settings import Settings
from tests.app.helpers import live_server
from training.artifact import load_artifact

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
ARTIFACTS = sorted(path for path in MODELS.iterdir() if (path / "model.json").is_file())


def digit_png_base64(index: int) -> str:
    """Render scikit-learn digit ``index`` (8x8, values 0..16) as a PNG, base64-encoded."""
    pixels = np.rint(load_digits().images[index] * 255 / 16).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_models_folder_under_20_mb():
    total = sum(path.stat().st_size for path in MODELS.rglob("*") if path.is_file())
    assert total < 20 * 1024 * 1024


def test_default_models_exist():
    assert any(json.loads((path / "model.json").read_text())["modality"] == "image" for path in ARTIFACTS)


@pytest.mark.parametrize("path", ARTIFACTS, ids=lambda path: path.name)
def test_default_model_records_command_and_metrics(path):
    meta = json.loads((path / "model.json").read_text())
    assert meta["training"]["command"].startswith("ssl-train ")
    assert meta["metrics"]
    assert meta["name"] == path.name


@pytest.mark.parametrize("path", ARTIFACTS, ids=lambda path: path.name)
def test_default_model_loads_on_cpu(path):
    artifact = load_artifact(path, "cpu")
    assert artifact.meta.embedding_dim == artifact.encoder.embedding_dim


def test_served_digit_embedding_has_declared_dim(tmp_path):
    meta = json.loads((MODELS / "digits-simclr" / "model.json").read_text())
    settings = Settings(models_dir=MODELS, data_dir=tmp_path / "var", torch_threads=1)
    with live_server(settings) as base_url:
        response = httpx.post(
            f"{base_url}/v1/embeddings",
            json={"model": "digits-simclr", "input": [{"image": digit_png_base64(0)}, {"image": "data:image/png;base64," + digit_png_base64(1)}]},
            timeout=30,
        )
    assert response.status_code == 200
    body = response.json()
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (2, meta["embedding_dim"])
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "item, fragment",
    [({"image": "not base64 at all!"}, "base64"), ({"image": base64.b64encode(b"plain text").decode()}, "image")],
)
def test_served_bad_image_is_named_4xx(tmp_path, item, fragment):
    settings = Settings(models_dir=MODELS, data_dir=tmp_path / "var", torch_threads=1)
    with live_server(settings) as base_url:
        response = httpx.post(f"{base_url}/v1/embeddings", json={"model": "digits-simclr", "input": [item]}, timeout=30)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
