"""Drawing hits on an image for people: outline, number, class colour, crystal axis.

One drawing for every picture flakescan makes (the scan's overview map, the picture of an
uploaded image), fed plain marks so that pipeline hits and catalogue rows draw alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from PIL import ImageDraw

__all__ = ["CLASS_COLOURS", "HitMark", "draw_hits", "draw_legend", "draw_scale_bar"]

# Class 1 (thinnest) to 3: colour-blind-safe hues that stand out on violet SiO2.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (0, 200, 255),
    2: (255, 200, 0),
    3: (255, 80, 80),
}
_OTHER = (255, 255, 255)


@dataclass(frozen=True)
class HitMark:
    """What a picture shows of one hit, in stage micrometres."""

    label: str  # the flake id (overview) or its number in the picture
    flake_class: int
    outline_um: Sequence[tuple[float, float]]  # empty: the box is drawn instead
    bbox_um: tuple[float, float, float, float]
    centre_um: tuple[float, float]
    axis_angle_deg: float | None


def _axis_ticks(
    centre: tuple[float, float], angle_deg: float, half_len: float
) -> list[tuple[float, float]]:
    a = math.radians(angle_deg)
    dx, dy = half_len * math.cos(a), half_len * math.sin(a)
    return [(centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)]


def draw_hits(
    draw: ImageDraw.ImageDraw,
    marks: Iterable[HitMark],
    to_px: Callable[[float, float], tuple[float, float]],
    line_width: int = 1,
) -> None:
    """Outline each hit in its class colour, number it, and draw its crystal axis.

    The axis is a line through the centre along the measured edge direction (image angle:
    from +x towards +y); with a modulus of 30 deg the zigzag and armchair edges lie along it
    and every 30 deg from it.
    """
    for m in marks:
        colour = CLASS_COLOURS.get(m.flake_class, _OTHER)
        if len(m.outline_um) >= 3:
            pts = [to_px(x, y) for x, y in m.outline_um]
            draw.polygon(pts, outline=colour, width=line_width)
        else:
            x0, y0 = to_px(m.bbox_um[0], m.bbox_um[1])
            x1, y1 = to_px(m.bbox_um[2], m.bbox_um[3])
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=colour)
        cx, cy = to_px(*m.centre_um)
        bx0, by0 = to_px(m.bbox_um[0], m.bbox_um[1])
        bx1, by1 = to_px(m.bbox_um[2], m.bbox_um[3])
        if m.axis_angle_deg is not None:
            half = max(6.0, 0.6 * max(abs(bx1 - bx0), abs(by1 - by0)))
            draw.line(_axis_ticks((cx, cy), m.axis_angle_deg, half), fill=colour, width=1)
        draw.text((max(bx0, bx1) + 2, min(by0, by1) - 2), m.label, fill=colour)


def draw_legend(draw: ImageDraw.ImageDraw, origin: tuple[int, int], counts: dict[int, int]) -> None:
    """Class colours with their counts, top left."""
    x, y = origin
    for cls in sorted(CLASS_COLOURS):
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=CLASS_COLOURS[cls])
        draw.text((x + 14, y), f"class {cls}: {counts.get(cls, 0)}", fill=(255, 255, 255))
        y += 14
    draw.text((x, y), "line: crystal axis (mod 30 deg)", fill=(255, 255, 255))


def draw_scale_bar(
    draw: ImageDraw.ImageDraw, image_size: tuple[int, int], um_per_px: float
) -> None:
    """A bar of a round length, bottom right, at about a fifth of the width."""
    w, h = image_size
    target = w * um_per_px / 5
    length = max(10 ** math.floor(math.log10(max(target, 1e-9))), 1e-9)
    for f in (5, 2, 1):
        if f * length <= target:
            length *= f
            break
    px = length / um_per_px
    x1, y = w - 10, h - 12
    draw.rectangle([x1 - px, y, x1, y + 4], fill=(255, 255, 255))
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} um"
    draw.text((x1 - px, y - 12), label, fill=(255, 255, 255))
