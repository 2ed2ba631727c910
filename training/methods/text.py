"""Shared parts of the text methods: tokenizer, text encoder, batches, warm starts and export.

A text method trains a byte-level BPE tokenizer on its training texts (or takes the one
of the model it starts from) and one ``text_transformer`` encoder. Batches are dicts of
``input_ids`` (B, L) int64 and ``attention_mask`` (B, L) bool, tokenised per step.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from training.config import TrainConfig
from training.encoders import build_encoder
from training.methods.base import ExportSpec, Method
from training.tokenizer import PAD_ID, check_tokenizer, tokenize_batch, train_tokenizer

logger = logging.getLogger(__name__)

TEXT_ENCODER = "text_transformer"


def text_architecture(
    config: TrainConfig,
    vocab_size: int,
    embedding_dim: int | None,
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    dropout: float = 0.1,
) -> dict[str, Any]:
    """Return the ``architecture`` entry of a text encoder; unset sizes fall back to ``config``, then BERT-mini."""
    return {
        "name": TEXT_ENCODER,
        "kwargs": {
            "vocab_size": vocab_size,
            "max_tokens": config.max_tokens,
            "width": width or config.encoder_width or 256,
            "depth": depth or config.encoder_depth or 4,
            "heads": heads or config.heads or 4,
            "dropout": dropout,
            "pad_id": PAD_ID,
            "embedding_dim": embedding_dim,
        },
    }


@dataclass
class PretrainedText:
    """A text encoder to start from: its tokenizer, architecture, weights and preprocessing."""

    tokenizer: Tokenizer
    architecture: dict[str, Any]
    state: dict[str, torch.Tensor]
    lowercase: bool


def load_pretrained_text(path: str) -> PretrainedText:
    """Read the text encoder of an artifact folder or of a text method's training checkpoint.

    Raises ValueError when ``path`` is neither, or contains no text encoder.
    """
    source = Path(path)
    if (source / "model.json").is_file():
        return _from_artifact(source)
    if source.is_file():
        return _from_checkpoint(source)
    raise ValueError(f"init_from {path!r} is neither an artifact folder (with model.json) nor a checkpoint file")


def _from_artifact(folder: Path) -> PretrainedText:
    from training.artifact import load_artifact

    artifact = load_artifact(folder)
    if artifact.meta.modality != "text":
        raise ValueError(f"init_from {str(folder)!r} is a {artifact.meta.modality} artifact; expected a text one")
    check_tokenizer(artifact.tokenizer)
    return PretrainedText(
        tokenizer=artifact.tokenizer,
        architecture=artifact.meta.architecture.model_dump(),
        state=artifact.encoder.state_dict(),
        lowercase=artifact.meta.text_preprocessing().lowercase,
    )


def _from_checkpoint(path: Path) -> PretrainedText:
    from training.checkpoint import load_checkpoint

    try:
        checkpoint = load_checkpoint(path)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"init_from {str(path)!r} is not a readable checkpoint: {error}") from error
    extra = checkpoint.get("method_extra") or {}
    if "tokenizer_json" not in extra or "text_architecture" not in extra:
        raise ValueError(f"init_from {str(path)!r} is not a checkpoint of a text method (no tokenizer in it)")
    prefix = extra.get("text_encoder_prefix", "encoder.")
    state = {name[len(prefix) :]: tensor for name, tensor in checkpoint["method"].items() if name.startswith(prefix)}
    tokenizer = Tokenizer.from_str(extra["tokenizer_json"])
    check_tokenizer(tokenizer)
    return PretrainedText(tokenizer, extra["text_architecture"], state, bool(extra["lowercase"]))


def build_text_encoder(architecture: dict[str, Any], pretrained: PretrainedText | None) -> nn.Module:
    """Build ``architecture`` and, with ``pretrained``, load its weights into it."""
    encoder = build_encoder(architecture["name"], **architecture["kwargs"])
    if pretrained is not None:
        load_pretrained_weights(encoder, pretrained)
    return encoder


def load_pretrained_weights(encoder: nn.Module, pretrained: PretrainedText) -> None:
    """Load ``pretrained.state`` into ``encoder``.

    Only the projection ``head`` may stay freshly initialised: when ``pretrained`` has
    none, or one of another width, which a new width replaces. Any other missing or
    unexpected key raises ValueError.
    """
    own = encoder.state_dict()
    state = {
        name: tensor
        for name, tensor in pretrained.state.items()
        if not name.startswith("head.") or (name in own and own[name].shape == tensor.shape)
    }
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as error:  # raised for tensors of another shape
        raise ValueError(f"pretrained text encoder does not match {type(encoder).__name__}: {error}") from error
    missing = [key for key in result.missing_keys if not key.startswith("head.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"pretrained text encoder does not match {type(encoder).__name__}: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    logger.info("initialised the text encoder from pretrained weights (%d tensors)", len(pretrained.state))


def warm_start_architecture(
    pretrained: PretrainedText, embedding_dim: int | None, dropout: float | None = None
) -> dict[str, Any]:
    """Return the pretrained architecture, with a new projection head of ``embedding_dim`` and ``dropout`` when set."""
    architecture = json.loads(json.dumps(pretrained.architecture))  # a deep copy of plain JSON values
    if architecture["name"] != TEXT_ENCODER:
        raise ValueError(f"can only start from a {TEXT_ENCODER} encoder, got {architecture['name']!r}")
    if embedding_dim is not None:
        architecture["kwargs"]["embedding_dim"] = embedding_dim
    if dropout is not None:
        architecture["kwargs"]["dropout"] = dropout
    return architecture


class TextMethod(Method):
    """A method that trains one text encoder, ``self.encoder``, on tokenised texts.

    The encoder's dropout is 0.1, as in BERT, unless ``--text-dropout`` sets another.
    """

    modality = "text"
    default_dropout = 0.1

    def __init__(
        self,
        config: TrainConfig,
        tokenizer: Tokenizer,
        architecture: dict[str, Any],
        lowercase: bool,
        pretrained: PretrainedText | None = None,
    ) -> None:
        super().__init__(config)
        self.tokenizer = tokenizer
        self.architecture = architecture
        self.lowercase = lowercase
        self.max_tokens = architecture["kwargs"]["max_tokens"]
        self.encoder = build_text_encoder(architecture, pretrained)

    @classmethod
    def from_data(cls, config: TrainConfig, dataset: Any) -> TextMethod:
        """Train a tokenizer on ``dataset.texts``, or take the tokenizer of ``config.init_from``."""
        if config.encoder not in (None, TEXT_ENCODER):
            raise ValueError(f"text methods use the {TEXT_ENCODER} encoder, got --encoder {config.encoder!r}")
        if config.init_from:
            pretrained = load_pretrained_text(config.init_from)
            architecture = warm_start_architecture(pretrained, cls.exported_embedding_dim(config), config.text_dropout)
            return cls(config, pretrained.tokenizer, architecture, pretrained.lowercase, pretrained)
        tokenizer = train_tokenizer(dataset.texts, config.vocab_size, config.lowercase)
        dropout = config.text_dropout if config.text_dropout is not None else cls.default_dropout
        architecture = text_architecture(config, tokenizer.get_vocab_size(), cls.exported_embedding_dim(config), dropout=dropout)
        return cls(config, tokenizer, architecture, config.lowercase)

    @classmethod
    def exported_embedding_dim(cls, config: TrainConfig) -> int | None:
        """Return the width of the encoder's projection head, or None for no head."""
        return config.embedding_dim

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    def make_batch(self, dataset: Any, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Tokenise the texts ``indices`` of ``dataset`` into ``input_ids`` and ``attention_mask`` on ``device``."""
        texts = [dataset.texts[index] for index in indices.tolist()]
        tokens = tokenize_batch(self.tokenizer, texts, self.max_tokens, self.lowercase)
        return {
            "input_ids": tokens.input_ids.to(device, non_blocking=True),
            "attention_mask": tokens.attention_mask.to(device, non_blocking=True),
        }

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch["input_ids"], batch["attention_mask"])

    def preprocessing(self) -> dict[str, Any]:
        """Return the artifact's text preprocessing entry."""
        return {"tokenizer": "tokenizer.json", "max_tokens": self.max_tokens, "lowercase": self.lowercase}

    def export_specs(self) -> list[ExportSpec]:
        return [
            ExportSpec(
                self.encoder, self.architecture, "text", self.embedding_dim, self.preprocessing(),
                tokenizer_json=self.tokenizer.to_str(),
            )
        ]

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return {
            "tokenizer_json": self.tokenizer.to_str(),
            "text_architecture": self.architecture,
            "text_encoder_prefix": "encoder.",
            "lowercase": self.lowercase,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Take the checkpoint's tokenizer, which must match the encoder's vocabulary."""
        tokenizer = Tokenizer.from_str(state["tokenizer_json"])
        if tokenizer.get_vocab_size() != self.architecture["kwargs"]["vocab_size"]:
            raise ValueError(
                f"checkpoint tokenizer has {tokenizer.get_vocab_size()} tokens, "
                f"the encoder {self.architecture['kwargs']['vocab_size']}"
            )
        self.tokenizer = tokenizer
        self.lowercase = bool(state["lowercase"])
