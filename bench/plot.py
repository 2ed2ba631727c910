"""Draw simple line and bar charts of benchmark results as PNG files with Pillow.

matplotlib is not a dependency, so this module draws axes, ticks, labels, legends and
series with ``PIL.ImageDraw``. A figure is one or more panels side by side. Each panel
is a line chart (``LinePanel``, linear or log axes) or a grouped bar chart
(``BarPanel``). Horizontal reference lines mark targets, such as "1 ms".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_WIDTH = 640
PANEL_HEIGHT = 460
MARGIN_LEFT = 84
MARGIN_RIGHT = 24
MARGIN_TOP = 44
MARGIN_BOTTOM = 64
FONT_SIZE = 14
TITLE_FONT_SIZE = 16
BACKGROUND = (255, 255, 255)
AXIS_COLOR = (40, 40, 40)
GRID_COLOR = (225, 225, 225)
REFERENCE_COLOR = (200, 40, 40)
# Colour-blind-safe palette (Okabe and Ito, 2008), in the order series receive it.
PALETTE = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (0, 0, 0),
)


@dataclass
class Series:
    """One named line: (x, y) points in drawing order; ``dashed`` draws it dashed."""

    label: str
    points: list[tuple[float, float]]
    dashed: bool = False


@dataclass
class Reference:
    """A horizontal line at ``value`` on the y axis, labelled, such as a target."""

    value: float
    label: str


@dataclass
class LinePanel:
    """A line chart; log axes skip points that are not positive.

    ``x_ticks`` puts the x ticks at exactly these values, such as the concurrency levels
    measured, and fits the x range to them. Without it, ticks are round numbers.
    """

    title: str
    x_label: str
    y_label: str
    series: list[Series]
    log_x: bool = False
    log_y: bool = False
    references: list[Reference] = field(default_factory=list)
    x_ticks: list[float] | None = None


@dataclass
class BarPanel:
    """A grouped bar chart: one group per category, one bar per series in each group.

    ``values[label]`` contains one value per category, and None leaves that bar out.
    """

    title: str
    y_label: str
    categories: list[str]
    values: dict[str, list[float | None]]
    log_y: bool = False
    references: list[Reference] = field(default_factory=list)


def save_figure(path: str | Path, panels: list[LinePanel | BarPanel], columns: int = 2) -> Path:
    """Draw ``panels`` in a grid of ``columns`` and save the figure as a PNG at ``path``."""
    if not panels:
        raise ValueError("save_figure needs at least one panel")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Image.new("RGB", (columns * PANEL_WIDTH, rows * PANEL_HEIGHT), BACKGROUND)
    for position, panel in enumerate(panels):
        row, column = divmod(position, columns)
        figure.paste(_draw_panel(panel), (column * PANEL_WIDTH, row * PANEL_HEIGHT))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path, "PNG")
    return path


def _draw_panel(panel: LinePanel | BarPanel) -> Image.Image:
    if isinstance(panel, LinePanel):
        return _draw_line_panel(panel)
    return _draw_bar_panel(panel)


# --- line charts -----------------------------------------------------------------------


def _draw_line_panel(panel: LinePanel) -> Image.Image:
    image, draw = _blank_panel(panel.title)
    points = [
        (x, y)
        for series in panel.series
        for x, y in series.points
        if _drawable(x, panel.log_x) and _drawable(y, panel.log_y)
    ]
    if not points:
        _draw_empty(draw)
        return image

    if panel.x_ticks:
        x_axis = _Axis.spanning(panel.x_ticks, panel.log_x, MARGIN_LEFT, PANEL_WIDTH - MARGIN_RIGHT)
    else:
        x_axis = _Axis.fit([x for x, _ in points], panel.log_x, MARGIN_LEFT, PANEL_WIDTH - MARGIN_RIGHT)
    y_values = [y for _, y in points] + [reference.value for reference in panel.references]
    y_axis = _Axis.fit(y_values, panel.log_y, PANEL_HEIGHT - MARGIN_BOTTOM, MARGIN_TOP)
    _draw_axes(image, draw, x_axis, y_axis, panel.x_label, panel.y_label)
    _draw_references(draw, y_axis, panel.references)

    for number, series in enumerate(panel.series):
        color = PALETTE[number % len(PALETTE)]
        pixels = [
            (x_axis.pixel(x), y_axis.pixel(y))
            for x, y in series.points
            if _drawable(x, panel.log_x) and _drawable(y, panel.log_y)
        ]
        for start, stop in zip(pixels, pixels[1:]):
            _line(draw, start, stop, color, dashed=series.dashed)
        for x, y in pixels:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    _draw_legend(draw, [(series.label, PALETTE[n % len(PALETTE)], series.dashed) for n, series in enumerate(panel.series)])
    return image


# --- bar charts ------------------------------------------------------------------------


def _draw_bar_panel(panel: BarPanel) -> Image.Image:
    for label, values in panel.values.items():
        if len(values) != len(panel.categories):
            raise ValueError(f"series {label!r} has {len(values)} values for {len(panel.categories)} categories")
    image, draw = _blank_panel(panel.title)
    values = [v for row in panel.values.values() for v in row if v is not None and _drawable(v, panel.log_y)]
    if not values or not panel.categories:
        _draw_empty(draw)
        return image

    baseline_values = values if panel.log_y else values + [0.0]
    if len(panel.values) > 1:  # headroom above the tallest bar for the legend
        baseline_values.append(max(values) * (4.0 if panel.log_y else 1.3))
    y_axis = _Axis.fit(baseline_values + [r.value for r in panel.references], panel.log_y, PANEL_HEIGHT - MARGIN_BOTTOM, MARGIN_TOP)
    left, right = MARGIN_LEFT, PANEL_WIDTH - MARGIN_RIGHT
    group_width = (right - left) / len(panel.categories)
    _draw_y_axis(image, draw, y_axis, panel.y_label)
    draw.line((left, y_axis.start, right, y_axis.start), fill=AXIS_COLOR)
    _draw_references(draw, y_axis, panel.references)

    font = _font(FONT_SIZE)
    labels = list(panel.values)
    bar_width = group_width * 0.8 / max(1, len(labels))
    bottom = y_axis.pixel(y_axis.low) if panel.log_y else y_axis.pixel(0.0)
    for index, category in enumerate(panel.categories):
        group_left = left + index * group_width + group_width * 0.1
        for number, label in enumerate(labels):
            value = panel.values[label][index]
            if value is None or not _drawable(value, panel.log_y):
                continue
            x0 = group_left + number * bar_width
            top = y_axis.pixel(value)
            draw.rectangle((x0, min(top, bottom), x0 + bar_width - 2, max(top, bottom)), fill=PALETTE[number % len(PALETTE)])
        center = left + (index + 0.5) * group_width
        _centered_text(draw, (center, y_axis.start + 8), _shorten(category, group_width, font), font)
    if len(labels) > 1:
        _draw_legend(draw, [(label, PALETTE[n % len(PALETTE)], False) for n, label in enumerate(labels)], boxes=True)
    return image


# --- axes --------------------------------------------------------------------------------


@dataclass
class _Axis:
    """A mapping from data values to pixels between ``start`` and ``stop`` (pixels)."""

    low: float
    high: float
    log: bool
    start: float
    stop: float
    fixed_ticks: list[float] | None = None

    @classmethod
    def fit(cls, values: list[float], log: bool, start: float, stop: float) -> _Axis:
        """Return an axis whose range covers ``values`` with round ends."""
        low, high = min(values), max(values)
        if log:
            low, high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
            if low == high:
                low, high = low / 10, high * 10
            return cls(low, high, True, start, stop)
        if low == high:
            low, high = (low - 1, high + 1) if low == 0 else (low - abs(low) * 0.5, high + abs(high) * 0.5)
        step = _nice_step((high - low) / 5)
        return cls(math.floor(low / step) * step, math.ceil(high / step) * step, False, start, stop)

    @classmethod
    def spanning(cls, ticks: list[float], log: bool, start: float, stop: float) -> _Axis:
        """Return an axis with exactly ``ticks``, its range a little wider than theirs."""
        values = sorted(tick for tick in ticks if _drawable(tick, log))
        if not values:
            raise ValueError(f"no tick of {ticks} can be drawn on a {'log' if log else 'linear'} axis")
        low, high = values[0], values[-1]
        if log:
            low, high = low / 1.25, high * 1.25
        else:
            pad = (high - low) * 0.05 or 1.0
            low, high = low - pad, high + pad
        return cls(low, high, log, start, stop, fixed_ticks=values)

    def pixel(self, value: float) -> float:
        if self.log:
            share = (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        else:
            share = (value - self.low) / (self.high - self.low)
        return self.start + share * (self.stop - self.start)

    def ticks(self) -> list[float]:
        """Return tick values: powers of ten on a log axis (with 2 and 5 over few decades), else 1-2-5 steps."""
        if self.fixed_ticks is not None:
            return self.fixed_ticks
        if self.log:
            decades = range(round(math.log10(self.low)), round(math.log10(self.high)) + 1)
            mantissas = (1, 2, 5) if len(decades) <= 3 else (1,)
            return [m * 10**d for d in decades for m in mantissas if self.low <= m * 10**d <= self.high]
        step = _nice_step((self.high - self.low) / 5)
        count = round((self.high - self.low) / step)
        return [self.low + i * step for i in range(count + 1)]


def _nice_step(raw: float) -> float:
    """Return the 1, 2 or 5 times a power of ten nearest above ``raw``."""
    magnitude = 10 ** math.floor(math.log10(raw))
    for mantissa in (1, 2, 5, 10):
        if raw <= mantissa * magnitude:
            return mantissa * magnitude
    return 10 * magnitude


def _draw_axes(image: Image.Image, draw: ImageDraw.ImageDraw, x_axis: _Axis, y_axis: _Axis, x_label: str, y_label: str) -> None:
    font = _font(FONT_SIZE)
    bottom = y_axis.start
    for tick in x_axis.ticks():
        x = x_axis.pixel(tick)
        draw.line((x, MARGIN_TOP, x, bottom), fill=GRID_COLOR)
        draw.line((x, bottom, x, bottom + 5), fill=AXIS_COLOR)
        _centered_text(draw, (x, bottom + 8), format_number(tick), font)
    draw.line((x_axis.start, bottom, x_axis.stop, bottom), fill=AXIS_COLOR)
    _centered_text(draw, ((x_axis.start + x_axis.stop) / 2, PANEL_HEIGHT - 26), x_label, font)
    _draw_y_axis(image, draw, y_axis, y_label)


def _draw_y_axis(image: Image.Image, draw: ImageDraw.ImageDraw, y_axis: _Axis, y_label: str) -> None:
    font = _font(FONT_SIZE)
    for tick in y_axis.ticks():
        y = y_axis.pixel(tick)
        draw.line((MARGIN_LEFT, y, PANEL_WIDTH - MARGIN_RIGHT, y), fill=GRID_COLOR)
        draw.line((MARGIN_LEFT - 5, y, MARGIN_LEFT, y), fill=AXIS_COLOR)
        text = format_number(tick)
        width = draw.textlength(text, font=font)
        draw.text((MARGIN_LEFT - 8 - width, y - FONT_SIZE / 2 - 1), text, fill=AXIS_COLOR, font=font)
    draw.line((MARGIN_LEFT, y_axis.start, MARGIN_LEFT, y_axis.stop), fill=AXIS_COLOR)

    # the y label is drawn on its own strip, then turned upright beside the axis
    width = int(draw.textlength(y_label, font=font)) + 4
    strip = Image.new("RGB", (width, FONT_SIZE + 6), BACKGROUND)
    ImageDraw.Draw(strip).text((2, 1), y_label, fill=AXIS_COLOR, font=font)
    upright = strip.rotate(90, expand=True)
    middle = (y_axis.start + y_axis.stop) / 2
    image.paste(upright, (6, int(middle - upright.height / 2)))


def _draw_references(draw: ImageDraw.ImageDraw, y_axis: _Axis, references: list[Reference]) -> None:
    font = _font(FONT_SIZE - 2)
    for number, reference in enumerate(references):
        if not _drawable(reference.value, y_axis.log):
            continue
        y = y_axis.pixel(reference.value)
        _line(draw, (MARGIN_LEFT, y), (PANEL_WIDTH - MARGIN_RIGHT, y), REFERENCE_COLOR, dashed=True)
        width = draw.textlength(reference.label, font=font)
        # labels alternate above and below their lines, so that two close lines stay readable
        label_y = y - FONT_SIZE - 2 if number % 2 == 0 else y + 3
        draw.text((PANEL_WIDTH - MARGIN_RIGHT - width - 4, label_y), reference.label, fill=REFERENCE_COLOR, font=font)


def _draw_legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, tuple[int, int, int], bool]], boxes: bool = False) -> None:
    """Draw (label, colour, dashed) entries top left, each marked by a line sample, or a filled box for bars."""
    font = _font(FONT_SIZE - 1)
    x, y = MARGIN_LEFT + 10, MARGIN_TOP + 6
    widest = max((draw.textlength(label, font=font) for label, _, _ in entries), default=0)
    draw.rectangle((x - 4, y - 4, x + 34 + widest, y + len(entries) * (FONT_SIZE + 4)), fill=BACKGROUND, outline=GRID_COLOR)
    for label, color, dashed in entries:
        middle = y + FONT_SIZE / 2
        if boxes:
            draw.rectangle((x + 6, middle - 6, x + 18, middle + 6), fill=color)
        else:
            _line(draw, (x, middle), (x + 24, middle), color, dashed=dashed)
        draw.text((x + 30, y - 1), label, fill=AXIS_COLOR, font=font)
        y += FONT_SIZE + 4


# --- drawing primitives ----------------------------------------------------------------


def _blank_panel(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (PANEL_WIDTH, PANEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _centered_text(draw, (PANEL_WIDTH / 2, 12), title, _font(TITLE_FONT_SIZE))
    return image, draw


def _draw_empty(draw: ImageDraw.ImageDraw) -> None:
    _centered_text(draw, (PANEL_WIDTH / 2, PANEL_HEIGHT / 2), "no data to plot", _font(FONT_SIZE))


def _line(draw: ImageDraw.ImageDraw, start: tuple[float, float], stop: tuple[float, float], color: tuple[int, int, int], dashed: bool) -> None:
    if not dashed:
        draw.line((*start, *stop), fill=color, width=2)
        return
    length = math.dist(start, stop)
    dash, gap = 8.0, 5.0
    position = 0.0
    while position < length:
        end = min(position + dash, length)
        a = _along(start, stop, position / length)
        b = _along(start, stop, end / length)
        draw.line((*a, *b), fill=color, width=2)
        position = end + gap


def _along(start: tuple[float, float], stop: tuple[float, float], share: float) -> tuple[float, float]:
    return start[0] + (stop[0] - start[0]) * share, start[1] + (stop[1] - start[1]) * share


def _centered_text(draw: ImageDraw.ImageDraw, anchor: tuple[float, float], text: str, font: ImageFont.ImageFont) -> None:
    width = draw.textlength(text, font=font)
    draw.text((anchor[0] - width / 2, anchor[1]), text, fill=AXIS_COLOR, font=font)


def _shorten(text: str, width: float, font: ImageFont.ImageFont) -> str:
    """Cut ``text`` with an ellipsis until it fits ``width`` pixels."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if probe.textlength(text, font=font) <= width:
        return text
    while text and probe.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _font(size: int) -> ImageFont.ImageFont:
    """Return Pillow's built-in font at ``size`` (scalable since Pillow 10.1, a fixed bitmap before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has no size argument
        return ImageFont.load_default()


def _drawable(value: float, log: bool) -> bool:
    return math.isfinite(value) and (value > 0 or not log)


def format_number(value: float) -> str:
    """Format a tick value briefly: 0.001, 0.25, 3, 1.5k, 20M."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:g}{suffix}"
    if magnitude >= 1:
        return f"{value:g}"
    return f"{value:.3g}"
