"""SimCLR training throughput: on-device batched augmentation against two baselines.

For each image size and encoder width, three ways to run the same SimCLR step
(batch B, reference encoder: ResNet-18, small-image stem, base width W) are timed
side by side in one process:

- ``ours``: uint8 batch -> batched augmentations on the device -> forward and backward.
- ``bare``: the same forward and backward on two views made in advance; the compute
  limit for that model and batch on this machine.
- ``per_image``: a per-image PIL pipeline in a DataLoader with 2 workers (crop, flip,
  colour jitter per image, then collate), the way most SSL libraries feed a model.

``ours`` and ``bare`` take turns step by step and each reports the median step, so a
load change during the run cannot favour the one that ran first. ``per_image`` runs
after them, because its DataLoader workers would compete with the other two for the cores.

    python -m bench.bench_training            # full: batch 256, widths 16 and 32, 32 and 96 px, 5 steps
    python -m bench.bench_training --quick    # under a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

from bench.common import write_result
from training.config import TrainConfig
from training.data import load_image_dataset
from training.methods.simclr import SimCLR

logger = logging.getLogger("bench.training")


class PerImageViews(Dataset):
    """Two independently augmented views per PIL image, each made with PIL calls."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        self.images = [Image.fromarray(image) for image in images]
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def _view(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        area = random.uniform(0.4, 1.0) * width * height
        ratio = np.exp(random.uniform(np.log(0.8), np.log(1.25)))
        crop_w = min(width, int(round((area * ratio) ** 0.5)))
        crop_h = min(height, int(round((area / ratio) ** 0.5)))
        left = random.randint(0, width - crop_w)
        top = random.randint(0, height - crop_h)
        view = image.crop((left, top, left + crop_w, top + crop_h)).resize((self.size, self.size), Image.BILINEAR)
        if random.random() < 0.8:
            view = ImageEnhance.Brightness(view).enhance(random.uniform(0.5, 1.5))
            view = ImageEnhance.Contrast(view).enhance(random.uniform(0.5, 1.5))
        return torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0).unsqueeze(0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return self._view(image), self._view(image)


def make_method(width: int, size: int, batch: int) -> SimCLR:
    config = TrainConfig(method="simclr", data="bench", out="bench", batch_size=batch, encoder_width=width, augment="glyphs")
    return SimCLR(config, channels=1, image_size=size, mean=[0.2], std=[0.3])


def alternate_steps(pipelines: dict[str, Callable[[], None]], steps: int, batch: int) -> dict[str, float]:
    """Return image pairs per second of each pipeline from the median of ``steps`` timed steps.

    The pipelines take turns step by step after one warm-up step each, so a change in the
    machine's load during the run reaches all of them alike.
    """
    for function in pipelines.values():
        function()
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(steps):
        for name, function in pipelines.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(times) for name, times in seconds.items()}


def measure(width: int, size: int, batch: int, steps: int, images: torch.Tensor) -> dict[str, float]:
    """Return image pairs per second for ours, bare and per_image at one setting."""
    torch.manual_seed(0)
    method = make_method(width, size, batch)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).round().to(torch.uint8)

    def step(views: list[torch.Tensor]) -> None:
        projections = method.projection(method.encoder(torch.cat(views)))
        view_a, view_b = projections.chunk(2)
        from training.losses import nt_xent

        loss = nt_xent(view_a, view_b, 0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def ours() -> None:
        index = torch.randint(0, len(images), (batch,), generator=generator)
        step_images = images[index].float() / 255.0
        method.training_step(step_images, generator)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    premade = [method.normalize(method.augmentation(images[:batch].float() / 255.0, generator)) for _ in range(2)]

    def bare() -> None:
        step(premade)

    method.train()
    results = alternate_steps({"ours": ours, "bare": bare}, steps, batch)

    loader = DataLoader(
        PerImageViews(images[:, 0].numpy(), size), batch_size=batch, shuffle=True, num_workers=2,
        drop_last=True, persistent_workers=True,
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        try:
            view_a, view_b = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            view_a, view_b = next(iterator)
        step([method.normalize(view_a), method.normalize(view_b)])
    results["per_image"] = steps * batch / (time.perf_counter() - start)
    del iterator, loader
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batch and width, 32 px only")
    parser.add_argument("--data", default="../shared/data/glyphs/glyphs-train.npz", help="images to train on (falls back to digits)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and pipeline in the full mode")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96], help="image sizes in pixels in the full mode")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32], help="ResNet-18 base widths in the full mode")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        dataset = load_image_dataset(args.data)
    except (ValueError, FileNotFoundError):
        dataset = load_image_dataset("digits", image_size=32)
    images = dataset.images[:4096]

    if args.quick:
        settings = [(8, 32, 32, 3)]
    else:
        settings = [(width, size, 256, args.steps) for size in args.sizes for width in args.widths]
    rows = []
    for width, size, batch, steps in settings:
        result = measure(width, size, batch, steps, images)
        row = {"width": width, "size": size, "batch": batch, "steps": steps, **{k: round(v, 1) for k, v in result.items()}}
        row["ours_vs_bare"] = round(result["ours"] / result["bare"], 3)
        row["ours_vs_per_image"] = round(result["ours"] / result["per_image"], 3)
        logger.info("%s", row)
        rows.append(row)
    command = " ".join(["python -m bench.bench_training", *sys.argv[1:]])
    path = write_result("training-quick" if args.quick else "training", {"command": command, "unit": "image pairs/s", "rows": rows})
    print(json.dumps({"rows": rows, "record": str(path)}, indent=2))


if __name__ == "__main__":
    main()
