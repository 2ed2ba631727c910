"""The official openai client against the service under uvicorn on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from app.settings import Settings
from tests.app.helpers import export_text_model, live_server, make_settings

TEXT_MODEL = "tiny-text"
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("openai")
    export_text_model(root / "models", TEXT_MODEL)
    settings: Settings = make_settings(root / "models", root / "var", api_key=API_KEY)
    with live_server(settings) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=10.0) as client:
        yield client


def test_openai_default_base64(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=TEXT_MODEL, input=["a cat", "a dog"])
    assert response.model == TEXT_MODEL
    assert [item.index for item in response.data] == [0, 1]
    assert len(response.data[0].embedding) == 16
    assert np.linalg.norm(response.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert response.usage.prompt_tokens > 0


def test_openai_float_matches_base64(client: openai.OpenAI) -> None:
    as_float = client.embeddings.create(model=TEXT_MODEL, input="a cat", encoding_format="float")
    as_default = client.embeddings.create(model=TEXT_MODEL, input="a cat")
    np.testing.assert_allclose(as_float.data[0].embedding, as_default.data[0].embedding, rtol=0, atol=1e-7)


def test_openai_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [TEXT_MODEL]


def test_openai_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="nope", input="a cat")
    assert raised.value.status_code == 404


def test_openai_wrong_key(base_url: str) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong-key-0123456789", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.embeddings.create(model=TEXT_MODEL, input="a cat")


def test_openai_token_ids_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.embeddings.create(model=TEXT_MODEL, input=[[1, 2, 3]])
    assert "token ids are not supported" in str(raised.value)


def test_live_server_healthz(base_url: str) -> None:
    response = httpx.get(f"{base_url}/healthz", timeout=5.0)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
