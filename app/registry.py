"""Loaded models: artifacts found under the models folder, on the serving device, warmed up.

Each artifact is loaded with ``training.artifact.load_artifact``, cast to the serving
dtype and run once on a dummy batch. Only a model that passed all three steps enters the
registry, so the service never serves a half-loaded model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import InvalidInput, NotFound
from app.settings import Settings
from training.artifact import META_FILE, ArtifactMeta, ImagePreprocessing, TextPreprocessing, load_artifact
from training.tokenizer import encode_texts, pad_sequences

logger = logging.getLogger(__name__)

# Model input of one item: an image tensor (C, H, W) or a text's token ids.
ModelInput = torch.Tensor | list[int]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WARMUP_TEXT = "warm-up"


class ModelLoadError(RuntimeError):
    """An artifact could not be loaded or warmed up; the message names its folder."""


def resolve_device(settings: Settings) -> tuple[torch.device, torch.dtype]:
    """Pick the serving device and dtype: CUDA when present for ``auto``, else the CPU.

    Raises ValueError when CUDA is requested but missing, or a half dtype lands on a CPU.
    """
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {settings.device} was requested but CUDA is not available; use device auto or cpu")
    # NOTE: the float16 and bfloat16 paths have only been run on CPU-only machines, where
    # they are rejected here; serving in half precision on a GPU is untested.
    dtype = DTYPES[settings.dtype]
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"dtype {settings.dtype} needs CUDA but the device is {device}; use dtype float32")
    return device, dtype


@dataclass
class LoadedModel:
    """One served encoder with what the service needs to feed it."""

    id: str
    path: Path
    meta: ArtifactMeta
    encoder: nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def modality(self) -> str:
        return self.meta.modality

    @property
    def dim(self) -> int:
        return self.meta.embedding_dim

    @property
    def space(self) -> str:
        return self.meta.space

    @property
    def image_preprocessing(self) -> ImagePreprocessing:
        return self.meta.image_preprocessing()

    @property
    def text_preprocessing(self) -> TextPreprocessing:
        return self.meta.text_preprocessing()

    @property
    def created(self) -> int:
        """Creation time of the artifact as Unix seconds, 0 when its metadata has none."""
        stamp = self.meta.training.get("created")
        try:
            return int(datetime.fromisoformat(str(stamp)).timestamp())
        except ValueError:
            return 0

    @torch.inference_mode()
    def encode(self, inputs: Sequence[ModelInput]) -> torch.Tensor:
        """Run one forward pass over preprocessed inputs and return raw embeddings (N, D) float32 on the CPU.

        Image inputs are (C, H, W) float tensors, stacked to (N, C, H, W). Text inputs are
        token-id lists of any length, padded to (N, L) with an attention mask that is False
        on padding. Runs in a worker thread, never on the event loop.
        """
        if self.modality == "image":
            images = torch.stack(inputs).to(self.device, self.dtype)  # (N, C, H, W)
            embeddings = self.encoder(images)
        else:
            input_ids, attention_mask = pad_sequences(inputs)  # (N, L), (N, L)
            embeddings = self.encoder(input_ids.to(self.device), attention_mask.to(self.device))
        return embeddings.float().cpu()  # (N, D)


@dataclass
class ModelRegistry:
    """The loaded models by id, and the rule that picks one when a request names none."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    default_model: str | None = None  # comma-separated model ids from the settings

    def default_ids(self) -> list[str]:
        """Return the configured default model ids, in the order the settings list them."""
        return [part.strip() for part in (self.default_model or "").split(",") if part.strip()]

    def is_default(self, model: LoadedModel) -> bool:
        """Return whether ``model`` is picked for its modality when a request names no model."""
        return self._default_among(self.of_modality(model.modality)) is model

    def _default_among(self, candidates: list[LoadedModel]) -> LoadedModel | None:
        """Return the configured default among ``candidates``, else the only one marked default in its model.json."""
        for model_id in self.default_ids():
            model = self.models.get(model_id)
            if model is not None and model in candidates:
                return model
        marked = [model for model in candidates if model.meta.default]
        return marked[0] if len(marked) == 1 else None

    def get(self, model_id: str) -> LoadedModel:
        """Return the model ``model_id``; raises NotFound listing the loaded ids."""
        if model_id not in self.models:
            raise NotFound(f"model {model_id!r} is not loaded; loaded models: {self._ids()}")
        return self.models[model_id]

    def of_modality(self, modality: str) -> list[LoadedModel]:
        return [model for model in self.models.values() if model.modality == modality]

    def resolve(self, model_id: str | None, modality: str | None) -> LoadedModel:
        """Return the model for items of ``modality`` (None: vectors only, any model fits).

        A named model must embed ``modality``. Without a name, the only loaded model of
        that modality is used, else the default model when it fits. Anything else raises
        InvalidInput listing the candidates.
        """
        if model_id is not None:
            model = self.get(model_id)
            if modality is not None and model.modality != modality:
                raise InvalidInput(
                    f"model {model_id!r} embeds {model.modality} items, not {modality}; "
                    f"loaded {modality} models: {self._ids(modality)}"
                )
            return model

        candidates = self.of_modality(modality) if modality is not None else list(self.models.values())
        if len(candidates) == 1:
            return candidates[0]
        default = self._default_among(candidates)
        if default is not None:
            return default
        kind = f"{modality} " if modality else ""
        if not candidates:
            raise InvalidInput(f"no {kind}model is loaded; loaded models: {self._ids()}")
        raise InvalidInput(f"several {kind}models are loaded ({self._ids(modality)}); name one in \"model\"")

    def partner(self, model: LoadedModel, modality: str) -> LoadedModel:
        """Return the model of ``modality`` that shares ``model``'s space, such as the other tower of a CLIP pair."""
        if model.modality == modality:
            return model
        partners = [other for other in self.of_modality(modality) if other.space == model.space]
        if len(partners) == 1:
            return partners[0]
        if not partners:
            raise InvalidInput(
                f"model {model.id!r} embeds {model.modality} items in space {model.space!r}; "
                f"{modality} items need a {modality} model in that space and none is loaded"
            )
        raise InvalidInput(
            f"several {modality} models share space {model.space!r} ({[p.id for p in partners]}); "
            f"name the {modality} model in \"model\""
        )

    def _ids(self, modality: str | None = None) -> list[str]:
        return sorted(model.id for model in self.models.values() if modality is None or model.modality == modality)


def discover_artifacts(models_dir: Path) -> list[Path]:
    """Return the artifact folders under ``models_dir``: sub-folders with a model.json, sorted.

    Hidden folders (a leading dot) are skipped because the exporter stages new artifacts
    under such names before renaming them into place.
    """
    if not models_dir.is_dir():
        raise ValueError(f"models_dir {models_dir} is not a folder; create it or point --models-dir elsewhere")
    folders = []
    for child in sorted(models_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        if (child / META_FILE).is_file():
            folders.append(child)
        else:
            logger.warning("skipping %s: no %s inside", child, META_FILE)
    return folders


def load_model(path: Path, device: torch.device, dtype: torch.dtype, taken: set[str]) -> LoadedModel:
    """Load, cast and warm up the artifact at ``path``; raises ModelLoadError naming the file."""
    try:
        artifact = load_artifact(path, device=device)
    except Exception as error:  # ArtifactError, or any error raised while building the encoder
        raise ModelLoadError(f"{path}: {error}") from error
    if artifact.meta.name in taken:
        raise ModelLoadError(f"{path / META_FILE}: model name {artifact.meta.name!r} is already loaded from another folder")

    encoder = artifact.encoder.to(device=device, dtype=dtype).eval()
    model = LoadedModel(
        id=artifact.meta.name,
        path=path,
        meta=artifact.meta,
        encoder=encoder,
        tokenizer=artifact.tokenizer,
        device=device,
        dtype=dtype,
    )
    warm_up(model)
    return model


def warm_up(model: LoadedModel) -> None:
    """Run one dummy batch so that the first request does not pay for lazy initialisation."""
    try:
        embeddings = model.encode([warmup_input(model)])
    except Exception as error:  # a forward that fails here would fail every request
        raise ModelLoadError(f"{model.path}: warm-up forward pass failed: {error}") from error
    if tuple(embeddings.shape) != (1, model.dim):
        raise ModelLoadError(
            f"{model.path / META_FILE}: warm-up produced shape {tuple(embeddings.shape)}, expected (1, {model.dim})"
        )
    if not torch.isfinite(embeddings).all():
        raise ModelLoadError(f"{model.path}: warm-up produced non-finite embeddings")


def warmup_input(model: LoadedModel) -> ModelInput:
    """Return one preprocessed dummy input: a gray image (C, S, S) or the token ids of a short text."""
    if model.modality == "image":
        prep = model.image_preprocessing
        return torch.zeros(prep.channels, prep.size, prep.size)
    prep = model.text_preprocessing
    sequences, _ = encode_texts(model.tokenizer, [WARMUP_TEXT], prep.max_tokens, prep.lowercase)
    return sequences[0]


def load_models(settings: Settings, device: torch.device, dtype: torch.dtype) -> ModelRegistry:
    """Load every artifact under ``settings.models_dir`` into a registry.

    An invalid artifact is logged with its folder and skipped, or raises ModelLoadError
    when ``settings.on_model_error`` is ``fail``.
    """
    registry = ModelRegistry(default_model=settings.default_model)
    for path in discover_artifacts(settings.models_dir):
        try:
            model = load_model(path, device, dtype, set(registry.models))
        except ModelLoadError as error:
            if settings.on_model_error == "fail":
                raise
            logger.error("skipping invalid artifact: %s", error)
            continue
        registry.models[model.id] = model
        logger.info("loaded model %s (%s, dim %d, space %s) from %s", model.id, model.modality, model.dim, model.space, path)

    missing = [model_id for model_id in registry.default_ids() if model_id not in registry.models]
    if missing:
        message = f"default_model {', '.join(map(repr, missing))} is not among the loaded models {sorted(registry.models)}"
        if settings.on_model_error == "fail":
            raise ModelLoadError(message)
        logger.warning("%s; requests must name a model when several fit", message)
    if not registry.models:
        logger.warning("no models loaded from %s; every embedding request will fail", settings.models_dir)
    return registry
