"""Image-text pairs for CLIP-style training.

Three sources give one caption per image:

- a folder of images with a caption file beside them, either ``captions.jsonl``, one
  JSON object per line ``{"file": "cats/1.png", "caption": "a black cat", "label": "cat"}``
  (``label`` optional), or ``captions.txt``, one ``FILE<TAB>CAPTION`` per line, where
  blank lines and lines starting with ``#`` are skipped. ``FILE`` is relative to the
  folder. Images that no caption line names are not used.
- a ``.jsonl`` or ``.jsonl.gz`` file whose records name an image file (relative to the
  file's folder) in ``--image-field`` and its caption in ``--text-field`` (several fields
  joined with ``+`` are concatenated with a newline), with ``--label-field`` optional.
- any image data that ``ssl-train`` reads (an ``.npz``, ``digits``, a folder without a
  caption file) plus ``--caption-rule``, which writes captions from labels and metadata
  (see :mod:`training.captions`). For an ``.npz`` with ``font_ids``, the font names come
  from ``--fonts-json``, by default the ``fonts.json`` beside the ``.npz``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.captions import caption_images, read_fonts
from training.config import TrainConfig
from training.data import ImageDataset, load_image_dataset

logger = logging.getLogger(__name__)

CAPTION_FILES = ("captions.jsonl", "captions.txt")


@dataclass
class PairDataset:
    """Images (N, C, H, W) uint8 with one caption each; labels (N,) are the images' labels, -1 where unknown."""

    images: ImageDataset
    captions: list[str]

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> torch.Tensor:
        return self.images.labels

    @property
    def fingerprint(self) -> str:
        return self.images.fingerprint

    @property
    def source(self) -> str:
        return self.images.source

    @property
    def texts(self) -> list[str]:
        """Return the captions, the texts a tokenizer is trained on."""
        return self.captions

    def subset(self, indices: torch.Tensor | np.ndarray) -> PairDataset:
        indices = torch.as_tensor(indices, dtype=torch.long)
        return PairDataset(self.images.subset(indices), [self.captions[i] for i in indices.tolist()])


def load_pair_dataset(config: TrainConfig) -> PairDataset:
    """Load the image-caption pairs that ``config.data`` and the caption settings describe."""
    spec = config.data
    folder = Path(spec)
    caption_file = next((folder / name for name in CAPTION_FILES if (folder / name).is_file()), None) if folder.is_dir() else None
    if caption_file is not None and config.caption_rule is None:
        dataset = _load_caption_file(caption_file, config.image_size, config.channels)
    elif spec.endswith((".jsonl", ".jsonl.gz")):
        dataset = _load_jsonl_pairs(folder, config)
    elif config.caption_rule is not None:
        dataset = _load_with_rule(spec, config)
    else:
        raise ValueError(
            f"no captions for {spec!r}: give a folder with {' or '.join(CAPTION_FILES)}, "
            "a .jsonl with --image-field, or --caption-rule"
        )
    logger.info("loaded %d image-caption pairs from %s, such as %r", len(dataset), spec, dataset.captions[0])
    return dataset


def _load_with_rule(spec: str, config: TrainConfig) -> PairDataset:
    images = load_image_dataset(spec, config.image_size, config.channels)
    font_ids = images.metadata.get("font_ids")
    fonts = None
    fonts_path = Path(config.fonts_json) if config.fonts_json else Path(spec).with_name("fonts.json")
    if font_ids is not None and fonts_path.is_file():
        fonts = read_fonts(fonts_path)
    elif config.fonts_json:
        raise ValueError(f"fonts file {config.fonts_json!r} does not exist")
    font_id_array = np.asarray(font_ids) if font_ids is not None else None
    captions = caption_images(images.labels.numpy(), config.caption_rule, font_id_array, fonts)
    return PairDataset(images, captions)


def _load_caption_file(path: Path, image_size: int | None, channels: int | None) -> PairDataset:
    if path.suffix == ".jsonl":
        entries = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "file" not in record or "caption" not in record:
                raise ValueError(f"{path}:{line_number} needs the fields 'file' and 'caption'")
            entries.append((str(record["file"]), str(record["caption"]), record.get("label")))
    else:
        entries = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            if "\t" not in line:
                raise ValueError(f"{path}:{line_number} must be FILE<TAB>CAPTION")
            file, caption = line.split("\t", 1)
            entries.append((file, caption, None))
    return _read_pairs(path.parent, entries, path, image_size, channels)


def _load_jsonl_pairs(path: Path, config: TrainConfig) -> PairDataset:
    if not config.image_field:
        raise ValueError(f"image-text pairs from {str(path)!r} need --image-field, the field that names each image file")
    if not path.is_file():
        raise ValueError(f"pair data {str(path)!r} is not a file")
    text_fields = config.text_field.split("+")
    opener = gzip.open if path.suffix == ".gz" else open
    entries = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [name for name in (config.image_field, *text_fields) if name not in record]
            if missing:
                raise ValueError(f"{path}:{line_number} has no field {missing[0]!r}")
            caption = "\n".join(str(record[name]) for name in text_fields if record[name]).strip()
            label = record.get(config.label_field) if config.label_field else None
            entries.append((str(record[config.image_field]), caption, label))
    return _read_pairs(path.parent, entries, path, config.image_size, config.channels)


def _read_pairs(
    root: Path, entries: list[tuple[str, str, Any]], caption_path: Path, image_size: int | None, channels: int | None
) -> PairDataset:
    """Read the image of each (file, caption, label) entry; unreadable images are skipped with a warning."""
    from PIL import Image, ImageOps

    if not entries:
        raise ValueError(f"{caption_path} lists no images")
    root = root.resolve()
    mode = {1: "L", 3: "RGB"}.get(channels or 3)
    if mode is None:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    arrays, captions, labels = [], [], []
    digest = hashlib.sha256(caption_path.read_bytes())
    for file, caption, label in entries:
        path = (root / file).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{caption_path}: image {file!r} lies outside {root}")
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert(mode)
                image_size = image_size or min(image.size)
                image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, -1))
        except OSError as error:
            logger.warning("skipping unreadable image %s: %s", path, error)
            continue
        digest.update(f"{file}:{path.stat().st_size}".encode())
        captions.append(caption)
        labels.append(label)
    if not arrays:
        raise ValueError(f"none of the {len(entries)} images listed in {caption_path} could be read")

    label_names = sorted({str(label) for label in labels if label is not None})
    index = {name: i for i, name in enumerate(label_names)}
    label_tensor = torch.tensor([index[str(label)] if label is not None else -1 for label in labels], dtype=torch.long)
    tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    images = ImageDataset(tensor, label_tensor, str(caption_path), digest.hexdigest()[:16], {})
    return PairDataset(images, captions)
