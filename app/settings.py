"""Service settings: one pydantic-settings class, read from ``EMBED_*`` variables and flags.

Every field is also a command-line flag of ``ssl-serve`` (``--max-batch-size`` for
``max_batch_size``) except ``api_key``, which only comes from the environment so that it
never shows in a process list. Validators reject values that would make the service
unsafe or unusable, such as a queue smaller than one request or half precision on a CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "EMBED_"
MIN_API_KEY_CHARS = 16
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
HOST_PATTERN = re.compile(r"^[A-Za-z0-9.:\-\[\]]+$")


class Settings(BaseSettings):
    """Everything ``ssl-serve`` can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        validate_default=True,
    )

    # where artifacts and state live, and where to listen
    models_dir: Path = Field(Path("models"), description="folder of model artifacts, one sub-folder each")
    data_dir: Path = Field(Path("var"), description="folder for service state such as anomaly banks")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the service to the network")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to bind")
    http: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="HTTP/1.1 parser: auto picks httptools (written in C) when installed, else h11"
    )
    loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="event loop: auto picks uvloop when installed, else asyncio's own"
    )

    # models and inference
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="weight and activation type; float16 and bfloat16 need CUDA"
    )
    default_model: str | None = Field(
        None,
        description=(
            "models used when a request names none and several fit: comma-separated ids, at most one per "
            "modality; without it, an artifact whose model.json has \"default\": true is picked"
        ),
    )
    on_model_error: Literal["skip", "fail"] = Field(
        "skip", description="skip an invalid artifact (logged) or fail start-up"
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description=(
            "intra-op threads of a forward pass that runs alone, split among passes that run at once; "
            "0 picks the CPU count minus one, at least one"
        ),
    )
    large_batch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description=(
            "intra-op threads for batches of at least large_batch_items; 0 picks the CPU count when torch_threads "
            "is 0 too, else torch_threads"
        ),
    )
    large_batch_items: int = Field(
        8, ge=0, le=4096, description="batch size from which large_batch_threads apply; 0 never"
    )
    inference_streams: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "forward passes of one model that may run at once, each in its own thread, splitting the thread counts; "
            "0 picks 2 on a CPU device with at least 2 cores, else 1"
        ),
    )
    preprocess_threads: int = Field(
        0, ge=0, le=256, description="threads that decode images and tokenize text; 0 picks min(4, CPU count)"
    )

    # dynamic batching
    max_batch_size: int = Field(128, ge=1, le=4096, description="maximum items in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0, description="maximum wait for a batch to fill, in ms")
    max_queue_items: int = Field(2048, ge=1, le=1_000_000, description="items waiting per model before 503")
    request_timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="per-request time budget, in seconds")

    # request limits
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=1024**3, description="largest request body, in bytes"
    )
    max_items_per_request: int = Field(256, ge=1, le=100_000, description="maximum items in one request")
    max_text_chars: int = Field(20_000, ge=1, le=10_000_000, description="maximum length of a text item, in characters")
    max_image_pixels: int = Field(
        25_000_000, ge=1, le=500_000_000, description="largest decoded image (width x height), in pixels"
    )
    truncate_text: bool = Field(True, description="cut texts longer than the model's token budget instead of rejecting them with 413")
    api_key: SecretStr | None = Field(None, description="bearer token required on /v1 routes when set")

    # response cache
    cache_size: int = Field(0, ge=0, le=10_000_000, description="embeddings kept in the LRU cache; 0 turns it off")

    # logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="log level")

    # anomaly banks
    bank_hnsw_min_size: int = Field(
        100_000, ge=1, le=1_000_000_000, description="bank size from which an HNSW index replaces the flat one"
    )
    bank_hnsw_m: int = Field(32, ge=4, le=512, description="HNSW neighbours per node")
    bank_hnsw_ef_construction: int = Field(200, ge=8, le=4096, description="HNSW candidate list size while building")
    bank_hnsw_ef_search: int = Field(128, ge=1, le=4096, description="HNSW candidate list size while searching")
    faiss_threads: int = Field(0, ge=0, le=1024, description="FAISS OpenMP threads per call; 0 picks 1, because requests already run in parallel")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"device {value!r} is not supported; expected auto, cpu, cuda or cuda:N")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not HOST_PATTERN.match(value):
            raise ValueError(f"host {value!r} is not an address or host name")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("default_model")
    @classmethod
    def _check_default_model(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < MIN_API_KEY_CHARS:
            raise ValueError(f"api_key must have at least {MIN_API_KEY_CHARS} characters")
        if any(char.isspace() for char in secret) or not secret.isprintable():
            raise ValueError("api_key must not contain whitespace or control characters")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.dtype != "float32" and self.device == "cpu":
            raise ValueError(f"dtype {self.dtype} needs a CUDA device; use dtype float32 with device cpu")
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError(
                f"max_items_per_request ({self.max_items_per_request}) must not exceed "
                f"max_queue_items ({self.max_queue_items}), or a full request could never be queued"
            )
        return self

    @property
    def exposed(self) -> bool:
        """Whether the service listens on an address other machines can reach."""
        return self.host not in {"127.0.0.1", "localhost", "::1", "[::1]"}
