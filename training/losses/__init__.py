"""Self-supervised losses, one module each."""

from training.losses.byol import BYOLLoss, byol_loss
from training.losses.clip import CLIPLoss, clip_loss
from training.losses.info_nce import InfoNCELoss, info_nce
from training.losses.inpainting import masked_pixel_loss
from training.losses.mae import mae_loss, normalize_patches
from training.losses.nt_xent import NTXentLoss, nt_xent

__all__ = [
    "BYOLLoss",
    "CLIPLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "byol_loss",
    "clip_loss",
    "info_nce",
    "mae_loss",
    "masked_pixel_loss",
    "normalize_patches",
    "nt_xent",
]
