"""One training loop for every method: schedule, step, log, checkpoint, evaluate, export."""

from __future__ import annotations

import json
import logging
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.artifact import export_artifact
from training.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from training.config import TrainConfig
from training.data import ImageDataset, TextDataset, is_text_source, load_image_dataset, load_text_dataset, split_holdout
from training.evaluate import knn_accuracy
from training.methods import Method, method_class
from training.optim import build_optimizer
from training.schedules import warmup_cosine

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stops and exports nothing."""


@dataclass
class RunState:
    """Counters that a checkpoint restores."""

    step: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_dataset(config: TrainConfig) -> ImageDataset | TextDataset:
    """Load the training data that ``config.method`` consumes."""
    if config.method == "clip":
        from training.data_pairs import load_pair_dataset  # image-text pairs

        return load_pair_dataset(config)
    if config.method in ("mlm", "simcse"):
        if not is_text_source(config.data):
            raise ValueError(f"method {config.method} needs a .txt or .jsonl(.gz) file, got {config.data!r}")
        return load_text_dataset(config.data, config.text_field, config.label_field)
    if is_text_source(config.data):
        raise ValueError(f"method {config.method} trains on images, but {config.data!r} is a text file")
    return load_image_dataset(config.data, config.image_size, config.channels)


class Trainer:
    """Train ``method`` on ``train_data``; measure kNN on ``holdout`` when it has labels."""

    def __init__(
        self,
        config: TrainConfig,
        method: Method,
        train_data: Any,
        holdout: Any | None,
        device: torch.device,
        run_dir: Path,
    ) -> None:
        self.config = config
        self.method = method.to(device)
        self.train_data = train_data
        self.holdout = holdout
        self.device = device
        self.run_dir = run_dir
        self.batch_size = min(config.batch_size, len(train_data))
        self.steps_per_epoch = _steps_per_epoch(len(train_data), self.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = min(int(config.warmup_epochs * self.steps_per_epoch), self.total_steps // 2)
        self.base_lr = config.lr if config.lr is not None else method.default_lr
        self.optimizer = build_optimizer(
            method,
            config.optimizer or method.default_optimizer,
            self.base_lr,
            config.weight_decay if config.weight_decay is not None else method.default_weight_decay,
        )
        self.autocast_dtype = _autocast_dtype(config.precision, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.state = RunState()
        self.metrics_file = run_dir / "metrics.jsonl"

    def fit(self) -> RunState:
        """Run the remaining steps of training and return the final run state."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.resume:
            self._resume(self.config.resume)
        logger.info(
            "training %s on %d samples: %d epochs x %d steps, batch %d, lr %.2e, device %s",
            self.config.method, len(self.train_data), self.config.epochs, self.steps_per_epoch,
            self.batch_size, self.base_lr, self.device,
        )
        progress = _Progress(self.total_steps, self.state.step, self.config.log_every)
        while self.state.step < self.total_steps:
            epoch = self.state.step // self.steps_per_epoch
            order = self._epoch_order(epoch)
            first = self.state.step % self.steps_per_epoch
            for batch_index in range(first, self.steps_per_epoch):
                indices = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
                losses = self._train_step(indices)
                self.state.step += 1
                progress.update(self.state.step, losses, self.optimizer.param_groups[0]["lr"], len(indices))
                if self.state.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
            self.state.epoch = epoch + 1
            self._end_epoch(epoch, progress.mean_loss())
        return self.state

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """Return the sample order of ``epoch``, a pure function of seed and epoch."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_data), generator=generator)

    def _train_step(self, indices: torch.Tensor) -> dict[str, float]:
        # set the learning rate for this step
        lr = warmup_cosine(self.state.step, self.total_steps, self.warmup_steps, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

        # forward and backward
        self.method.train()
        batch = self.method.make_batch(self.train_data, indices, self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            terms = self.method.training_step(batch, self.generator)
        values = {name: float(value.detach()) for name, value in terms.items()}
        if not all(math.isfinite(value) for value in values.values()):
            raise NonFiniteLossError(f"non-finite loss at step {self.state.step}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()

        # clip and step; momentum targets follow the updated weights
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_step_end(self.state.step, self.total_steps)
        return values

    def _end_epoch(self, epoch: int, mean_loss: float | None) -> None:
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step, "loss": mean_loss}
        if self.holdout is not None:
            record.update(self.evaluate())
        self.state.history.append(record)
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        std = record.get("embedding_std")
        if std is not None and std < 0.1 * record["collapse_reference"]:
            logger.warning(
                "embeddings may be collapsing: std of normalised embeddings %.4f, 1/sqrt(d) = %.4f",
                std, record["collapse_reference"],
            )
        logger.info("epoch %d/%d: %s", epoch + 1, self.config.epochs, _format_record(record))

    def embed(self, dataset: Any, batch_size: int = 512) -> np.ndarray:
        """Return embeddings (N, D) of ``dataset`` without augmentation."""
        self.method.eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                indices = torch.arange(start, min(start + batch_size, len(dataset)))
                chunks.append(self.method.embed(self.method.make_batch(dataset, indices, self.device)).float().cpu())
        return torch.cat(chunks).numpy()

    def evaluate(self) -> dict[str, float]:
        """Return held-out kNN accuracy and the collapse monitor's embedding spread."""
        labelled = self.train_data.labels >= 0
        reference = self.train_data.subset(torch.nonzero(labelled).squeeze(1)) if not labelled.all() else self.train_data
        train_embeddings = self.embed(reference)
        holdout_embeddings = self.embed(self.holdout)
        normalised = train_embeddings / np.maximum(np.linalg.norm(train_embeddings, axis=1, keepdims=True), 1e-12)
        return {
            "knn_top1": knn_accuracy(train_embeddings, reference.labels.numpy(), holdout_embeddings, self.holdout.labels.numpy()),
            "embedding_std": float(normalised.std(axis=0).mean()),
            "collapse_reference": 1.0 / math.sqrt(normalised.shape[1]),
        }

    def save_checkpoint(self) -> Path:
        state = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "history": self.state.history,
            "method": self.method.state_dict(),
            "method_extra": self.method.extra_state_for_checkpoint(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "config": self.config.to_dict(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return save_checkpoint(self.run_dir, self.state.step, state, self.config.keep_checkpoints)

    def _resume(self, resume: str) -> None:
        path = resolve_resume(resume, self.run_dir)
        if path is None:
            logger.info("no checkpoint in %s; starting from step 0", self.run_dir)
            return
        state = load_checkpoint(path)
        self.method.load_state_dict(state["method"])
        self.method.load_extra_state(state["method_extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.state = RunState(step=state["step"], epoch=state["epoch"], history=list(state["history"]))
        logger.info("resumed from %s at step %d", path, self.state.step)


def _steps_per_epoch(samples: int, batch_size: int) -> int:
    """Full batches per epoch, plus the last partial one when it has at least 2 samples.

    A last batch of one sample is dropped: contrastive losses need two samples and
    batch normalisation cannot normalise a single one.
    """
    full, remainder = divmod(samples, batch_size)
    return full + (1 if remainder >= 2 else 0)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision in ("auto", "fp32") or device.type != "cuda":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            logger.warning("precision %s is only used on CUDA; training in fp32 on %s", precision, device)
        return None if precision != "auto" or device.type != "cuda" else torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _format_record(record: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items())


class _Progress:
    """Periodic progress line: step/total, loss now and mean, lr, samples/s and ETA."""

    def __init__(self, total_steps: int, start_step: int, every: int) -> None:
        self.total_steps = total_steps
        self.every = max(1, every)
        self.start_time = time.monotonic()
        self.start_step = start_step
        self.samples = 0
        self.losses: list[float] = []

    def update(self, step: int, losses: dict[str, float], lr: float, batch_size: int) -> None:
        self.samples += batch_size
        self.losses.append(losses["loss"])
        if step % self.every and step != self.total_steps:
            return
        elapsed = time.monotonic() - self.start_time
        rate = (step - self.start_step) / max(elapsed, 1e-9)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        terms = " ".join(f"{name} {value:.4f}" for name, value in losses.items())
        logger.info(
            "step %d/%d %s (mean %.4f) lr %.2e %.1f samples/s eta %s",
            step, self.total_steps, terms, self.mean_loss(), lr, self.samples / max(elapsed, 1e-9), _format_seconds(eta),
        )

    def mean_loss(self) -> float | None:
        recent = self.losses[-200:]
        return float(np.mean(recent)) if recent else None


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def train(config: TrainConfig, argv: list[str] | None = None) -> list[Path]:
    """Run a whole ``ssl-train``: load data, train, evaluate, export. Return the artifact paths."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    name = config.name or Path(config.out).name
    run_dir = Path(config.extra.get("run_dir") or Path("runs") / name)

    dataset = load_dataset(config)
    if config.limit is not None:
        dataset = dataset.subset(torch.arange(min(config.limit, len(dataset))))
    train_indices, holdout_indices = split_holdout(dataset.labels, config.holdout_fraction, config.seed)
    train_data = dataset.subset(train_indices)
    holdout = dataset.subset(holdout_indices) if len(holdout_indices) else None

    method = method_class(config.method).from_data(config, train_data)
    trainer = Trainer(config, method, train_data, holdout, device, run_dir)
    started = time.monotonic()
    trainer.fit()
    trainer.save_checkpoint()
    metrics = dict(trainer.state.history[-1]) if trainer.state.history else {}
    metrics.pop("epoch", None)
    metrics["train_seconds"] = round(time.monotonic() - started, 1)
    return export_method(config, method, dataset, trainer, metrics, argv)


def export_method(
    config: TrainConfig, method: Method, dataset: Any, trainer: Trainer, metrics: dict[str, Any], argv: list[str] | None
) -> list[Path]:
    """Export every encoder of ``method`` as an artifact under ``config.out``."""
    name = config.name or Path(config.out).name
    command = "ssl-train " + shlex.join(argv if argv is not None else sys.argv[1:])
    training_info = {
        "command": command,
        "data": config.data,
        "data_fingerprint": dataset.fingerprint,
        "epochs": config.epochs,
        "steps": trainer.state.step,
        "batch_size": trainer.batch_size,
        "seed": config.seed,
        "device": str(trainer.device),
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
    }
    specs = method.export_specs()
    paths = []
    for spec in specs:
        artifact_name = name + spec.suffix
        out = Path(config.out).with_name(Path(config.out).name + spec.suffix)
        meta = {
            "name": artifact_name,
            "modality": spec.modality,
            "architecture": spec.architecture,
            "embedding_dim": spec.embedding_dim,
            "preprocessing": spec.preprocessing,
            "normalize": True,
            "method": config.method,
            "space": name,
            "training": training_info,
            "metrics": metrics,
        }
        paths.append(export_artifact(out, spec.encoder, meta, spec.tokenizer_json))
    return paths
