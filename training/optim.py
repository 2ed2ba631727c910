"""Optimisers: AdamW, SGD with momentum and LARS, with weight decay off for norms and biases."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from training.config import OPTIMIZER_NAMES


def parameter_groups(
    module: nn.Module, weight_decay: float, lr_scales: Mapping[nn.Module, float] | None = None
) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and undecayed groups, per learning-rate scale.

    Biases and normalisation weights (every parameter with fewer than 2 dimensions)
    get no weight decay and are excluded from LARS adaptation, as in You et al. (2017)
    and the SimCLR and BYOL recipes. Frozen parameters (momentum targets) are left out.
    The first two groups (decayed, then undecayed) contain every parameter at scale 1, even
    when empty, so that checkpoints keep one layout. The parameters of each submodule in
    ``lr_scales`` follow in groups of their own, whose ``lr_scale`` multiplies the
    scheduled learning rate. Empty scaled groups are left out.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    scale_of: dict[int, float] = {}
    for submodule, scale in (lr_scales or {}).items():
        if scale <= 0:
            raise ValueError(f"learning-rate scales must be positive, got {scale}")
        scale_of.update((id(parameter), scale) for parameter in submodule.parameters())
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for parameter in module.parameters():
        if not parameter.requires_grad:
            continue
        key = (scale_of.get(id(parameter), 1.0), parameter.ndim >= 2)
        groups.setdefault(key, []).append(parameter)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lars": decayed, "lr_scale": scale}
        for (scale, decayed), params in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
    ]


def build_optimizer(
    module: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    lr_scales: Mapping[nn.Module, float] | None = None,
) -> torch.optim.Optimizer:
    """Build optimiser ``name`` (adamw, sgd or lars) over the trainable parameters of ``module``.

    The trainer overwrites each group's learning rate every step from the schedule, times
    the group's ``lr_scale`` (see parameter_groups).
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    groups = parameter_groups(module, weight_decay, lr_scales)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "lars":
        return LARS(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017, Algorithm 1).

    For every parameter tensor w (a "layer") with gradient g, in a group with
    ``lars=True``::

        local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)
        v <- momentum * v + lr * local_lr * (g + weight_decay * w)
        w <- w - v

    The local rate falls back to 1 when ``||w||`` or ``||g||`` is 0 (a freshly zeroed
    layer would otherwise never move). Groups with ``lars=False`` (biases and norms) take
    the same step with ``local_lr = 1``. The global ``lr`` sits inside the momentum
    buffer, as in the paper, so a learning-rate schedule scales new updates only.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be positive, got {trust_coefficient}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    self._update(parameter, group)
        return loss

    def _update(self, parameter: torch.Tensor, group: dict[str, Any]) -> None:
        grad = parameter.grad
        update = grad.add(parameter, alpha=group["weight_decay"])
        scale = torch.full((), group["lr"], dtype=parameter.dtype, device=parameter.device)
        if group["lars"]:
            weight_norm = torch.linalg.vector_norm(parameter)
            grad_norm = torch.linalg.vector_norm(grad)
            local_lr = torch.where(
                (weight_norm > 0) & (grad_norm > 0),
                group["trust_coefficient"] * weight_norm / (grad_norm + group["weight_decay"] * weight_norm),
                torch.ones_like(weight_norm),
            )
            scale = scale * local_lr
        state = self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(parameter)
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(update * scale)
        parameter.sub_(buffer)
