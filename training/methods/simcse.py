"""Unsupervised SimCSE (Gao et al., 2021): a sentence and itself under two dropout masks are a positive pair."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer

from training.config import TrainConfig
from training.losses import info_nce
from training.methods.text import PretrainedText, TextMethod


class SimCSE(TextMethod):
    """Text transformer trained with InfoNCE between two dropout-noised passes of each text.

    The batch is encoded twice in one forward pass, so the two passes differ only in
    their dropout masks, which are the only augmentation. The other texts of the batch
    are the negatives. Dropout masks come from torch's global RNG, which the trainer seeds and
    saves in checkpoints, because ``nn.Dropout`` cannot take the step's generator.
    With ``config.init_from`` the encoder starts from an MLM artifact or checkpoint.
    The exported embedding is the mean of the final token states, passed through the
    projection head when ``--embedding-dim`` is set.
    """

    name = "simcse"
    default_lr = 3e-4
    default_optimizer = "adamw"
    default_weight_decay = 0.01
    default_temperature = 0.05

    def __init__(
        self,
        config: TrainConfig,
        tokenizer: Tokenizer,
        architecture: dict[str, Any],
        lowercase: bool,
        pretrained: PretrainedText | None = None,
    ) -> None:
        super().__init__(config, tokenizer, architecture, lowercase, pretrained)
        self.temperature = config.temperature or self.default_temperature
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if architecture["kwargs"].get("dropout", 0.0) <= 0.0:
            raise ValueError("simcse needs dropout in the encoder: it is the only augmentation")

    def training_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        # both passes in one call: (2B, L) -> (2B, D), with independent dropout per row
        embeddings = self.encoder(torch.cat([input_ids, input_ids]), torch.cat([attention_mask, attention_mask]))
        first_pass, second_pass = embeddings.chunk(2)
        return {"loss": info_nce(first_pass, second_pass, self.temperature)}
