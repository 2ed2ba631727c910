"""Training checkpoints for resuming, written atomically and pruned to the last K.

A checkpoint is a ``torch.save`` dictionary of plain tensors and Python values (loadable
with ``weights_only=True``): method state (encoders, heads, momentum targets), optimiser,
scheduler position, scaler, step, RNG states and the resolved config.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as ``checkpoint-<step>.pt`` (temp file, fsync, rename), keep the newest ``keep``.

    ``keep`` 0 keeps every checkpoint. A reader never sees a half-written file: a crash
    leaves at most a ``.checkpoint-*.tmp`` file, which ``list_checkpoints`` ignores.
    """
    if keep < 0:
        raise ValueError(f"keep must be non-negative (0 keeps all), got {keep}")
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / f"checkpoint-{step:08d}.pt"
    descriptor, temp_name = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    logger.info("saved checkpoint %s", target)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Return the checkpoints in ``run_dir``, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in run_dir.iterdir() if (match := CHECKPOINT_PATTERN.match(path.name))]
    return [path for _, path in sorted(found)]


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """Return the checkpoint to resume from: ``auto`` picks the newest in ``run_dir``."""
    if resume == "auto":
        checkpoints = list_checkpoints(run_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if path.is_dir():
        checkpoints = list_checkpoints(path)
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoint-*.pt in {path}")
        return checkpoints[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without executing code from it."""
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng_states() -> dict[str, Any]:
    """Return the global torch, CUDA, numpy and Python RNG states as checkpoint values."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_states` returned (CUDA only where CUDA is present)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["bit_generator"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_dir(directory: Path) -> None:
    """Flush the folder entry of a renamed file, so the rename survives a power loss."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
