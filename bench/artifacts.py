"""Find the model artifacts a benchmark runs on by reading ``models/*/model.json``."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("bench.artifacts")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class ArtifactInfo:
    """One artifact folder and the fields of its model.json that benchmarks need."""

    name: str
    modality: str
    path: Path


def list_artifacts(models_dir: Path) -> list[ArtifactInfo]:
    """Return the artifacts under ``models_dir`` sorted by name; unreadable model.json files are skipped with a warning."""
    if not models_dir.is_dir():
        raise ValueError(f"models folder {models_dir} does not exist; pass --models-dir")
    found = []
    for meta_path in sorted(models_dir.glob("*/model.json")):
        if meta_path.parent.name.startswith("."):
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            found.append(ArtifactInfo(name=str(meta["name"]), modality=str(meta["modality"]), path=meta_path.parent))
        except (OSError, ValueError, KeyError) as error:
            logger.warning("skipping %s: %s", meta_path, error)
    return found


def pick_artifact(models_dir: Path, modality: str, name: str | None = None) -> ArtifactInfo | None:
    """Return the artifact called ``name``, else the first of ``modality`` by name, else None.

    Raises ValueError when ``name`` is given but no artifact of that name and modality exists.
    """
    candidates = [info for info in list_artifacts(models_dir) if info.modality == modality]
    if name is None:
        return candidates[0] if candidates else None
    for info in candidates:
        if info.name == name:
            return info
    available = [info.name for info in candidates]
    raise ValueError(f"no {modality} model named {name!r} in {models_dir}; {modality} models there: {available}")


def single_model_dir(artifact: ArtifactInfo, parent: Path) -> Path:
    """Return a models folder under ``parent`` that contains only ``artifact`` (a symbolic link, or a copy where links fail)."""
    folder = parent / f"models-{artifact.name}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / artifact.path.name
    if not target.exists():
        try:
            target.symlink_to(artifact.path.resolve(), target_is_directory=True)
        except OSError:
            shutil.copytree(artifact.path, target)
    return folder
