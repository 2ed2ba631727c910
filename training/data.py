"""Datasets for training and evaluation: digits, image folders, .npz arrays and text files.

Images are held in memory as one uint8 tensor (N, C, H, W) and batches are cut from it
on the training device, so the augmentation pipeline works on whole batches instead of
per-image Python calls. Labels are optional; -1 marks an unlabelled sample.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEXT_EXTENSIONS = (".txt", ".jsonl", ".jsonl.gz")


@dataclass
class ImageDataset:
    """Images (N, C, H, W) uint8 with labels (N,) int64, -1 where unknown."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str
    fingerprint: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def subset(self, indices: torch.Tensor | np.ndarray) -> ImageDataset:
        indices = torch.as_tensor(indices, dtype=torch.long)
        metadata = {key: _take(value, indices) for key, value in self.metadata.items()}
        return ImageDataset(self.images[indices], self.labels[indices], self.source, self.fingerprint, metadata)

    def batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Return images ``indices`` as float (B, C, H, W) in [0, 1] on ``device``."""
        return self.images[indices].to(device, non_blocking=True).float().div_(255.0)

    def channel_statistics(self) -> tuple[list[float], list[float]]:
        """Return the per-channel mean and std of the pixels scaled to [0, 1]."""
        pixels = self.images.float().div(255.0).transpose(0, 1).reshape(self.channels, -1)
        std = pixels.std(dim=1).clamp_min(1e-3)
        return pixels.mean(dim=1).tolist(), std.tolist()


@dataclass
class TextDataset:
    """Texts with labels (N,) int64, -1 where unknown, and the label names."""

    texts: list[str]
    labels: torch.Tensor
    source: str
    fingerprint: str
    label_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: torch.Tensor | np.ndarray) -> TextDataset:
        indices = torch.as_tensor(indices, dtype=torch.long)
        texts = [self.texts[i] for i in indices.tolist()]
        return TextDataset(texts, self.labels[indices], self.source, self.fingerprint, self.label_names)


def _take(value: Any, indices: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[indices]
    if isinstance(value, np.ndarray):
        return value[indices.numpy()]
    return value


def is_text_source(spec: str) -> bool:
    return spec.endswith(TEXT_EXTENSIONS)


def load_image_dataset(spec: str, image_size: int | None = None, channels: int | None = None) -> ImageDataset:
    """Load ``digits``, a folder of image files or an ``.npz`` with an ``images`` array.

    ``image_size`` resizes every image to a square of that side (bilinear); a folder of
    images of different sizes needs it, or takes the first image's size. ``channels``
    converts to grayscale (1) or RGB (3).
    """
    if spec == "digits":
        dataset = _load_digits()
    elif spec.endswith(".npz"):
        dataset = _load_npz(Path(spec))
    elif Path(spec).is_dir():
        dataset = _load_image_folder(Path(spec), image_size, channels)
    else:
        raise ValueError(
            f"cannot read images from {spec!r}: expected 'digits', a folder of images or an .npz file"
        )
    if channels is not None and channels != dataset.channels:
        dataset.images = _convert_channels(dataset.images, channels)
    if image_size is not None and image_size != dataset.image_size:
        dataset.images = _resize(dataset.images, image_size)
    logger.info(
        "loaded %d images %s from %s (%d labelled)",
        len(dataset), tuple(dataset.images.shape[1:]), spec, int((dataset.labels >= 0).sum()),
    )
    return dataset


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16; scale them to the full uint8 range.
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    tensor = torch.from_numpy(images).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return ImageDataset(tensor, labels, "digits", _fingerprint_arrays(images), {})


def _load_npz(path: Path) -> ImageDataset:
    with np.load(path, allow_pickle=False) as archive:
        if "images" not in archive:
            raise ValueError(f"{path} has no 'images' array; found {sorted(archive.files)}")
        images = archive["images"]
        labels = archive["labels"].astype(np.int64) if "labels" in archive else None
        metadata = {name: archive[name] for name in archive.files if name not in ("images", "labels")}
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        tensor = torch.from_numpy(images).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    else:
        raise ValueError(f"{path}: 'images' must be (N, H, W) or (N, H, W, C), got {images.shape}")
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    elif labels.shape != (len(images),):
        raise ValueError(f"{path}: 'labels' must have shape ({len(images)},), got {labels.shape}")
    return ImageDataset(tensor, torch.from_numpy(labels), str(path), _fingerprint_file(path), metadata)


def _load_image_folder(root: Path, image_size: int | None, channels: int | None) -> ImageDataset:
    """Read every image under ``root``; a first-level subfolder name becomes the label."""
    from PIL import Image, ImageOps

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    class_names = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    class_index = {name: index for index, name in enumerate(class_names)}

    mode = {1: "L", 3: "RGB"}.get(channels or 3)
    arrays, labels = [], []
    for path in files:
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert(mode)
                if image_size is None:
                    image_size = min(image.size)
                image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, -1))
        except OSError as error:
            logger.warning("skipping unreadable image %s: %s", path, error)
            continue
        parts = path.relative_to(root).parts
        labels.append(class_index[parts[0]] if len(parts) > 1 else -1)
    if not arrays:
        raise ValueError(f"none of the {len(files)} image files under {root} could be read")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(str(path.stat().st_size).encode())
    return ImageDataset(images, torch.tensor(labels, dtype=torch.long), str(root), digest.hexdigest()[:16], {})


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


def load_text_dataset(spec: str, text_field: str = "text", label_field: str | None = None) -> TextDataset:
    """Load a ``.txt`` (one text per line) or ``.jsonl``/``.jsonl.gz`` file.

    For JSON lines, ``text_field`` names the text; several fields joined with ``+``
    (``short+long``) are concatenated with a newline. ``label_field`` names an optional
    string or integer label.
    """
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"text data {spec!r} is not a file")
    if spec.endswith(".txt"):
        texts = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [text for text in texts if text.strip()]
        raw_labels: list[Any] = [None] * len(texts)
    else:
        texts, raw_labels = _read_jsonl(path, text_field, label_field)
    label_names = sorted({str(label) for label in raw_labels if label is not None})
    index = {name: i for i, name in enumerate(label_names)}
    labels = torch.tensor([index[str(label)] if label is not None else -1 for label in raw_labels], dtype=torch.long)
    logger.info("loaded %d texts from %s (%d labels)", len(texts), spec, len(label_names))
    return TextDataset(texts, labels, spec, _fingerprint_file(path), label_names)


def _read_jsonl(path: Path, text_field: str, label_field: str | None) -> tuple[list[str], list[Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    fields = text_field.split("+")
    texts, labels = [], []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [name for name in fields if name not in record]
            if missing:
                raise ValueError(f"{path}:{line_number} has no field {missing[0]!r}")
            text = "\n".join(str(record[name]) for name in fields if record[name]).strip()
            if not text:
                continue
            texts.append(text)
            labels.append(record.get(label_field) if label_field else None)
    return texts, labels


def split_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, held-out); only labelled samples are held out."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    labelled = order[labels[order] >= 0]
    held_out = labelled[: int(round(fraction * len(labelled)))]
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    return torch.nonzero(keep).squeeze(1), held_out.sort().values


def _fingerprint_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _fingerprint_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
