"""Where an unfinished scan stands, read back from the catalogue, so it can go on.

A scan's row keeps its request and its plan (`settings.request`, `settings.plan`); its
tiles are committed one transaction each, in acquisition order. After a kill, a power cut
or a device fault, the catalogue therefore says exactly which tiles are done, and holds
what the processing carried from tile to tile: the chip's wafer colour (replayed from the
finished tiles' backgrounds) and the flakes already logged (a flake cut by a frame edge is
merged with its next sighting, which may come from a tile still to do). A resumed scan
starts from that and scans only the tiles not done; because each tile's write is also
idempotent, nothing is ever logged twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine

from flakescan.db.queries import FlakeQuery, find_flakes, scan_summary, scan_tiles
from flakescan.inference.pipeline import AXIS_FIELDS, Hit
from flakescan.inference.shape import ShapeMetrics

from .scan_plan import ScanPlan
from .sightings import SightingIndex

__all__ = ["RESUMABLE", "ResumePoint", "hit_from_row", "load_resume_point", "request_settings"]

# A scan that did not finish: the daemon died (interrupted), it was stopped, or a fault
# failed it (resumed once the fault is cleared).
RESUMABLE = ("interrupted", "stopped", "failed")
_SHAPE_FIELDS = tuple(ShapeMetrics.__dataclass_fields__)
_NO_THUMBNAIL = np.zeros((0, 0, 3), np.uint8)


def request_settings(request: Any) -> dict:
    """A ScanRequest as its row keeps it (JSON)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(request).items()}


def hit_from_row(row: dict) -> Hit:
    """A logged flake as the scan's sighting index holds it: the measurements its row
    keeps, exactly (the pixel centroid and the thumbnail image are not kept; a merge never
    needs them)."""
    shape = None
    if all(row.get(k) is not None for k in _SHAPE_FIELDS):
        shape = ShapeMetrics(**{k: row[k] for k in _SHAPE_FIELDS})
    outline = json.loads(row["outline_json"]) if row.get("outline_json") else []
    return Hit(
        x_um=row["x_um"],
        y_um=row["y_um"],
        bbox_um=(row["bbox_x0_um"], row["bbox_y0_um"], row["bbox_x1_um"], row["bbox_y1_um"]),
        area_um2=row["area_um2"],
        flake_class=row["flake_class"],
        scores=(row["score_class1"], row["score_class2"], row["score_class3"], row["score_any"]),
        contrast=(row["contrast_r"], row["contrast_g"], row["contrast_b"]),
        contrast_class=row["contrast_class"],
        touches_border=bool(row["touches_border"]),
        centroid_px=(float("nan"), float("nan")),
        thumbnail=_NO_THUMBNAIL,
        outline_um=tuple((float(x), float(y)) for x, y in outline),
        shape=shape,
        **{name: row[name] for name in AXIS_FIELDS},
    )


@dataclass
class ResumePoint:
    """What a resumed scan starts from."""

    scan_id: int
    status: str  # what the scan was before the resume
    request: dict  # the ScanRequest's fields
    plan: ScanPlan
    done: frozenset[int]  # tile indices already in the catalogue
    flakes: int
    per_class: Counter
    sightings: SightingIndex
    backgrounds: list[tuple[tuple[float, float, float], float]]  # in processing order
    focus_surface: dict | None  # the surface the scan followed, if it autofocused

    @property
    def tiles_left(self) -> int:
        return self.plan.n_tiles - len(self.done)


def load_resume_point(engine: Engine, scan_id: int) -> ResumePoint:
    """Read where scan `scan_id` stands. KeyError: no such scan; ValueError (naming the
    status or what is missing) for a scan that cannot be resumed."""
    scan = scan_summary(engine, scan_id)
    if scan is None:
        raise KeyError(f"no scan {scan_id}")
    if scan["status"] not in RESUMABLE:
        raise ValueError(
            f"scan {scan_id} is {scan['status']}; only a scan that is "
            f"{' or '.join(RESUMABLE)} can be resumed"
        )
    settings = json.loads(scan["settings_json"] or "{}")
    if "request" not in settings or "plan" not in settings:
        raise ValueError(
            f"scan {scan_id} was made by an older flakescan that did not keep its request "
            "and plan: it cannot be resumed; scan again"
        )
    plan = ScanPlan.from_settings(settings["plan"])
    if plan.n_tiles != scan["tiles_planned"]:
        raise ValueError(
            f"scan {scan_id}: its plan lays {plan.n_tiles} tiles now but {scan['tiles_planned']} "
            "then (another useq-schema?): refusing to resume on different tiles"
        )
    tiles = scan_tiles(engine, scan_id)
    tile_index = {t["id"]: t["tile_index"] for t in tiles}
    sightings = SightingIndex()
    per_class: Counter = Counter()
    # In the order they were logged: the order a live scan's index holds them in.
    rows = sorted(find_flakes(engine, FlakeQuery(scan_id=scan_id)), key=lambda r: r["id"])
    for row in rows:
        sightings.add(row["id"], tile_index[row["tile_id"]], hit_from_row(row))
        per_class[row["flake_class"]] += 1
    backgrounds = [
        ((t["background_r"], t["background_g"], t["background_b"]), t["background_fraction"])
        for t in tiles
        if t["background_fraction"] is not None
    ]
    return ResumePoint(
        scan_id=scan_id,
        status=scan["status"],
        request=settings["request"],
        plan=plan,
        done=frozenset(tile_index.values()),
        flakes=len(rows),
        per_class=per_class,
        sightings=sightings,
        backgrounds=backgrounds,
        focus_surface=settings.get("focus_surface"),
    )
