"""Client vectors of the wrong width, empty, non-numeric, non-finite or at the float32 extremes."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.reliability.conftest import Service
from tests.reliability.helpers import IMAGE_MODEL, bank_state, error_of, vectors

BANK = "vectors"
GOOD = "[" + ", ".join(["0.5"] * 16) + "]"


@pytest.fixture(scope="module")
def bank(service: Service) -> str:
    assert service.client.put(f"/v1/banks/{BANK}", json={"model": IMAGE_MODEL, "k": 2}).status_code == 201
    assert service.client.post(f"/v1/banks/{BANK}/samples", json={"input": vectors(4, 16)}).status_code == 200
    return BANK


def post_vectors(service: Service, route: str, second: str) -> httpx.Response:
    """Send a good vector and then ``second`` (raw JSON text of the vector) to ``route``."""
    items = f'[{{"embedding": {GOOD}}}, {{"embedding": {second}}}]'
    if route == "similarity":
        body = f'{{"queries": {items}, "candidates": [{{"embedding": {GOOD}}}]}}'
        url = "/v1/similarity"
        field = "queries"
    else:
        body = f'{{"input": {items}}}'
        url = f"/v1/banks/{BANK}/{route}"
        field = "input"
    response = service.client.post(url, content=body.encode(), headers={"content-type": "application/json"})
    response.field = field  # type: ignore[attr-defined]
    return response


@pytest.mark.parametrize("route", ["samples", "score", "similarity"])
@pytest.mark.parametrize(
    ("second", "status", "fragment"),
    [
        ("[1, 2, 3]", 400, "embedding has 3 values"),
        ("[]", 422, '"embedding" must be a non-empty list of numbers'),
        ('"0.5"', 422, '"embedding" must be a non-empty list of numbers'),
        ('[0.5, "x"]', 422, '"embedding"[1] must be a number, got str'),
        ("[0.5, true]", 422, '"embedding"[1] must be a number, got bool'),
        ("[0.5, null]", 422, '"embedding"[1] must be a number, got NoneType'),
        ("[0.5, [1]]", 422, '"embedding"[1] must be a number, got list'),
        ("[0.5, NaN]", 422, '"embedding"[1] must be a finite number'),
        ("[Infinity, 0.5]", 422, '"embedding"[0] must be a finite number'),
        ("[-Infinity, 0.5]", 422, '"embedding"[0] must be a finite number'),
        ("[1e400, 0.5]", 422, '"embedding"[0] must be a finite number'),
        ("[" + "1" + "0" * 400 + ", 0.5]", 422, '"embedding"[0] must be a finite number'),
        ("[" + ", ".join(["1e39"] * 16) + "]", 422, '"embedding"[0] is 1e+39, outside the float32 range'),
    ],
    ids=[
        "wrong-width", "empty", "string", "string-value", "bool-value", "null-value", "nested",
        "nan", "infinity", "minus-infinity", "overflow-literal", "huge-integer", "above-float32",
    ],
)  # fmt: skip
def test_bad_vector_rejected(service: Service, bank: str, route: str, second: str, status: int, fragment: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = post_vectors(service, route, second)
    assert response.status_code == status
    assert error_of(response)["message"].startswith(f"{response.field}[1]")  # type: ignore[attr-defined]
    assert fragment in error_of(response)["message"]
    assert bank_state(service.client, service.data_dir, bank) == before


@pytest.mark.parametrize("route", ["samples", "score"])
def test_zero_vector_rejected_by_cosine_bank(service: Service, bank: str, route: str) -> None:
    before = bank_state(service.client, service.data_dir, bank)
    response = post_vectors(service, route, "[" + ", ".join(["0"] * 16) + "]")
    assert response.status_code == 400
    assert error_of(response)["message"] == "input[1]: vector has zero length, so it has no cosine distance"
    assert bank_state(service.client, service.data_dir, bank) == before


@pytest.mark.parametrize("value", [3e38, -3e38, 1e-40, 1e-45])
def test_extreme_vector_normalised(service: Service, value: float) -> None:
    """Vectors near the float32 maximum or subnormal still have cosine 1 with their own direction."""
    response = service.client.post(
        "/v1/similarity",
        json={"queries": [{"embedding": [value] * 16}], "candidates": [{"embedding": [np.sign(value)] * 16}]},
    )
    assert response.status_code == 200
    assert response.json()["scores"][0][0] == pytest.approx(1.0, abs=1e-6)


def test_extreme_vector_added_to_bank(service: Service) -> None:
    assert service.client.put("/v1/banks/extreme", json={"model": IMAGE_MODEL}).status_code == 201
    added = service.client.post("/v1/banks/extreme/samples", json={"input": [{"embedding": [3e38] * 16}, {"embedding": [1.0] * 16}]})
    scored = service.client.post("/v1/banks/extreme/score", json={"input": [{"embedding": [2.0] * 16}]})
    assert added.status_code == 200
    assert added.json()["threshold"] == pytest.approx(0.0, abs=1e-6)
    assert scored.json()["data"][0]["score"] == pytest.approx(0.0, abs=1e-6)


def test_vectors_rejected_by_embeddings(service: Service) -> None:
    response = service.client.post("/v1/embeddings", json={"model": IMAGE_MODEL, "input": [{"embedding": [0.5] * 16}]})
    assert response.status_code == 400
    assert error_of(response)["message"].startswith("input[0]: embedding vectors are not accepted here")
