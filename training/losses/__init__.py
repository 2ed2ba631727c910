"""Self-supervised losses, one module each."""

from training.losses.nt_xent import NTXentLoss, nt_xent

__all__ = ["NTXentLoss", "nt_xent"]
