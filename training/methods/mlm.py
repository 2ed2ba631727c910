"""Masked language modelling (Devlin et al., 2019, BERT): predict masked tokens from context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from training.config import TrainConfig
from training.methods.text import PretrainedText, TextMethod
from training.tokenizer import MASK_ID, SPECIAL_TOKENS

# Token ids below this are special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]).
FIRST_ORDINARY_ID = len(SPECIAL_TOKENS)
MASK_SHARE = 0.8  # of the selected tokens: replaced by [MASK]
RANDOM_SHARE = 0.1  # replaced by a random ordinary token; the remaining 10 % stay as they are


@dataclass
class MaskedTokens:
    """A corrupted batch: ``input_ids`` (N, L) to encode and ``selected`` (N, L), the positions to predict."""

    input_ids: torch.Tensor
    selected: torch.Tensor


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab_size: int,
    mask_probability: float,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """Select and corrupt tokens as BERT does.

    Each real, non-special token of ``input_ids`` (N, L) is selected with probability
    ``mask_probability``. A selected token becomes ``[MASK]`` with probability 0.8, a
    random ordinary token with probability 0.1, and stays unchanged otherwise. Padding,
    ``[CLS]`` and ``[SEP]`` are never selected. When no token is selected by chance, one
    selectable token is chosen, so the loss always has a target. All draws use
    ``generator``.
    """
    if not 0.0 < mask_probability < 1.0:
        raise ValueError(f"mask_probability must be in (0, 1), got {mask_probability}")
    if vocab_size <= FIRST_ORDINARY_ID:
        raise ValueError(f"vocab_size must exceed the {FIRST_ORDINARY_ID} special tokens, got {vocab_size}")
    device = input_ids.device
    selectable = attention_mask.bool() & (input_ids >= FIRST_ORDINARY_ID)
    selected = (torch.rand(input_ids.shape, generator=generator, device=device) < mask_probability) & selectable
    if not bool(selected.any()) and bool(selectable.any()):
        candidates = torch.nonzero(selectable.flatten()).squeeze(1)
        choice = candidates[torch.randint(len(candidates), (1,), generator=generator, device=device)]
        selected.view(-1)[choice] = True

    decision = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (decision < MASK_SHARE)
    to_random = selected & (decision >= MASK_SHARE) & (decision < MASK_SHARE + RANDOM_SHARE)
    random_ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, input_ids.shape, generator=generator, device=device)
    corrupted = input_ids.masked_fill(to_mask, MASK_ID)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return MaskedTokens(corrupted, selected)


class MaskedLanguageModelHead(nn.Module):
    """BERT's prediction head: dense, GELU and LayerNorm, then a decoder tied to the token embedding.

    The decoder weight is the encoder's token embedding matrix E (V, W), passed in at each
    call so that it is stored once: logits = transform(states) @ E^T + bias. Only the
    bias is the head's own parameter.
    """

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, states: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        """Map token states (S, W) to vocabulary logits (S, V) with the embedding matrix (V, W)."""
        return F.linear(self.transform(states), token_embedding, self.bias)


class MaskedLanguageModel(TextMethod):
    """Text transformer trained to predict 15 % of its tokens, corrupted 80/10/10.

    The loss is the cross-entropy on the selected positions only. The exported embedding
    is the mean of the final token states; the prediction head is not exported.
    """

    name = "mlm"
    default_lr = 5e-4
    default_optimizer = "adamw"
    default_weight_decay = 0.01

    def __init__(
        self,
        config: TrainConfig,
        tokenizer: Tokenizer,
        architecture: dict[str, Any],
        lowercase: bool,
        pretrained: PretrainedText | None = None,
    ) -> None:
        super().__init__(config, tokenizer, architecture, lowercase, pretrained)
        if not 0.0 < config.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {config.mlm_probability}")
        self.mask_probability = config.mlm_probability
        self.vocab_size = self.architecture["kwargs"]["vocab_size"]
        self.head = MaskedLanguageModelHead(self.architecture["kwargs"]["width"], self.vocab_size)

    @classmethod
    def exported_embedding_dim(cls, config: TrainConfig) -> int | None:
        if config.embedding_dim is not None:
            raise ValueError(
                "mlm trains no projection for --embedding-dim; leave it unset (the embedding is "
                "--encoder-width wide) or train simcse with --init-from this model"
            )
        return None

    def training_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        masked = mask_tokens(input_ids, attention_mask, self.vocab_size, self.mask_probability, generator)
        states = self.encoder.token_states(masked.input_ids, attention_mask)  # (N, L, W)

        # predict only the selected positions: (S, W) -> (S, V)
        logits = self.head(states[masked.selected], self.encoder.token_embedding.weight)
        targets = input_ids[masked.selected]
        if targets.numel() == 0:
            # only [CLS] and [SEP] in the whole batch: nothing to predict, a zero loss
            zero = states.sum() * 0.0
            return {"loss": zero, "masked_accuracy": zero.detach()}
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return {"loss": loss, "masked_accuracy": accuracy}
