"""Judging a flake hunter against the simulator's ground truth.

A true flake counts as found when a hit lies within one flake radius of its centroid (at
least `min_radius_um`, the optical resolution of a low-magnification objective). Only flakes
a scan could find are counted: thin (layer range), above the minimum area, centred inside
the scanned region. Each hit is judged twice: is it on a thin (1-10-layer) flake at all, and
does it lie within one radius of that flake's centroid? A flake cut by the edge of the
scanned region is seen only in part, so its hit is on the flake but off its centroid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Point

from .chip import Chip, ChipObject

__all__ = ["MatchReport", "match_hits"]


@dataclass
class MatchReport:
    truth_total: int
    truth_found: int
    missed: list[ChipObject] = field(default_factory=list)
    position_errors_um: list[float] = field(default_factory=list)
    matches: list[tuple[int, int]] = field(default_factory=list)  # (truth id, hit index)
    hit_on_thin_flake: list[bool] = field(default_factory=list)  # per hit
    hit_at_centroid: list[bool] = field(default_factory=list)  # per hit: within one radius

    @property
    def hits_total(self) -> int:
        return len(self.hit_on_thin_flake)

    @property
    def hits_on_thin_flakes(self) -> int:
        return sum(self.hit_on_thin_flake)

    @property
    def recall(self) -> float:
        return self.truth_found / self.truth_total if self.truth_total else 1.0

    @property
    def precision(self) -> float:
        return self.hits_on_thin_flakes / self.hits_total if self.hits_total else 1.0

    def as_dict(self) -> dict:
        return {
            "truth_total": self.truth_total,
            "truth_found": self.truth_found,
            "recall": round(self.recall, 4),
            "hits_total": self.hits_total,
            "hits_on_thin_flakes": self.hits_on_thin_flakes,
            "hits_at_centroid": sum(self.hit_at_centroid),
            "precision": round(self.precision, 4),
            "median_position_error_um": round(float(np.median(self.position_errors_um)), 3)
            if self.position_errors_um
            else None,
        }


def _radius(obj: ChipObject, floor: float) -> float:
    return max(obj.radius_um, floor)


def match_hits(
    chip: Chip,
    hits_xy_um: Sequence[tuple[float, float]],
    region_um: tuple[float, float, float, float],
    *,
    min_area_um2: float,
    layers: tuple[int, int] = (1, 5),
    min_radius_um: float = 3.0,
) -> MatchReport:
    """Recall over the findable flakes, and how right each hit is, against ground truth."""
    x0, y0, x1, y1 = region_um
    hits = np.asarray(hits_xy_um, float).reshape(-1, 2)

    def inside(o: ChipObject) -> bool:
        cx, cy = o.centroid_um
        return x0 <= cx <= x1 and y0 <= cy <= y1

    truth = [o for o in chip.flakes(*layers) if o.area_um2 >= min_area_um2 and inside(o)]
    report = MatchReport(truth_total=len(truth), truth_found=0)
    for obj in truth:
        if len(hits) == 0:
            report.missed.append(obj)
            continue
        d = np.hypot(hits[:, 0] - obj.centroid_um[0], hits[:, 1] - obj.centroid_um[1])
        i = int(np.argmin(d))
        if d[i] <= _radius(obj, min_radius_um):
            report.truth_found += 1
            report.position_errors_um.append(float(d[i]))
            report.matches.append((obj.id, i))
        else:
            report.missed.append(obj)
    r = min_radius_um
    for hx, hy in hits:
        near = [
            o
            for o in chip.query(hx - r, hy - r, hx + r, hy + r)
            if o.kind == "flake" and o.layers is not None and o.layers <= 10
        ]
        point = Point(hx, hy)
        on = [o for o in near if o.polygon.distance(point) <= r]
        report.hit_on_thin_flake.append(bool(on))
        report.hit_at_centroid.append(
            any(np.hypot(hx - o.centroid_um[0], hy - o.centroid_um[1]) <= _radius(o, r) for o in on)
        )
    return report
