"""Masked autoencoders (He et al., 2022): reconstruct hidden patches from the visible ones."""

from __future__ import annotations

import logging

import torch
from torch import nn

from training.config import TrainConfig
from training.encoders.vit import TransformerBlock, VisionTransformer, sincos_position_embedding
from training.losses.mae import mae_loss
from training.methods.image import ImageMethod, configured_augmentation

logger = logging.getLogger(__name__)


class MAEDecoder(nn.Module):
    """Light Transformer decoder that predicts the pixels of every patch.

    It embeds the encoder's visible tokens to ``width``, puts a shared learned mask
    token at every hidden position, restores the original patch order, adds fixed
    sine-cosine positions and maps each token to ``patch_dim`` pixel values.
    """

    def __init__(self, encoder_width: int, width: int, depth: int, grid_size: int, patch_dim: int) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"decoder_width must be divisible by 4, got {width}")
        # About 32 channels per head, with a head count that divides the width.
        heads = max(count for count in range(1, max(1, width // 32) + 1) if width % count == 0)
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer(
            "position_embedding", sincos_position_embedding(grid_size, width).unsqueeze(0), persistent=False
        )
        self.blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Return pixel predictions (N, L, patch_dim) from visible tokens (N, K, encoder_width).

        ``restore`` (N, L) gives, for each original position, its index in the
        shuffled order whose first K entries are the visible patches.
        """
        tokens = self.embed(latent)  # (N, K, width)
        batch, visible, width = tokens.shape
        length = restore.shape[1]
        mask_tokens = self.mask_token.expand(batch, length - visible, width)
        tokens = torch.cat([tokens, mask_tokens], dim=1)  # (N, L, width), shuffled order
        tokens = torch.gather(tokens, 1, restore.unsqueeze(-1).expand(-1, -1, width))  # original order
        tokens = tokens + self.position_embedding
        for block in self.blocks:
            tokens = block(tokens)
        return self.predict(self.norm(tokens))


class MAE(ImageMethod):
    """ViT encoder over the visible patches, light decoder over all, loss on the hidden ones.

    Every sample gets its own random shuffle of patch positions, the argsort of uniform
    noise from the step's generator. The first ``L - round(mask_ratio * L)`` positions
    stay visible, and only those enter the encoder. The exported encoder is the ViT over
    all patches of the unmasked image, embedding it as the mean of its patch tokens.

    NOTE: with ``embedding_dim`` set, the ViT's linear head after pooling takes no part
    in the reconstruction, so it is exported at its random initialisation.
    """

    name = "mae"
    default_encoder = "vit"
    # The MAE paper's base rate of 1.5e-4 per 256 samples is tuned for ViT-B and 800+
    # epochs. Small ViTs trained for tens of epochs learn faster with a larger one.
    default_lr = 1e-3
    default_optimizer = "adamw"
    default_weight_decay = 0.05

    def __init__(self, config: TrainConfig, channels: int, image_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__(config, channels, image_size, mean, std)
        if not isinstance(self.encoder, VisionTransformer):
            raise ValueError(f"MAE needs the 'vit' encoder, got {self.architecture['name']!r}")
        if config.decoder_depth < 1 or config.decoder_width < 1:
            raise ValueError(
                f"decoder_depth and decoder_width must be positive, got {config.decoder_depth} and {config.decoder_width}"
            )
        self.mask_ratio = config.mask_ratio
        self.patch_size = self.encoder.patch_size
        self.num_patches = self.encoder.num_patches
        self.visible_patches = self.num_patches - round(self.mask_ratio * self.num_patches)
        if not 0 < self.visible_patches < self.num_patches:
            raise ValueError(
                f"mask_ratio {self.mask_ratio} of {self.num_patches} patches leaves {self.visible_patches} visible; "
                "at least one patch must be visible and one masked"
            )
        patch_dim = channels * self.patch_size**2
        self.norm_pix_loss = config.norm_pix_loss
        if self.norm_pix_loss and patch_dim < 2:
            logger.warning("patches of %d value cannot be normalised; training MAE on raw pixels", patch_dim)
            self.norm_pix_loss = False
        # The ViT's head after pooling is never used by the reconstruction.
        self.ddp_find_unused_parameters = config.embedding_dim is not None
        self.decoder = MAEDecoder(
            self.encoder.width, config.decoder_width, config.decoder_depth, self.encoder.grid_size, patch_dim
        )
        self.augmentation = configured_augmentation(config.augment or "crop_flip", config)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Return the patches (N, L, p*p*C) of images (N, C, H, W), row-major like the ViT tokens."""
        batch, channels, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(batch, channels, height // p, p, width // p, p)  # (N, C, h, p, w, p)
        patches = patches.permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
        return patches.reshape(batch, (height // p) * (width // p), p * p * channels)

    def random_masking(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw a random shuffle of the L patch positions per sample.

        Returns ``keep`` (N, K) the visible positions, ``restore`` (N, L) the inverse
        shuffle and ``mask`` (N, L), 1 on the L - K hidden positions.
        """
        noise = torch.rand(batch, self.num_patches, generator=generator, device=generator.device)
        shuffle = torch.argsort(noise, dim=1)  # (N, L): ascending noise, first K are kept
        restore = torch.argsort(shuffle, dim=1)
        keep = shuffle[:, : self.visible_patches]
        mask = torch.ones(batch, self.num_patches, device=generator.device)
        mask[:, : self.visible_patches] = 0
        mask = torch.gather(mask, 1, restore)  # back to the original order
        return keep, restore, mask

    def training_step(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = self.normalize(self.augmentation(batch, generator))
        keep, restore, mask = (tensor.to(images.device) for tensor in self.random_masking(images.shape[0], generator))

        # encode only the visible tokens: (N, L, width) -> (N, K, width)
        tokens = self.encoder.embed_patches(images)
        visible = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        latent = self.encoder.encode(visible)

        # decode all positions, score the hidden ones
        prediction = self.decoder(latent, restore)  # (N, L, p*p*C)
        loss = mae_loss(prediction, self.patchify(images), mask, self.norm_pix_loss)
        return {"loss": loss}
