"""Transformer text encoder (Vaswani et al., 2017) with pre-norm blocks and mean pooling.

Registered as ``text_transformer``. Every argument is a JSON value, so an artifact's
``architecture.kwargs`` rebuilds it exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.encoders import register_encoder


class SelfAttention(nn.Module):
    """Multi-head self-attention whose padding keys get zero weight."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, states: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Attend over ``states`` (N, L, W); ``key_mask`` (N, L) is True on real tokens."""
        batch, length, width = states.shape
        # (N, L, 3W) -> (N, L, 3, H, W/H) -> (3, N, H, L, W/H)
        qkv = self.qkv(states).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attention_mask = key_mask[:, None, None, :]  # (N, 1, 1, L), broadcast over heads and queries
        attended = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))  # (N, H, L, W/H) -> (N, L, W)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + MLP(norm(x)), each with dropout."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, dropout)
        self.mlp_norm = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        states = states + self.dropout(self.attention(self.attention_norm(states), key_mask))
        return states + self.dropout(self.mlp(self.mlp_norm(states)))


class TextTransformer(nn.Module):
    """Pre-norm Transformer encoder over token ids with learned position embeddings.

    Args:
        vocab_size: rows of the token embedding (the tokenizer's vocabulary size).
        max_tokens: maximum input length in tokens, with one learned position embedding each.
        width: model width W; must be divisible by ``heads``.
        depth: number of Transformer blocks.
        heads: attention heads per block.
        mlp_ratio: hidden width of each block's MLP as a multiple of W.
        dropout: dropout on embeddings, attention weights and residual branches.
        pad_id: id of ``[PAD]``; used for the attention mask when none is given.
        embedding_dim: if set, a linear layer maps the pooled states to this width.

    ``forward`` maps input ids (N, L) and an attention mask (N, L) to the mean of the
    final states of the real (non-padding) tokens, ``[CLS]`` and ``[SEP]`` included,
    projected to (N, embedding_dim) when ``embedding_dim`` is set, else (N, W). Padding
    keys are masked out of attention and padding states out of the mean, so in eval mode
    a text's embedding does not depend on how much padding its batch adds.
    """

    def __init__(
        self,
        vocab_size: int,
        max_tokens: int = 128,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        pad_id: int = 0,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(vocab_size, max_tokens, width, depth, heads, mlp_ratio, dropout, pad_id, embedding_dim)
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.feature_dim = width
        self.embedding_dim = embedding_dim or width

        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_tokens, width))
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head: nn.Module = nn.Identity() if embedding_dim is None else nn.Linear(width, embedding_dim)
        self.apply(_init_weights)
        nn.init.normal_(self.position_embedding, std=0.02)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the final, normalised state of every token (N, L, W), as masked language models need."""
        return self._encode(input_ids, self._check_inputs(input_ids, attention_mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the embedding (N, D): the mean of the real tokens' final states, then the head."""
        attention_mask = self._check_inputs(input_ids, attention_mask)
        states = self._encode(input_ids, attention_mask)
        weights = attention_mask.unsqueeze(-1).to(states.dtype)  # (N, L) -> (N, L, 1)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1)  # (N, L, W) -> (N, W)
        return self.head(pooled)

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        states = self.token_embedding(input_ids) + self.position_embedding[:, :length]
        states = self.embedding_dropout(states)
        for block in self.blocks:
            states = block(states, attention_mask)
        return self.norm(states)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Validate the shapes and return a boolean attention mask (N, L)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (N, L), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_tokens:
            raise ValueError(f"input has {input_ids.shape[1]} tokens, more than max_tokens {self.max_tokens}")
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape {tuple(input_ids.shape)}"
            )
        attention_mask = attention_mask.bool()
        if input_ids.shape[1] == 0 or not bool(attention_mask.any(dim=1).all()):
            raise ValueError("every text needs at least one real token; tokenize_batch adds [CLS] and [SEP]")
        return attention_mask


def _check_arguments(
    vocab_size: int,
    max_tokens: int,
    width: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    dropout: float,
    pad_id: int,
    embedding_dim: int | None,
) -> None:
    """Raise ValueError naming the first invalid constructor argument."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    if depth < 1 or heads < 1 or width < 1:
        raise ValueError(f"width, depth and heads must be positive, got {width}, {depth} and {heads}")
    if width % heads:
        raise ValueError(f"width {width} must be divisible by heads {heads}")
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0 <= pad_id < vocab_size:
        raise ValueError(f"pad_id must be in [0, {vocab_size}), got {pad_id}")
    if embedding_dim is not None and embedding_dim < 1:
        raise ValueError(f"embedding_dim must be positive or None, got {embedding_dim}")


def _init_weights(module: nn.Module) -> None:
    """Initialise linear and embedding weights from N(0, 0.02), as BERT does."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


register_encoder("text_transformer", TextTransformer)
