"""Malformed, oversized and unusual images over HTTP, through every route that takes images.

Each bad image is sent as the second item after a good one, so the error must name
index 1 and the good item must not reach a bank either.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.reliability.conftest import Service
from tests.reliability.helpers import (
    RGB_MODEL,
    BadImage,
    animated_gif,
    b64,
    bad_images,
    bank_state,
    encode,
    error_of,
    exif_rotated_jpeg,
    good_images,
    noise,
)

ROUTES = ["embeddings", "upload", "samples", "score"]
BANK = "images"
GOOD = encode(noise(16, seed=7), "PNG")


@pytest.fixture(scope="module")
def bank(service: Service) -> str:
    """Create the module's bank of RGB images with three samples, so that it has a threshold."""
    created = service.client.put(f"/v1/banks/{BANK}", json={"model": RGB_MODEL, "k": 2})
    assert created.status_code == 201
    samples = [{"image": b64(encode(noise(16, seed=seed), "PNG"))} for seed in range(3)]
    added = service.client.post(f"/v1/banks/{BANK}/samples", json={"input": samples})
    assert added.status_code == 200
    return BANK


def send(service: Service, route: str, images: list[bytes], bank: str = BANK, data_url: bool = False):
    """Send ``images`` to ``route`` with the RGB model and return the response."""
    if route == "upload":
        files = [("files", (f"{index}.img", data, "application/octet-stream")) for index, data in enumerate(images)]
        return service.client.post("/v1/embeddings/upload", files=files, data={"model": RGB_MODEL})
    items = [{"image": b64(data, data_url)} for data in images]
    if route == "embeddings":
        return service.client.post("/v1/embeddings", json={"model": RGB_MODEL, "input": items})
    return service.client.post(f"/v1/banks/{bank}/{route}", json={"input": items})


def vectors_of(service: Service, route: str, images: list[bytes], data_url: bool = False) -> np.ndarray:
    response = send(service, route, images, data_url=data_url)
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]])


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", bad_images(), ids=lambda case: case.name)
def test_bad_image_rejected(service: Service, bank: str, route: str, case: BadImage) -> None:
    field = "files" if route == "upload" else "input"
    before = bank_state(service.client, service.data_dir, bank)
    response = send(service, route, [GOOD, case.data])
    after = bank_state(service.client, service.data_dir, bank)

    assert response.status_code == case.status
    assert error_of(response)["type"] == case.error_type
    assert error_of(response)["message"].startswith(f"{field}[1]: ")
    assert case.fragment in error_of(response)["message"]
    assert after == before


@pytest.mark.parametrize(
    ("route", "status", "message"),
    [
        ("embeddings", 422, 'input[1]: "image" must be a non-empty base64 string'),
        ("upload", 400, "files[1]: image is empty: expected image bytes"),
        ("samples", 422, 'input[1]: "image" must be a non-empty base64 string'),
        ("score", 422, 'input[1]: "image" must be a non-empty base64 string'),
    ],
)
def test_empty_image_rejected(service: Service, bank: str, route: str, status: int, message: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = send(service, route, [GOOD, b""])
    assert response.status_code == status
    assert error_of(response)["message"] == message
    assert bank_state(service.client, service.data_dir, bank) == before


def test_empty_data_url_rejected(service: Service) -> None:
    response = service.client.post(
        "/v1/embeddings", json={"model": RGB_MODEL, "input": [{"image": "data:image/png;base64,"}]}
    )
    assert response.status_code == 400
    assert error_of(response)["message"] == "input[0]: image is empty: expected base64-encoded image bytes"


@pytest.mark.parametrize("route", ["embeddings", "upload"])
@pytest.mark.parametrize("mode", list(good_images()))
def test_image_mode_embeds(service: Service, route: str, mode: str) -> None:
    embeddings = vectors_of(service, route, [good_images()[mode]])
    assert embeddings.shape == (1, 16)
    assert np.isfinite(embeddings).all()


def test_image_modes_bank_round_trip(service: Service) -> None:
    assert service.client.put("/v1/banks/modes", json={"model": RGB_MODEL}).status_code == 201
    images = list(good_images().values())
    added = send(service, "samples", images, bank="modes")
    scored = send(service, "score", images, bank="modes")
    assert added.status_code == 200
    assert added.json()["size"] == len(images)
    assert scored.status_code == 200
    assert [entry["index"] for entry in scored.json()["data"]] == list(range(len(images)))


@pytest.mark.parametrize("route", ["embeddings", "upload"])
def test_exif_rotation_matches_upright(service: Service, route: str) -> None:
    rotated, upright, sideways = exif_rotated_jpeg()
    embeddings = vectors_of(service, route, [rotated, upright, sideways])
    np.testing.assert_allclose(embeddings[0], embeddings[1], rtol=0, atol=1e-6)
    assert np.abs(embeddings[0] - embeddings[2]).max() > 1e-3


def test_exif_rotation_bank_score(service: Service, bank: str) -> None:
    rotated, upright, _ = exif_rotated_jpeg()
    response = send(service, "score", [rotated, upright])
    scores = [entry["score"] for entry in response.json()["data"]]
    assert response.status_code == 200
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


@pytest.mark.parametrize("route", ["embeddings", "upload"])
def test_animated_gif_first_frame(service: Service, route: str) -> None:
    animation, first_frame = animated_gif()
    embeddings = vectors_of(service, route, [animation, first_frame])
    np.testing.assert_allclose(embeddings[0], embeddings[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("route", ["embeddings", "score"])
def test_data_url_equals_plain_base64(service: Service, bank: str, route: str) -> None:
    plain = send(service, route, [GOOD]).json()["data"][0]
    prefixed = send(service, route, [GOOD], data_url=True).json()["data"][0]
    assert prefixed == plain
