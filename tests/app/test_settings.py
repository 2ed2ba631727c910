"""Settings: EMBED_ variables, flags over variables, and validators that reject unsafe values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.__main__ import build_parser, parse_settings
from app.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EMBED_"):
            monkeypatch.delenv(name)


def test_settings_defaults() -> None:
    settings = Settings()
    assert settings.models_dir == Path("models")
    assert settings.data_dir == Path("var")
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.max_batch_size == 128
    assert settings.truncate_text is True
    assert settings.api_key is None
    assert settings.cache_size == 0
    assert settings.bank_hnsw_min_size == 100_000
    assert settings.bank_hnsw_m == 32
    assert settings.bank_hnsw_ef_construction == 200
    assert settings.bank_hnsw_ef_search == 128


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("EMBED_TRUNCATE_TEXT", "false")
    monkeypatch.setenv("EMBED_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("EMBED_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.max_batch_size == 7
    assert settings.truncate_text is False
    assert settings.models_dir == Path("/srv/models")
    assert settings.log_level == "DEBUG"


def test_settings_empty_variable_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_API_KEY", "")
    assert Settings().api_key is None


def test_settings_api_key_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_API_KEY", "k" * 20)
    settings = Settings()
    assert settings.api_key.get_secret_value() == "k" * 20
    assert "k" * 20 not in repr(settings)


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_PORT", "9000")
    monkeypatch.setenv("EMBED_MAX_WAIT_MS", "3")
    settings = parse_settings(["--port", "9100", "--models-dir", "elsewhere", "--no-truncate-text"])
    assert settings.port == 9100
    assert settings.max_wait_ms == 3.0
    assert settings.models_dir == Path("elsewhere")
    assert settings.truncate_text is False


def test_flags_exclude_api_key() -> None:
    flags = {action.dest for action in build_parser()._actions}
    assert "api_key" not in flags
    assert {"models_dir", "data_dir", "host", "port", "faiss_threads"} <= flags


def test_flags_invalid_value_exits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_settings(["--max-batch-size", "0"])
    assert raised.value.code == 2
    assert "max_batch_size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"device": "tpu"}, "device 'tpu' is not supported"),
        ({"device": "cpu", "dtype": "float16"}, "dtype float16 needs a CUDA device"),
        ({"dtype": "float64"}, "dtype"),
        ({"api_key": "short"}, "at least 16 characters"),
        ({"api_key": "has a space in the key"}, "whitespace"),
        ({"max_items_per_request": 100, "max_queue_items": 10}, "must not exceed max_queue_items"),
        ({"max_wait_ms": 5000}, "max_wait_ms"),
        ({"max_request_bytes": 10}, "max_request_bytes"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"cache_size": -1}, "cache_size"),
        ({"on_model_error": "ignore"}, "on_model_error"),
        ({"host": "bad host;"}, "not an address"),
        ({"bank_hnsw_m": 1}, "bank_hnsw_m"),
        ({"unknown_option": 1}, "unknown_option"),
    ],
)
def test_settings_rejects(values: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**values)


def test_settings_cuda_device_index() -> None:
    assert Settings(device="CUDA:1", dtype="bfloat16").device == "cuda:1"


def test_settings_exposed_host() -> None:
    assert Settings(host="0.0.0.0").exposed
    assert not Settings().exposed
