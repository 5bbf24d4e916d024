"""Figures drawn with PIL (no matplotlib): overlaid histograms and labelled image grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from glowlab.images import image_grid

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))
SIZE = (640, 400)
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 48, 52  # plot margins in pixels
_FONT = ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, anchor: str) -> None:
    """Draw ``text`` with ``anchor`` = horizontal (l, m, r) + vertical (t, m, b) placement."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_FONT)
    width, height = right - left, bottom - top
    x = xy[0] - {"l": 0, "m": width / 2, "r": width}[anchor[0]] - left
    y = xy[1] - {"t": 0, "m": height / 2, "b": height}[anchor[1]] - top
    draw.text((x, y), text, fill="black", font=_FONT)


def histogram(
    groups: dict[str, Tensor],
    xlabel: str,
    title: str = "",
    bins: int = 40,
    marker: tuple[str, float] | None = None,
) -> Image.Image:
    """Overlaid translucent histograms of ``groups`` (name -> values ``(N,)``) on shared bins,
    with axes, ticks, a legend and an optional labelled vertical line ``marker``."""
    if bins < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    values = {name: v.detach().double().flatten().cpu() for name, v in groups.items()}
    if not values or any(v.numel() == 0 for v in values.values()):
        raise ValueError("histogram needs at least one non-empty group of values")
    every = torch.cat([*values.values(), *([torch.tensor([marker[1]])] if marker else [])])
    low, high = every.min().item(), every.max().item()
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    counts = {name: torch.histc(v, bins, low, high) for name, v in values.items()}
    peak = max(c.max().item() for c in counts.values())
    x0, y0, x1, y1 = LEFT, TOP, SIZE[0] - RIGHT, SIZE[1] - BOTTOM

    def px(value: float) -> float:
        return x0 + (value - low) / (high - low) * (x1 - x0)

    def py(count: float) -> float:
        return y1 - count / peak * (y1 - y0)

    width = (high - low) / bins
    image = Image.new("RGBA", SIZE, "white")
    for i, count in enumerate(counts.values()):
        layer = Image.new("RGBA", SIZE, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        color = COLORS[i % len(COLORS)]
        for b, c in enumerate(count.tolist()):
            if c > 0:
                box = [px(low + b * width), py(c), px(low + (b + 1) * width), y1]
                draw.rectangle(box, fill=(*color, 110), outline=(*color, 255))
        image = Image.alpha_composite(image, layer)
    draw = ImageDraw.Draw(image)
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    for value in torch.linspace(low, high, 5).tolist():
        draw.line([(px(value), y1), (px(value), y1 + 4)], fill="black")
        _text(draw, (px(value), y1 + 7), f"{value:.4g}", "mt")
    for count in (0, peak / 2, peak):
        draw.line([(x0 - 4, py(count)), (x0, py(count))], fill="black")
        _text(draw, (x0 - 7, py(count)), f"{count:g}", "rm")
    _text(draw, ((x0 + x1) / 2, SIZE[1] - 8), xlabel, "mb")
    _text(draw, (x0, y0 - 8), "images", "mb")
    _text(draw, ((x0 + x1) / 2, 8), title, "mt")
    if marker:
        x = px(marker[1])
        for y in range(int(y0), int(y1), 8):
            draw.line([(x, y), (x, min(y + 4, y1))], fill="black")
        _text(draw, (x + 4, y0), f"{marker[0]} {marker[1]:.4g}", "lt")
    legend = [f"{name} (n={len(v)})" for name, v in values.items()]
    lx = x1 - 20 - max(draw.textbbox((0, 0), s, font=_FONT)[2] for s in legend)
    for i, label in enumerate(legend):
        y = y0 + 4 + 16 * i
        draw.rectangle([lx, y, lx + 10, y + 10], fill=COLORS[i % len(COLORS)])
        _text(draw, (lx + 16, y + 5), label, "lm")
    return image.convert("RGB")


def labelled_grid(
    rows: Tensor,
    n_bits: int,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    min_cell: int = 32,
) -> Image.Image:
    """Integer images ``(R, K, C, H, W)`` -> a picture with ``rows[r]`` as row ``r``, labels
    left of the rows and above the columns. Small images are enlarged (nearest neighbour) to at
    least ``min_cell`` pixels."""
    _, n_cols, _, height, width = rows.shape
    scale = max(1, math.ceil(min_cell / min(height, width)))
    grid = to_pil_image(image_grid(rows.flatten(0, 1).cpu(), n_bits, nrow=n_cols))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    probe = ImageDraw.Draw(grid)
    text_w = max((probe.textbbox((0, 0), s, font=_FONT)[2] for s in row_labels), default=0)
    left = text_w + 10 if row_labels else 0
    top = 20 if col_labels else 0
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    step_y, step_x = (height + 2) * scale, (width + 2) * scale
    for r, label in enumerate(row_labels):
        _text(draw, (left - 5, top + 2 * scale + r * step_y + height * scale / 2), label, "rm")
    for k, label in enumerate(col_labels):
        _text(draw, (left + 2 * scale + k * step_x + width * scale / 2, top - 4), label, "mb")
    return canvas


PALETTE = (*COLORS, (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))
"""Line colors: ``COLORS`` then more of matplotlib's tab10, so 8 series stay apart."""


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Image.Image:
    """A line with point markers per series (name -> ``(xs, ys)``, same lengths) on shared
    linear axes with ticks and a legend. Raises ``ValueError`` when no series has a point."""
    points = {name: list(zip(xs, ys, strict=True)) for name, (xs, ys) in series.items()}
    points = {name: sorted(p) for name, p in points.items() if p}
    if not points:
        raise ValueError("line_plot needs at least one series with a point")
    every = [p for ps in points.values() for p in ps]
    (x_low, x_high), (y_low, y_high) = (_span([p[i] for p in every]) for i in (0, 1))
    x0, y0, x1, y1 = LEFT, TOP, SIZE[0] - RIGHT, SIZE[1] - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            x0 + (x - x_low) / (x_high - x_low) * (x1 - x0),
            y1 - (y - y_low) / (y_high - y_low) * (y1 - y0),
        )

    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    for x in torch.linspace(x_low, x_high, 5).tolist():
        draw.line([(at(x, y_low)[0], y1), (at(x, y_low)[0], y1 + 4)], fill="black")
        _text(draw, (at(x, y_low)[0], y1 + 7), f"{x:.4g}", "mt")
    for y in torch.linspace(y_low, y_high, 5).tolist():
        draw.line([(x0 - 4, at(x_low, y)[1]), (x0, at(x_low, y)[1])], fill="black")
        _text(draw, (x0 - 7, at(x_low, y)[1]), f"{y:.4g}", "rm")
    _text(draw, ((x0 + x1) / 2, SIZE[1] - 8), xlabel, "mb")
    _text(draw, (x0, y0 - 8), ylabel, "mb")
    _text(draw, ((x0 + x1) / 2, 8), title, "mt")
    for i, ps in enumerate(points.values()):
        color = PALETTE[i % len(PALETTE)]
        xy = [at(x, y) for x, y in ps]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    lx = x1 - 20 - max(draw.textbbox((0, 0), s, font=_FONT)[2] for s in points)
    for i, name in enumerate(points):
        y = y0 + 4 + 16 * i
        draw.rectangle([lx, y, lx + 10, y + 10], fill=PALETTE[i % len(PALETTE)])
        _text(draw, (lx + 16, y + 5), name, "lm")
    return image


def _span(values: list[float]) -> tuple[float, float]:
    """``(low, high)`` of ``values`` with 5 % room on each side (a unit around one value)."""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def side_by_side(panels: dict[str, Image.Image], scale: int = 2, gap: int = 16) -> Image.Image:
    """The pictures of ``panels`` (label -> image) in one row, each enlarged ``scale`` times
    (nearest neighbour), top-aligned, ``gap`` pixels apart, with its label centred above it.
    Raises ``ValueError`` for no panel."""
    if not panels:
        raise ValueError("side_by_side needs at least one picture")
    scaled = {
        label: image.convert("RGB").resize(
            (image.width * scale, image.height * scale), Image.Resampling.NEAREST
        )
        for label, image in panels.items()
    }
    top = 20
    width = sum(image.width for image in scaled.values()) + gap * (len(scaled) + 1)
    height = top + max(image.height for image in scaled.values()) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for label, image in scaled.items():
        canvas.paste(image, (x, top))
        _text(draw, (x + image.width / 2, top - 4), label, "mb")
        x += image.width + gap
    return canvas
