"""The resolved configuration of a training run.

Every ``ssl-train`` flag is a field here. A ``--config`` file (YAML, TOML or JSON) sets
the same names, and flags given on the command line win over the file. Files written
before the text options became fields set them under ``extra``, which still works.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

METHOD_NAMES = ("simclr", "byol", "mae", "rotation", "jigsaw", "inpainting", "mlm", "simcse", "clip")
OPTIMIZER_NAMES = ("adamw", "sgd", "lars")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEXT_METHOD_NAMES = ("mlm", "simcse", "clip")  # the methods with a text encoder
TEXT_TOWER_FIELDS = ("text_encoder_width", "text_encoder_depth", "text_heads")
# Text options that config files set under ``extra`` before they became fields.
LEGACY_EXTRA_FIELDS = ("text_dropout", *TEXT_TOWER_FIELDS)


@dataclass
class TrainConfig:
    """All settings of one ``ssl-train`` run, with each method's paper defaults."""

    method: str
    data: str
    out: str
    epochs: int = 10
    batch_size: int = 256  # global: samples per optimiser step, summed over all ranks
    lr: float | None = None  # None: the method's default
    optimizer: str | None = None  # adamw, sgd or lars; None: the method's default
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    grad_clip: float = 3.0
    precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; fp32 on CPU), fp32, bf16, fp16
    seed: int = 0
    device: str = "auto"
    resume: str | None = None
    checkpoint_every: int = 500  # steps
    keep_checkpoints: int = 2
    log_every: int = 20  # steps
    sync_batch_norm: bool = False  # synchronise BatchNorm statistics across ranks (CUDA only)
    holdout_fraction: float = 0.2  # labelled share kept out of training for kNN
    limit: int | None = None  # use at most this many samples
    name: str | None = None  # artifact name; default: the output folder's name

    # encoder
    encoder: str | None = None  # resnet, vit, mlp or text_transformer; None: the method's default
    encoder_depth: int | None = None
    encoder_width: int | None = None
    embedding_dim: int | None = None
    patch_size: int | None = None
    heads: int | None = None
    image_size: int | None = None  # None: the data's own size
    channels: int | None = None  # None: the data's own channels

    # augmentations
    augment: str | None = None  # preset name; None: the method's preset
    crop_scale_min: float | None = None
    horizontal_flip_prob: float | None = None
    shear: float | None = None  # slant factors drawn from [-shear, shear]
    morphology_prob: float | None = None  # share of views whose strokes are thickened or thinned

    # method settings
    temperature: float | None = None
    projection_dim: int = 128
    projection_hidden_dim: int = 512
    momentum_base: float = 0.996
    predictor_lr_scale: float = 30.0  # BYOL's prediction head learns this many times faster
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_width: int = 128
    decoder_depth: int = 2
    jigsaw_grid: int = 3
    jigsaw_permutations: int = 100
    inpainting_mask: str = "block"  # block or patches

    # text
    text_field: str = "text"
    label_field: str | None = None
    vocab_size: int = 8000
    max_tokens: int = 128
    lowercase: bool = True
    mlm_probability: float = 0.15
    init_from: str | None = None  # artifact or checkpoint to start the encoder from
    text_dropout: float | None = None  # text encoder dropout in [0, 1); None: the method's default

    # image-text
    image_field: str | None = None
    caption_rule: str | None = None
    fonts_json: str | None = None
    # sizes of clip's text tower, None for its defaults; mlm and simcse take encoder_width, encoder_depth and heads
    text_encoder_width: int | None = None
    text_encoder_depth: int | None = None
    text_heads: int | None = None

    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def __post_init__(self) -> None:
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a mapping of settings, got {self.extra!r}")
        self._take_legacy_extra()
        if self.method not in METHOD_NAMES:
            raise ValueError(f"unknown method {self.method!r}; expected one of {', '.join(METHOD_NAMES)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")

        if self.optimizer is not None and self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.predictor_lr_scale <= 0:
            raise ValueError(f"predictor_lr_scale must be positive, got {self.predictor_lr_scale}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be non-negative, got {self.warmup_epochs}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be non-negative (0 turns clipping off), got {self.grad_clip}")

        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 step, got {self.checkpoint_every}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be non-negative (0 keeps all), got {self.keep_checkpoints}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1 step, got {self.log_every}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be at least 2 samples, got {self.limit}")
        self._check_text_options()

    def _take_legacy_extra(self) -> None:
        """Move the text options that older config files set under ``extra`` onto their fields.

        A value set on the field itself, such as by a flag, wins over the one under ``extra``.
        """
        legacy = {name: self.extra[name] for name in LEGACY_EXTRA_FIELDS if name in self.extra}
        self.extra = {name: value for name, value in self.extra.items() if name not in legacy}
        for name, value in legacy.items():
            if not _applies_to(name, self.method):
                # older files shared between methods carried keys that other methods ignored
                logger.warning("ignoring extra.%s: it does not apply to %s", name, self.method)
            elif getattr(self, name) is None:
                setattr(self, name, value)

    def _check_text_options(self) -> None:
        """Validate the text dropout and the clip text tower sizes, and store the dropout as a float."""
        if self.text_dropout is not None:
            if not _is_number(self.text_dropout) or not 0.0 <= self.text_dropout < 1.0:
                raise ValueError(f"text_dropout must be a number in [0, 1), got {self.text_dropout!r}")
            self.text_dropout = float(self.text_dropout)
            if self.method not in TEXT_METHOD_NAMES:
                raise ValueError(
                    f"text_dropout applies only to methods with a text encoder ({', '.join(TEXT_METHOD_NAMES)}), "
                    f"not to {self.method}. Leave it unset."
                )

        tower = {name: getattr(self, name) for name in TEXT_TOWER_FIELDS if getattr(self, name) is not None}
        for name, value in tower.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        width, heads = tower.get("text_encoder_width"), tower.get("text_heads")
        if width is not None and heads is not None and width % heads:
            raise ValueError(f"text_encoder_width {width} must be divisible by text_heads {heads}")
        if tower and self.method != "clip":
            raise ValueError(
                f"the clip text tower options {', '.join(tower)} do not apply to {self.method}. "
                "Set encoder_width, encoder_depth and heads to size its encoder."
            )


def _applies_to(name: str, method: str) -> bool:
    """Return whether the text option ``name`` is used by ``method``."""
    if name == "text_dropout":
        return method in TEXT_METHOD_NAMES
    return method == "clip"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file of ``TrainConfig`` fields; unknown keys raise."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        values = tomllib.loads(text)
    elif path.suffix == ".json":
        values = json.loads(text)
    else:
        values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = set(values) - TrainConfig.field_names()
    if unknown:
        raise ValueError(f"{path} sets unknown options: {', '.join(sorted(unknown))}")
    _check_legacy_extra(path, values)
    return values


def _check_legacy_extra(path: Path, values: dict[str, Any]) -> None:
    """Raise ValueError when ``values`` sets a text option both at the top level and, to another value, under ``extra``."""
    extra = values.get("extra")
    if not isinstance(extra, dict):
        return
    for name in LEGACY_EXTRA_FIELDS:
        if name in extra and values.get(name) is not None and extra[name] != values[name]:
            raise ValueError(
                f"{path} sets {name} twice, {values[name]!r} at the top level and {extra[name]!r} under extra. "
                "Remove the one under extra."
            )
