"""A PNG of the training curves (loss and kNN accuracy per epoch), drawn with Pillow.

Two small line charts side by side keep the dependency list free of matplotlib; the
file is written beside the checkpoints after every epoch, atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PANEL_SIZE = (420, 300)  # pixels per chart
MARGIN = {"left": 62, "right": 16, "top": 34, "bottom": 40}
BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
LINE_COLORS = {"loss": (31, 119, 180), "knn_top1": (214, 39, 40)}


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw loss and kNN top-1 accuracy against epoch from ``history`` records into a PNG.

    Each record is one epoch's metrics line (``epoch``, ``loss`` and, with a labelled
    hold-out, ``knn_top1``). A metric without any finite value gets an empty panel
    labelled "no values".
    """
    font = ImageFont.load_default(size=13)
    panels = [("loss", "training loss"), ("knn_top1", "kNN top-1 (hold-out)")]
    image = Image.new("RGB", (PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for index, (key, title) in enumerate(panels):
        points = _points(history, key)
        origin = (index * PANEL_SIZE[0], 0)
        _draw_panel(draw, origin, title, points, LINE_COLORS[key], font)
    return _save_png(image, Path(path))


def _points(history: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    points = []
    for record in history:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            points.append((float(record["epoch"]), float(value)))
    return points


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    title: str,
    points: list[tuple[float, float]],
    color: tuple[int, int, int],
    font: ImageFont.FreeTypeFont,
) -> None:
    left = origin[0] + MARGIN["left"]
    right = origin[0] + PANEL_SIZE[0] - MARGIN["right"]
    top = origin[1] + MARGIN["top"]
    bottom = origin[1] + PANEL_SIZE[1] - MARGIN["bottom"]
    draw.text(((left + right) / 2, origin[1] + 10), title, fill=AXIS, font=font, anchor="mt")
    draw.rectangle((left, top, right, bottom), outline=AXIS)
    draw.text(((left + right) / 2, bottom + 24), "epoch", fill=AXIS, font=font, anchor="mt")
    if not points:
        draw.text(((left + right) / 2, (top + bottom) / 2), "no values", fill=AXIS, font=font, anchor="mm")
        return

    x_low, x_high = _padded_range([x for x, _ in points])
    y_low, y_high = _padded_range([y for _, y in points])

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    # horizontal grid lines with value labels, then epoch labels on the x axis
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_low + fraction * (y_high - y_low)
        _, pixel_y = to_pixel(x_low, y)
        if 0.0 < fraction < 1.0:
            draw.line((left + 1, pixel_y, right - 1, pixel_y), fill=GRID)
        draw.text((left - 6, pixel_y), f"{y:.3g}", fill=AXIS, font=font, anchor="rm")
    for epoch in _epoch_ticks(x_low, x_high):
        pixel_x, _ = to_pixel(epoch, y_low)
        draw.line((pixel_x, bottom, pixel_x, bottom + 4), fill=AXIS)
        draw.text((pixel_x, bottom + 6), str(epoch), fill=AXIS, font=font, anchor="mt")

    pixels = [to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=color, width=2, joint="curve")
    for pixel_x, pixel_y in pixels:
        draw.ellipse((pixel_x - 3, pixel_y - 3, pixel_x + 3, pixel_y + 3), fill=color)


def _padded_range(values: list[float]) -> tuple[float, float]:
    """Return (low, high) around ``values`` with 5 % padding and a non-zero width."""
    low, high = min(values), max(values)
    span = high - low
    if span == 0:
        span = abs(high) or 1.0
    return low - 0.05 * span, high + 0.05 * span


def _epoch_ticks(low: float, high: float, max_ticks: int = 8) -> list[int]:
    first, last = math.ceil(low), math.floor(high)
    step = max(1, math.ceil((last - first + 1) / max_ticks))
    return list(range(first, last + 1, step))


def _save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            image.save(handle, format="PNG")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
