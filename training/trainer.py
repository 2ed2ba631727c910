"""One training loop for every method: schedule, step, log, checkpoint, evaluate, export.

The same loop runs in one process or in each of N ``torchrun`` processes. With N ranks,
``--batch-size`` is the global batch: every step, each rank takes its own consecutive
slice of the step's global batch, DistributedDataParallel averages gradients, and rank 0
alone logs, evaluates, checkpoints and exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.artifact import export_artifact
from training.checkpoint import capture_rng_states, load_checkpoint, resolve_resume, restore_rng_states, save_checkpoint
from training.config import TrainConfig
from training.data import ImageDataset, TextDataset, is_text_source, load_image_dataset, load_text_dataset, split_holdout
from training.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_max,
    init_distributed,
    rank_slice,
    shutdown_distributed,
    wait_for_all_ranks,
)
from training.evaluate import embedding_spread, knn_accuracy
from training.methods import Method, method_class
from training.optim import build_optimizer
from training.plots import plot_history
from training.schedules import warmup_cosine

logger = logging.getLogger(__name__)

# The collapse monitor warns when the std of L2-normalised embeddings is below a tenth of
# 1/sqrt(d), the value for isotropic embeddings (Chen & He, 2021, SimSiam), and has also
# fallen under half of its highest value in earlier epochs. The std is taken on the raw
# embeddings, not centred ones. Centring removes the shared direction, so a fully
# collapsed output (one vector plus tiny noise) would read as perfectly spread.
#
# Healthy ReLU backbone features sit below 1/sqrt(d) because they share the positive
# orthant, and narrow networks start nearly parallel. Measured on digits as a share of
# 1/sqrt(d), a ResNet-10 of width 4 gave 0.085 after its first SimCLR epoch and rose from
# there. After 3 steps, the default ResNet-18 of width 32 gave 0.06 to 0.07 under BYOL,
# rotation, jigsaw and inpainting, and MAE's ViT gave 0.015. Width 8 gave 0.3 at
# initialisation and 0.8 after 3 epochs. A constant vector plus 1e-3 noise gave 0.001.
# Hence a low value warns only once it is clearly falling.
COLLAPSE_WARNING_RATIO = 0.1
COLLAPSE_WARNING_DROP = 0.5
COLLAPSE_MONITOR_SAMPLES = 2048
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
CONFIG_FILE = "config.json"


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stops and exports nothing."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run after a step, whose state is in the checkpoint."""

    def __init__(self, signal_number: int, step: int, checkpoint: Path | None) -> None:
        self.signal_number = signal_number
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        where = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"stopped by {name} after step {step}{where}; continue with --resume auto")

    @property
    def exit_code(self) -> int:
        """Return the shell's status for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signal_number


@dataclass
class RunState:
    """Counters that a checkpoint restores."""

    step: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)  # losses of the current epoch so far


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for ``precision`` on ``device``, or None for full precision.

    ``auto`` is bf16 on CUDA devices that support it, fp16 (with a gradient scaler) on
    older CUDA devices, and fp32 on the CPU. bf16 and fp16 requested on the CPU fall back
    to fp32 with a warning, because CPU autocast is slower than fp32 for these models.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; expected auto, fp32, bf16 or fp16")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            logger.warning("precision %s is only used on CUDA; training in fp32 on %s", precision, device)
        return None
    if precision == "fp32":
        return None
    bf16_supported = torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if bf16_supported else torch.float16
    if precision == "bf16" and not bf16_supported:
        raise ValueError(f"precision bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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


class _TrainingStep(nn.Module):
    """Route a forward call to ``method.training_step``, so DistributedDataParallel can wrap it.

    DistributedDataParallel synchronises gradients only for work done inside its own
    forward call. The wrapper is never saved, so checkpoints and artifacts keep the
    method's own parameter names.
    """

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch, generator)


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
        context: DistributedContext | None = None,
    ) -> None:
        self.context = context or DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
        self.method = method.to(device)
        self.train_data = train_data
        self.holdout = holdout
        self.device = device
        self.run_dir = run_dir
        world_size = self.context.world_size
        self.batch_size = _global_batch_size(config.batch_size, len(train_data), world_size)
        self.steps_per_epoch = _steps_per_epoch(len(train_data), self.batch_size, world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_data)} training samples are too few for one step on {world_size} rank(s)")
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = min(int(config.warmup_epochs * self.steps_per_epoch), self.total_steps // 2)
        self.config = _resolved_config(config, method)
        self.model = self._wrap_for_training(method)  # before the optimiser: SyncBatchNorm swaps modules
        self.base_lr = self.config.lr
        self.optimizer = build_optimizer(
            method, self.config.optimizer, self.base_lr, self.config.weight_decay, lr_scales=method.lr_scales()
        )
        self.autocast_dtype = resolve_precision(config.precision, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(_rank_seed(config.seed, self.context.rank))
        self.state = RunState()
        self.metrics_file = run_dir / METRICS_FILE
        self._stop_signal: int | None = None
        self._stop_agreed = False

    def _wrap_for_training(self, method: Method) -> nn.Module:
        """Return the module whose forward runs a training step, DDP-wrapped across ranks."""
        # NOTE: only the gloo/CPU path is tested; NCCL, SyncBatchNorm and CUDA autocast
        # have not yet been run on a GPU.
        if not self.context.enabled:
            return _TrainingStep(method)
        if self.config.sync_batch_norm:
            if self.device.type == "cuda":
                nn.SyncBatchNorm.convert_sync_batchnorm(method)
            else:
                logger.warning("--sync-batch-norm needs CUDA; BatchNorm statistics stay per rank on %s", self.device)
        return nn.parallel.DistributedDataParallel(
            _TrainingStep(method),
            device_ids=[self.device] if self.device.type == "cuda" else None,
            # a method whose training step leaves parameters unused declares it
            find_unused_parameters=getattr(method, "ddp_find_unused_parameters", False),
        )

    def fit(self) -> RunState:
        """Run the remaining steps of training, then save a final checkpoint.

        SIGTERM or SIGINT ends the current step, saves a checkpoint and raises
        TrainingInterrupted; a second signal aborts at once.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.resume:
            self._resume(self.config.resume)
        if self.context.is_main:
            _write_json_atomically(self.run_dir / CONFIG_FILE, self.config.to_dict())
        logger.info(
            "training %s on %d samples: %d epochs x %d steps, global batch %d on %d rank(s), lr %.2e, "
            "optimizer %s, precision %s, device %s",
            self.config.method, len(self.train_data), self.config.epochs, self.steps_per_epoch, self.batch_size,
            self.context.world_size, self.base_lr, self.config.optimizer, _precision_name(self.autocast_dtype), self.device,
        )
        progress = _Progress(self.total_steps, self.state.step, self.config.log_every)
        with self._stop_on_signals():
            self._run_epochs(progress)
            if not self._checkpointed_step():
                self.save_checkpoint()
        return self.state

    def _run_epochs(self, progress: _Progress) -> None:
        while self.state.step < self.total_steps:
            epoch = self.state.step // self.steps_per_epoch
            order = self._epoch_order(epoch)
            for batch_index in range(self.state.step % self.steps_per_epoch, self.steps_per_epoch):
                indices = batch_indices(order, batch_index, self.batch_size, self.context.rank, self.context.world_size)
                losses = self.train_step(indices)
                self.state.step += 1
                self.state.epoch_losses.append(losses["loss"])
                if self.context.is_main:
                    progress.update(self.state.step, losses, self.scheduled_lr(self.state.step - 1), self.batch_size)

                # finish the epoch before any checkpoint, so a resumed run never skips its evaluation
                if batch_index == self.steps_per_epoch - 1:
                    self.state.epoch = epoch + 1
                    self._end_epoch(epoch)

                # ranks agree on stopping through the step's all-reduce; alone, stop at once
                if self._stop_agreed or (not self.context.enabled and self._stop_signal is not None):
                    self._stop_after_signal()
                if self.state.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """Return the sample order of ``epoch``, a pure function of seed and epoch (same on every rank)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_data), generator=generator)

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        # set the learning rate for this step
        lr = self.scheduled_lr(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

        # forward; every rank learns whether any rank saw a non-finite loss or a signal
        self.method.train()
        batch = self.method.make_batch(self.train_data, indices, self.device)
        with self._autocast():
            terms = self.model(batch, self.generator)
        values = _loss_values(terms)
        local_flags = [float(not all(math.isfinite(value) for value in values.values())), float(self._stop_signal is not None)]
        non_finite, stop = local_flags
        if self.context.enabled:
            non_finite, stop = all_reduce_max(torch.tensor(local_flags, device=self.device)).tolist()
        if non_finite:
            raise NonFiniteLossError(_non_finite_message(self.state.step, values, bool(local_flags[0])))

        # backward, clip and step; momentum targets follow the updated weights
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_step_end(self.state.step, self.total_steps)
        self._stop_agreed = bool(stop)
        return values

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _end_epoch(self, epoch: int) -> None:
        losses, self.state.epoch_losses = self.state.epoch_losses, []
        if not self.context.is_main:
            return
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step, "loss": float(np.mean(losses)) if losses else None}
        record.update(self.evaluate())
        self.state.history.append(record)
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        plot_history(self.state.history, self.run_dir / PLOT_FILE)
        warning = collapse_warning(self.state.history)
        if warning:
            logger.warning("%s", warning)
        logger.info("epoch %d/%d: %s", epoch + 1, self.config.epochs, _format_record(record))

    def embed(self, dataset: Any, batch_size: int = 512) -> np.ndarray:
        """Return embeddings (N, D) of ``dataset`` without augmentation."""
        self.method.eval()
        chunks = []
        with torch.no_grad(), self._autocast():
            for start in range(0, len(dataset), batch_size):
                indices = torch.arange(start, min(start + batch_size, len(dataset)))
                chunks.append(self.method.embed(self.method.make_batch(dataset, indices, self.device)).float().cpu())
        return torch.cat(chunks).numpy()

    def evaluate(self) -> dict[str, float]:
        """Return the collapse monitor's figures and, with a labelled hold-out, kNN top-1 accuracy."""
        count = min(len(self.train_data), COLLAPSE_MONITOR_SAMPLES)
        sample = torch.randperm(len(self.train_data), generator=torch.Generator().manual_seed(self.config.seed))[:count]
        metrics: dict[str, float] = dict(embedding_spread(self.embed(self.train_data.subset(sample))))

        holdout_labels = getattr(self.holdout, "labels", None)
        if holdout_labels is None or not bool((holdout_labels >= 0).any()):
            return metrics
        labelled = torch.nonzero(self.train_data.labels >= 0).squeeze(1)
        if len(labelled) == 0:
            return metrics
        reference = self.train_data.subset(labelled)
        metrics["knn_top1"] = knn_accuracy(
            self.embed(reference), reference.labels.numpy(), self.embed(self.holdout), holdout_labels.numpy()
        )
        return metrics

    def save_checkpoint(self) -> Path | None:
        """Save the run's state; every rank must call this, rank 0 writes the file and returns its path."""
        generators = all_gather_objects(self.generator.get_state())
        if not self.context.is_main:
            return None
        state = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "history": self.state.history,
            "epoch_losses": self.state.epoch_losses,
            "method": self.method.state_dict(),
            "method_extra": self.method.extra_state_for_checkpoint(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "name": "warmup_cosine",
                "step": self.state.step,
                "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps,
                "base_lr": self.base_lr,
            },
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_states(),
            "generators": generators,  # the augmentation generator of every rank, in rank order
            "world_size": self.context.world_size,
            "config": self.config.to_dict(),
        }
        return save_checkpoint(self.run_dir, self.state.step, state, self.config.keep_checkpoints)

    def _checkpointed_step(self) -> bool:
        return self.state.step > 0 and self.state.step % self.config.checkpoint_every == 0

    def _resume(self, resume: str) -> None:
        path = resolve_resume(resume, self.run_dir)
        if path is None:
            logger.info("no checkpoint in %s; starting from step 0", self.run_dir)
            return
        state = load_checkpoint(path)
        _check_resumable(state["config"], self.config, path, log_changes=self.context.is_main)

        self.method.load_state_dict(state["method"])
        self.method.load_extra_state(state["method_extra"])
        self._load_optimizer_state(state["optimizer"], path)
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        self._restore_generator(state)

        if state["scheduler"]["total_steps"] != self.total_steps and self.context.is_main:
            logger.warning(
                "the schedule changes on resume: %d total steps before, %d now",
                state["scheduler"]["total_steps"], self.total_steps,
            )
        self.state = RunState(
            step=state["step"], epoch=state["epoch"], history=list(state["history"]), epoch_losses=list(state["epoch_losses"])
        )
        if self.context.is_main:
            # epochs finished after the checkpoint are trained again, so drop their lines
            _write_metrics_lines(self.metrics_file, self.state.history)
        logger.info("resumed from %s at step %d", path, self.state.step)

    def _load_optimizer_state(self, saved: dict[str, Any], path: Path) -> None:
        """Load the optimiser's moments, keeping this run's learning-rate scale of every group."""
        saved_groups, groups = len(saved["param_groups"]), len(self.optimizer.param_groups)
        if saved_groups != groups:
            raise ValueError(
                f"checkpoint {path} has {saved_groups} optimiser parameter groups and this run has {groups}: "
                "resume with the learning-rate scales it was trained with (a BYOL checkpoint written before "
                "predictor_lr_scale existed needs --predictor-lr-scale 1)"
            )
        scales = [group["lr_scale"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, scale in zip(self.optimizer.param_groups, scales):
            group["lr_scale"] = scale

    def scheduled_lr(self, step: int) -> float:
        """Return the learning rate of ``step`` before each group's ``lr_scale``: warm-up, then cosine."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.base_lr)

    def _restore_generator(self, state: dict[str, Any]) -> None:
        """Restore this rank's augmentation generator, or reseed it when the rank count changed."""
        if state["world_size"] == self.context.world_size:
            self.generator.set_state(state["generators"][self.context.rank])
            return
        if self.context.is_main:
            logger.warning(
                "checkpoint was written by %d rank(s), this run has %d: augmentation generators are reseeded",
                state["world_size"], self.context.world_size,
            )
        self.generator.manual_seed(_rank_seed(self.config.seed, self.context.rank) + state["step"])

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Turn SIGTERM and SIGINT into a request to stop after the current step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signal_number: int, frame: object) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt(f"second signal {signal.Signals(signal_number).name}: aborting without a checkpoint")
            self.request_stop(signal_number)

        previous = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def request_stop(self, signal_number: int = signal.SIGTERM) -> None:
        """Ask the run to stop after the current step, as SIGTERM or SIGINT does."""
        self._stop_signal = signal_number

    def _stop_after_signal(self) -> None:
        checkpoint = self.save_checkpoint()
        error = TrainingInterrupted(self._stop_signal or signal.SIGTERM, self.state.step, checkpoint)
        if self.context.is_main:
            logger.warning("%s", error)
        raise error


def collapse_warning(history: list[dict[str, Any]]) -> str | None:
    """Return a warning when the last epoch's embedding std is low and has fallen, else None."""
    if len(history) < 2:
        return None
    highest = max(record["embedding_std"] for record in history[:-1])
    last = history[-1]["embedding_std"]
    reference = history[-1]["collapse_reference"]
    if last >= COLLAPSE_WARNING_RATIO * reference or last >= COLLAPSE_WARNING_DROP * highest:
        return None
    return (
        f"embeddings may be collapsing: std of L2-normalised embeddings fell from {highest:.4f} to {last:.4f}, "
        f"under {COLLAPSE_WARNING_RATIO} x 1/sqrt(d) = {COLLAPSE_WARNING_RATIO * reference:.4f}"
    )


def batch_indices(order: torch.Tensor, batch_index: int, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Return rank ``rank``'s sample indices for step ``batch_index`` of an epoch.

    The step's global batch is ``order[batch_index * batch_size:][:batch_size]``, cut to a
    multiple of ``world_size``. Each rank takes a consecutive slice of it, so the ranks'
    slices are disjoint over the epoch.
    """
    start = batch_index * batch_size
    size = min(batch_size, len(order) - start)
    size -= size % world_size
    return rank_slice(order[start : start + size], rank, world_size)


def _global_batch_size(requested: int, samples: int, world_size: int) -> int:
    """Return the global batch: ``requested``, or all samples when fewer, as a multiple of the ranks."""
    if requested % world_size:
        raise ValueError(f"batch_size {requested} must be divisible by the number of ranks, {world_size}")
    if requested < 2 * world_size:
        raise ValueError(f"batch_size {requested} leaves under 2 samples per rank on {world_size} ranks")
    batch_size = min(requested, samples)
    batch_size -= batch_size % world_size
    if batch_size < 2 * world_size:
        raise ValueError(f"{samples} training samples are too few for 2 per rank on {world_size} rank(s)")
    return batch_size


def _steps_per_epoch(samples: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches per epoch, plus the last partial one when each rank gets at least 2 samples.

    A smaller last batch is dropped: contrastive losses need two samples and batch
    normalisation cannot normalise a single one.
    """
    full, remainder = divmod(samples, batch_size)
    return full + (1 if remainder // world_size >= 2 else 0)


def _rank_seed(seed: int, rank: int) -> int:
    """Return the augmentation seed of ``rank``: ``seed`` on rank 0, so one process matches a plain run."""
    return seed + 7919 * rank


def _resolved_config(config: TrainConfig, method: Method) -> TrainConfig:
    """Return ``config`` with the method's defaults filled in, so the saved config replays the run."""
    resolved = {
        "lr": config.lr if config.lr is not None else method.default_lr,
        "optimizer": config.optimizer or method.default_optimizer,
        "weight_decay": config.weight_decay if config.weight_decay is not None else method.default_weight_decay,
    }
    temperature = getattr(method, "temperature", None)
    if config.temperature is None and isinstance(temperature, float):
        resolved["temperature"] = temperature
    return dataclasses.replace(config, **resolved)


def _check_resumable(saved: dict[str, Any], current: TrainConfig, path: Path, log_changes: bool) -> None:
    if saved["method"] != current.method:
        raise ValueError(f"checkpoint {path} is from method {saved['method']!r}, not {current.method!r}")
    if not log_changes:
        return
    names = ("batch_size", "epochs", "lr", "optimizer", "seed", "predictor_lr_scale")
    changed = [name for name in names if saved.get(name) != getattr(current, name)]
    if changed:
        details = ", ".join(f"{name} {saved.get(name)!r} -> {getattr(current, name)!r}" for name in changed)
        logger.warning("resuming %s with changed settings: %s", path, details)


def _loss_values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Return the scalar loss terms as Python floats, copied in one device-to-host transfer."""
    stacked = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
    return dict(zip(terms, stacked.tolist()))


def _non_finite_message(step: int, values: dict[str, float], local: bool) -> str:
    terms = ", ".join(f"{name}={value:.6g}" for name, value in values.items())
    where = "" if local else " on another rank (this rank's terms are finite)"
    return f"non-finite loss at step {step}{where}: {terms}"


def _precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _format_record(record: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items())


def _write_json_atomically(path: Path, value: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


def _write_metrics_lines(path: Path, records: list[dict[str, Any]]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    os.replace(temp, path)


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

    def mean_loss(self) -> float:
        return float(np.mean(self.losses[-200:]))


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def train(config: TrainConfig, argv: list[str] | None = None) -> list[Path]:
    """Run a whole ``ssl-train``: load data, train, evaluate, export. Return the artifact paths.

    Under ``torchrun`` every rank trains and only rank 0 exports; the other ranks return
    an empty list.
    """
    context = init_distributed(config.device)
    try:
        artifacts = _train(config, context, argv)
        # Ranks other than 0 finish first. Leaving the process group while rank 0 still
        # exports made gloo abort them at exit ("terminate called without an active exception").
        wait_for_all_ranks()
        return artifacts
    finally:
        shutdown_distributed()


def _train(config: TrainConfig, context: DistributedContext, argv: list[str] | None) -> list[Path]:
    seed_everything(config.seed)
    name = config.name or Path(config.out).name
    run_dir = Path(config.extra.get("run_dir") or Path("runs") / name)

    dataset = load_dataset(config)
    if config.limit is not None:
        dataset = dataset.subset(torch.arange(min(config.limit, len(dataset))))
    train_indices, holdout_indices = split_holdout(dataset.labels, config.holdout_fraction, config.seed)
    train_data = dataset.subset(train_indices)
    holdout = dataset.subset(holdout_indices) if len(holdout_indices) else None

    method = method_class(config.method).from_data(config, train_data)
    trainer = Trainer(config, method, train_data, holdout, context.device, run_dir, context)
    started = time.monotonic()
    trainer.fit()
    if not context.is_main:
        return []
    metrics = dict(trainer.state.history[-1]) if trainer.state.history else {}
    metrics.pop("epoch", None)
    metrics["train_seconds"] = round(time.monotonic() - started, 1)
    return export_method(trainer.config, method, dataset, trainer, metrics, argv)


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
        "world_size": trainer.context.world_size,
        "seed": config.seed,
        "device": str(trainer.device),
        "precision": _precision_name(trainer.autocast_dtype),
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
