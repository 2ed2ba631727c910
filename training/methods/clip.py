"""CLIP (Radford et al., 2021): an image tower and a text tower contrasted in one embedding space."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from tokenizers import Tokenizer

from training.config import TrainConfig
from training.encoders import build_encoder
from training.losses import CLIPLoss
from training.losses.clip import INITIAL_TEMPERATURE
from training.methods.base import ExportSpec, Method, Normalize
from training.methods.image import configured_augmentation, image_architecture
from training.methods.text import (
    PretrainedText,
    load_pretrained_text,
    load_pretrained_weights,
    text_architecture,
    warm_start_architecture,
)
from training.tokenizer import tokenize_batch, train_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_DIM = 128
# Text tower sizes; captions are short, so the tower is smaller than a sentence encoder.
# The TrainConfig fields of the same names override them.
TEXT_TOWER_DEFAULTS = {"text_encoder_width": 128, "text_encoder_depth": 2, "text_heads": 4, "text_dropout": 0.0}


def text_tower_settings(config: TrainConfig) -> dict[str, Any]:
    """Return the text tower's width, depth, heads and dropout: set in ``config``, else ``TEXT_TOWER_DEFAULTS``."""
    settings = {
        name: default if getattr(config, name) is None else getattr(config, name)
        for name, default in TEXT_TOWER_DEFAULTS.items()
    }
    if settings["text_encoder_width"] % settings["text_heads"]:
        raise ValueError(
            f"clip's text tower width {settings['text_encoder_width']} must be divisible by its "
            f"{settings['text_heads']} heads. Set --text-encoder-width to a multiple of --text-heads."
        )
    return settings


def warn_ignored_tower_sizes(config: TrainConfig, pretrained: PretrainedText) -> None:
    """Log a warning for each text tower size in ``config`` that differs from the pretrained tower, which keeps its own."""
    kwargs = pretrained.architecture["kwargs"]
    own = {"text_encoder_width": kwargs["width"], "text_encoder_depth": kwargs["depth"], "text_heads": kwargs["heads"]}
    ignored = {name: getattr(config, name) for name, size in own.items() if getattr(config, name) not in (None, size)}
    if ignored:
        logger.warning(
            "ignoring %s: the text tower keeps the sizes of init_from %s (%s)",
            ", ".join(f"{name} {value}" for name, value in ignored.items()),
            config.init_from,
            ", ".join(f"{name} {own[name]}" for name in ignored),
        )


def projected(inner: dict[str, Any], embedding_dim: int) -> dict[str, Any]:
    """Return the architecture entry of ``inner`` followed by a linear projection to ``embedding_dim``."""
    return {"name": "projected", "kwargs": {"inner": inner, "embedding_dim": embedding_dim}}


class CLIP(Method):
    """Image and text towers, each ending in a bias-free linear projection into one space.

    The loss is the symmetric cross-entropy over the (B, B) image-text similarity matrix,
    scaled by a learnable logit scale that starts at 1 / 0.07 (``--temperature`` sets the
    starting temperature) and is clamped at 100. Images get the ``--augment`` preset
    (default ``crop``: random crops, as CLIP's only augmentation). Batches are dicts of
    ``images`` float (B, C, H, W) in [0, 1], ``input_ids`` (B, L) and
    ``attention_mask`` (B, L). Both towers are exported with their projections as
    NAME-image and NAME-text, so their embeddings are directly comparable.
    """

    name = "clip"
    modality = "image-text"
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 0.1

    def __init__(
        self,
        config: TrainConfig,
        channels: int,
        image_size: int,
        mean: list[float],
        std: list[float],
        tokenizer: Tokenizer,
        text_inner: dict[str, Any],
        lowercase: bool,
        pretrained_text: PretrainedText | None = None,
    ) -> None:
        super().__init__(config)
        self.channels, self.image_size, self.mean, self.std = channels, image_size, mean, std
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self.text_inner = text_inner
        self.max_tokens = text_inner["kwargs"]["max_tokens"]
        self.embedding_dim = config.embedding_dim or DEFAULT_EMBEDDING_DIM

        # the image tower's own embedding_dim stays unset: the projection sets the width
        image_inner = image_architecture(dataclasses.replace(config, embedding_dim=None), channels, image_size)
        self.image_architecture = projected(image_inner, self.embedding_dim)
        self.text_architecture = projected(text_inner, self.embedding_dim)
        self.image_encoder = build_encoder(self.image_architecture["name"], **self.image_architecture["kwargs"])
        self.text_encoder = build_encoder(self.text_architecture["name"], **self.text_architecture["kwargs"])
        if pretrained_text is not None:
            load_pretrained_weights(self.text_encoder.inner, pretrained_text)

        self.normalize = Normalize(mean, std)
        self.augmentation = configured_augmentation(config.augment or "crop", config)
        self.loss = CLIPLoss(initial_temperature=config.temperature or INITIAL_TEMPERATURE)

    @classmethod
    def from_data(cls, config: TrainConfig, dataset: Any) -> CLIP:
        """Build both towers for ``dataset`` (a PairDataset): its image statistics and captions."""
        mean, std = dataset.images.channel_statistics()
        channels, image_size = dataset.images.channels, dataset.images.image_size
        if config.init_from:
            pretrained = load_pretrained_text(config.init_from)
            text_inner = warm_start_architecture(pretrained, None, config.text_dropout)
            warn_ignored_tower_sizes(config, pretrained)
            return cls(config, channels, image_size, mean, std, pretrained.tokenizer, text_inner, pretrained.lowercase, pretrained)
        tokenizer = train_tokenizer(dataset.captions, config.vocab_size, config.lowercase)
        settings = text_tower_settings(config)
        text_inner = text_architecture(
            config, tokenizer.get_vocab_size(), None,
            width=settings["text_encoder_width"], depth=settings["text_encoder_depth"], heads=settings["text_heads"],
            dropout=settings["text_dropout"],
        )
        return cls(config, channels, image_size, mean, std, tokenizer, text_inner, config.lowercase)

    def make_batch(self, dataset: Any, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Cut images ``indices`` as floats in [0, 1] and tokenise their captions, on ``device``."""
        tokens = tokenize_batch(self.tokenizer, [dataset.captions[i] for i in indices.tolist()], self.max_tokens, self.lowercase)
        return {
            "images": dataset.images.batch(indices, device),
            "input_ids": tokens.input_ids.to(device, non_blocking=True),
            "attention_mask": tokens.attention_mask.to(device, non_blocking=True),
        }

    def training_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = self.normalize(self.augmentation(batch["images"], generator))
        image_embeddings = self.image_encoder(images)  # (B, D)
        text_embeddings = self.text_encoder(batch["input_ids"], batch["attention_mask"])  # (B, D)
        loss = self.loss(image_embeddings, text_embeddings)
        return {"loss": loss, "logit_scale": self.loss.logit_scale().detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.loss.clamp_()

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the image embeddings (B, D), which the trainer's kNN monitor uses."""
        return self.image_encoder(self.normalize(batch["images"]))

    @torch.no_grad()
    def embed_text(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the text embeddings (B, D) of a batch's captions."""
        return self.text_encoder(batch["input_ids"], batch["attention_mask"])

    def export_specs(self) -> list[ExportSpec]:
        image_preprocessing = {
            "size": self.image_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "resize": "resize_center_crop",
            "background": 0,
        }
        text_preprocessing = {"tokenizer": "tokenizer.json", "max_tokens": self.max_tokens, "lowercase": self.lowercase}
        return [
            ExportSpec(self.image_encoder, self.image_architecture, "image", self.embedding_dim, image_preprocessing, suffix="-image"),
            ExportSpec(
                self.text_encoder, self.text_architecture, "text", self.embedding_dim, text_preprocessing,
                suffix="-text", tokenizer_json=self.tokenizer.to_str(),
            ),
        ]

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        # the text tower's inner encoder is stored like a text method's, so simcse can start from it
        return {
            "tokenizer_json": self.tokenizer.to_str(),
            "text_architecture": self.text_inner,
            "text_encoder_prefix": "text_encoder.inner.",
            "lowercase": self.lowercase,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        tokenizer = Tokenizer.from_str(state["tokenizer_json"])
        if tokenizer.get_vocab_size() != self.text_inner["kwargs"]["vocab_size"]:
            raise ValueError(
                f"checkpoint tokenizer has {tokenizer.get_vocab_size()} tokens, the text tower {self.text_inner['kwargs']['vocab_size']}"
            )
        self.tokenizer = tokenizer

