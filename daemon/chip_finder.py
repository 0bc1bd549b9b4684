"""The pre-pass that finds the chip before a scan: a few frames at the lowest
magnification, the chip's outline from them (`inference.chip_outline`), and a scan plan of
the tiles that meet the outline (a useq polygon grid), so nothing beside the chip is scanned.
"""

from __future__ import annotations

import logging

import useq
from pydantic import BaseModel, ConfigDict, Field

from flakescan.hardware.frame import Frame
from flakescan.hardware.microscope import Microscope
from flakescan.inference.chip_outline import ChipOutline, find_chip_outline

from .scan_plan import ScanPlan

__all__ = ["ChipFinderConfig", "find_chip", "plan_for_chip"]

log = logging.getLogger(__name__)


class ChipFinderConfig(BaseModel):
    """`[chip_finder]`: how the pre-pass looks for the chip."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = False  # every scan first finds its chip (scan --find-chip asks)
    objective: str | None = None  # default: the lowest magnification configured
    search_margin_um: float = Field(1000.0, ge=0)  # look this far beyond the scan region
    um_per_px: float = Field(10.0, gt=0)  # scale the outline is found at
    # Grow the outline by this much before tiling: the edge itself is scanned.
    outline_margin_um: float = Field(20.0, ge=0)


def _search_box(
    mic: Microscope, region_um: tuple[float, float, float, float], margin: float
) -> tuple[float, float, float, float]:
    lim = mic.limits
    x0, y0, x1, y1 = region_um
    return (
        max(x0 - margin, lim.x_min_um),
        max(y0 - margin, lim.y_min_um),
        min(x1 + margin, lim.x_max_um),
        min(y1 + margin, lim.y_max_um),
    )


def find_chip(
    mic: Microscope, cfg: ChipFinderConfig, region_um: tuple[float, float, float, float]
) -> ChipOutline:
    """Image the search area at the lowest magnification and find the chip in it. The
    objective in place before is put back, whatever happens."""
    if mic.turret is None:
        raise ValueError("finding the chip needs the objectives configured ([[objectives]])")
    before = mic.turret.current().name
    low = mic.turret.get(cfg.objective) if cfg.objective else mic.turret.lowest()
    box = _search_box(mic, region_um, cfg.search_margin_um)
    frames: list[Frame] = []
    mic.set_objective(low.name)
    try:
        w, h = mic.fov_um
        grid = useq.GridFromEdges(
            left=box[0], right=box[2], top=box[3], bottom=box[1], fov_width=w, fov_height=h
        )
        lim, ox, oy = mic.limits, low.offset_x_um, low.offset_y_um
        for p in grid:
            # The last row and column of a grid overhang the box: pull those frames in so
            # that the stage stays inside its limits (a wide field still covers the box).
            x = min(max(float(p.x), lim.x_min_um + ox), lim.x_max_um + ox)
            y = min(max(float(p.y), lim.y_min_um + oy), lim.y_max_um + oy)
            mic.look_at(x, y)
            frames.append(mic.snap(index=len(frames)))
    finally:
        mic.set_objective(before)
    outline = find_chip_outline(frames, um_per_px=cfg.um_per_px)
    log.info(
        "chip found with %s: %.2f mm2 in %d frames, bbox %s",
        low.name,
        outline.area_mm2,
        len(frames),
        [round(v) for v in outline.bbox_um],
    )
    return outline


def plan_for_chip(
    outline: ChipOutline,
    fov_um: tuple[float, float],
    overlap_pct: float,
    z_um: float | None,
    cfg: ChipFinderConfig,
) -> ScanPlan:
    """Tiles that meet the chip's outline, grown by the margin."""
    grown = outline.polygon().buffer(cfg.outline_margin_um, join_style="mitre")
    vertices = tuple((float(x), float(y)) for x, y in list(grown.exterior.coords)[:-1])
    x0, y0, x1, y1 = grown.bounds
    return ScanPlan((x0, y0, x1, y1), fov_um, overlap_pct, z_um, polygon_um=vertices)
