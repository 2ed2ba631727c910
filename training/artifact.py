"""Model artifacts: the one contract between training and serving.

An artifact is a folder holding ``model.json`` (what the model is and how to feed it),
``weights.safetensors`` (the encoder's state dict, plain tensors only) and, for text
models, ``tokenizer.json``. Loading never executes code from the folder and works on a
CPU-only machine whatever device the weights were trained on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from training.encoders import build_encoder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
TOKENIZER_FILE = "tokenizer.json"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ArtifactError(Exception):
    """An artifact folder is missing, incomplete or inconsistent."""


class Architecture(BaseModel):
    """Encoder name in the registry and the keyword arguments that build it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ImagePreprocessing(BaseModel):
    """Preprocessing that turns a decoded image into the encoder's input.

    ``resize`` is ``resize_center_crop`` (shorter side to ``size``, then a centred
    square crop) or ``stretch`` (both sides to ``size``). Transparent pixels are
    composited onto ``background`` (a gray level, 0-255) before the channel conversion.
    """

    model_config = ConfigDict(extra="forbid")

    size: int = Field(gt=0)
    channels: Literal[1, 3]
    mean: list[float]
    std: list[float]
    resize: Literal["resize_center_crop", "stretch"] = "resize_center_crop"
    background: int = Field(default=0, ge=0, le=255)

    @model_validator(mode="after")
    def _check_statistics(self) -> ImagePreprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        return self


class TextPreprocessing(BaseModel):
    """Tokenizer file inside the artifact, token budget per text and case folding."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str = TOKENIZER_FILE
    max_tokens: int = Field(gt=1)
    lowercase: bool = False

    @model_validator(mode="after")
    def _check_tokenizer_name(self) -> TextPreprocessing:
        # The tokenizer must sit inside the artifact folder, so only a plain file name is allowed.
        if not self.tokenizer or Path(self.tokenizer).name != self.tokenizer or self.tokenizer in (".", ".."):
            raise ValueError(f"tokenizer must be a file name inside the artifact folder, got {self.tokenizer!r}")
        return self


class ArtifactMeta(BaseModel):
    """The contents of ``model.json``."""

    model_config = ConfigDict(extra="allow")

    format_version: int
    name: str
    modality: Literal["image", "text"]
    architecture: Architecture
    embedding_dim: int = Field(gt=0)
    preprocessing: dict[str, Any]
    normalize: bool = True
    method: str
    space: str
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    # Marks the model the service picks for its modality when a request names none.
    default: bool = False

    @model_validator(mode="after")
    def _check_preprocessing(self) -> ArtifactMeta:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported; expected {FORMAT_VERSION}"
            )
        if self.modality == "image":
            ImagePreprocessing.model_validate(self.preprocessing)
        else:
            TextPreprocessing.model_validate(self.preprocessing)
        return self

    def image_preprocessing(self) -> ImagePreprocessing:
        return ImagePreprocessing.model_validate(self.preprocessing)

    def text_preprocessing(self) -> TextPreprocessing:
        return TextPreprocessing.model_validate(self.preprocessing)


@dataclass
class Artifact:
    """A loaded artifact: its metadata, the encoder in eval mode and the tokenizer."""

    path: Path
    meta: ArtifactMeta
    encoder: nn.Module
    tokenizer: Any = None


def unwrap_module(module: nn.Module) -> nn.Module:
    """Return the module inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def export_artifact(
    out_dir: str | Path,
    encoder: nn.Module,
    meta: dict[str, Any],
    tokenizer_json: str | None = None,
) -> Path:
    """Write ``encoder`` and ``meta`` as an artifact folder, replacing it atomically.

    The folder is assembled under a temporary name beside ``out_dir`` and renamed into
    place, so a reader never sees a half-written artifact. Raises ArtifactError when a
    weight is not finite or the metadata is invalid.
    """
    out_dir = Path(out_dir)
    meta = {"format_version": FORMAT_VERSION, **meta}
    try:
        ArtifactMeta.model_validate(meta)
    except ValidationError as error:
        raise ArtifactError(f"invalid metadata for {out_dir}: {error}") from error

    state = _plain_state_dict(unwrap_module(encoder))
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ArtifactError(f"refusing to export non-finite weights: {bad[:5]}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(state, str(staging / WEIGHTS_FILE))
        if tokenizer_json is not None:
            _write_text(staging / TOKENIZER_FILE, tokenizer_json)
        _write_text(staging / META_FILE, json.dumps(meta, indent=2, sort_keys=False) + "\n")
        _fsync_dir(staging)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported artifact %s (%s, dim %d)", out_dir, meta["modality"], meta["embedding_dim"])
    return out_dir


def read_meta(path: str | Path) -> ArtifactMeta:
    """Read and validate ``model.json`` of the artifact at ``path``."""
    meta_path = Path(path) / META_FILE
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ArtifactError(f"{meta_path} is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{meta_path} is not valid JSON: {error}") from error
    try:
        return ArtifactMeta.model_validate(raw)
    except ValidationError as error:
        raise ArtifactError(f"{meta_path} is invalid: {error}") from error


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Load the artifact at ``path`` onto ``device`` with its encoder in eval mode.

    Raises ArtifactError naming the file when anything is missing, corrupt or does not
    match the architecture exactly (no missing, unexpected or prefixed keys).
    """
    path = Path(path)
    meta = read_meta(path)
    try:
        encoder = build_encoder(meta.architecture.name, **meta.architecture.kwargs)
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{path / META_FILE}: cannot build architecture: {error}") from error

    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path} is missing")
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as error:  # safetensors raises several error types for corrupt files
        raise ArtifactError(f"{weights_path} is not a readable safetensors file: {error}") from error
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(f"{weights_path} does not match {meta.architecture.name}: {error}") from error

    probe_dim = getattr(encoder, "embedding_dim", None)
    if probe_dim != meta.embedding_dim:
        raise ArtifactError(
            f"{path / META_FILE}: embedding_dim {meta.embedding_dim} does not match the encoder's {probe_dim}"
        )

    tokenizer = None
    if meta.modality == "text":
        tokenizer = _load_tokenizer(path / meta.text_preprocessing().tokenizer)
    encoder.to(device).eval()
    return Artifact(path=path, meta=meta, encoder=encoder, tokenizer=tokenizer)


def _load_tokenizer(tokenizer_path: Path) -> Any:
    from tokenizers import Tokenizer

    if not tokenizer_path.is_file():
        raise ArtifactError(f"{tokenizer_path} is missing")
    try:
        return Tokenizer.from_file(str(tokenizer_path))
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise ArtifactError(f"{tokenizer_path} is not a valid tokenizer: {error}") from error


def _plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Return contiguous CPU copies of the state dict, refusing wrapper prefixes."""
    state = {}
    for name, tensor in module.state_dict().items():
        if name.startswith(WRAPPER_PREFIXES):
            raise ArtifactError(f"state dict key {name!r} carries a wrapper prefix; unwrap the module first")
        state[name] = tensor.detach().to("cpu").contiguous().clone()
    return state


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush every file in ``path`` and the folder's own entries to disk."""
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir_entry(path)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing target is swapped out, then removed."""
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    _fsync_dir_entry(target.parent)


def _fsync_dir_entry(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
