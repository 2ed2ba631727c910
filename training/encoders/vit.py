"""Vision Transformer encoder (Dosovitskiy et al., 2021) with fixed 2-D sine-cosine positions.

The encoder splits an image into non-overlapping square patches, embeds each with one
strided convolution, adds fixed sine-cosine position embeddings (as MAE does, so the
positions need no training and no weights) and runs pre-norm Transformer blocks.
The embedding of an image is the mean of its patch tokens after the final LayerNorm;
there is no class token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.encoders import register_encoder


def sincos_position_embedding(grid_size: int, width: int) -> torch.Tensor:
    """Return fixed 2-D sine-cosine position embeddings (grid_size**2, width).

    Half of the channels encode the row and half the column. Each half has sines and
    cosines of ``width / 4`` frequencies from 1 down to 1/10000.
    """
    if width % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {width}")
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (width/4,)
    coordinates = torch.arange(grid_size, dtype=torch.float64)
    rows, columns = torch.meshgrid(coordinates, coordinates, indexing="ij")  # (g, g) each

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * frequencies.view(1, -1)  # (g*g, width/4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (g*g, width/2)

    return torch.cat([encode(rows), encode(columns)], dim=1).float()  # (g*g, width)


class Attention(nn.Module):
    """Multi-head self-attention over tokens (N, L, width)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, width = tokens.shape
        # (N, L, 3 * width) -> (3, N, heads, L, width / heads)
        qkv = self.qkv(tokens).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, L, width / heads)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by the number of heads {heads}")
        self.norm1 = nn.LayerNorm(width)
        self.attention = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class VisionTransformer(nn.Module):
    """ViT backbone that returns the mean of its patch tokens.

    Args:
        in_channels: 1 for grayscale, 3 for RGB.
        image_size: side of the square input; it must be a multiple of ``patch_size``.
        patch_size: side of the square patches.
        width: token width.
        depth: number of Transformer blocks.
        heads: attention heads; ``width`` must be divisible by it.
        mlp_ratio: hidden width of each block's MLP relative to ``width``.
        embedding_dim: if set, a linear layer maps the pooled tokens to this width.

    Input (N, in_channels, image_size, image_size) float, output (N, embedding_dim).
    MAE calls ``embed_patches`` and ``encode`` separately to drop masked tokens in between.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 4,
        width: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size < patch_size or image_size % patch_size:
            raise ValueError(
                f"ViT image_size {image_size} must be a positive multiple of patch_size {patch_size}; "
                "choose a patch size that divides the image size"
            )
        if depth < 1:
            raise ValueError(f"ViT depth must be at least 1, got {depth}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.width = width

        self.patch_embedding = nn.Conv2d(in_channels, width, patch_size, patch_size)
        self.register_buffer(
            "position_embedding", sincos_position_embedding(self.grid_size, width).unsqueeze(0), persistent=False
        )
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head: nn.Module = nn.Identity()
        if embedding_dim is not None:
            self.head = nn.Linear(width, embedding_dim)
        self.embedding_dim = embedding_dim or width
        self.apply(_init_weights)
        # The patch embedding is a linear map of flattened patches; initialise it as one.
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(width, -1))

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Return position-embedded patch tokens (N, L, width), row-major, of images (N, C, H, W)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"ViT expects images (N, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        tokens = self.patch_embedding(images).flatten(2).transpose(1, 2)  # (N, width, g, g) -> (N, g*g, width)
        return tokens + self.position_embedding

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the blocks and the final LayerNorm over tokens (N, L, width)."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encode(self.embed_patches(images))
        return self.head(tokens.mean(dim=1))  # (N, L, width) -> (N, width) -> (N, embedding_dim)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


register_encoder("vit", VisionTransformer)

__all__ = ["Attention", "TransformerBlock", "VisionTransformer", "sincos_position_embedding"]
