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

from .chip import THIN_MAX_LAYERS, Chip, ChipObject
from .optics import MATERIALS, StackOptics, contrast_class
from .shapes import edge_consensus_deg

__all__ = [
    "ClassRow",
    "MatchReport",
    "ScanEvaluation",
    "evaluate_scan",
    "match_hits",
    "measured_class",
    "measured_contrast",
]


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


@dataclass
class ClassRow:
    """One GrapheneClassifier class (or "all") of a scan's evaluation."""

    name: str
    truth: int = 0
    found: int = 0
    hits: int = 0
    hits_on_thin_flakes: int = 0
    hits_right_class: int = 0

    @property
    def recall(self) -> float | None:
        return self.found / self.truth if self.truth else None

    @property
    def precision(self) -> float | None:
        return self.hits_on_thin_flakes / self.hits if self.hits else None

    @property
    def class_agreement(self) -> float | None:
        return self.hits_right_class / self.hits if self.hits else None

    def as_dict(self) -> dict:
        return {
            "class": self.name,
            "truth": self.truth,
            "found": self.found,
            "recall": self.recall,
            "hits": self.hits,
            "hits_on_thin_flakes": self.hits_on_thin_flakes,
            "precision": self.precision,
            "hits_right_class": self.hits_right_class,
            "class_agreement": self.class_agreement,
        }


@dataclass
class ScanEvaluation:
    """A scan against the chip it scanned: per class, positions and axis angles."""

    rows: list[ClassRow]
    position_error_um_median: float | None
    position_error_um_p90: float | None
    axis_mae_deg: float | None
    axis_n: int
    # Against what the flake's straight edges agree on (`shapes.edge_consensus_deg`), the
    # reading a person gives; facets scatter about the lattice, so this is the fairer test
    # of an edge reader and axis_mae_deg the one a lab cares about.
    axis_edges_mae_deg: float | None = None
    axis_edges_n: int = 0
    # Each stored reading (`AXIS_READINGS`: the CNN's, the straight edges') on the matched
    # hits that have both, against the lattice and the edge label: which one to show first.
    axis_readings: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "classes": [r.as_dict() for r in self.rows],
            "position_error_um_median": self.position_error_um_median,
            "position_error_um_p90": self.position_error_um_p90,
            "axis_mae_deg": self.axis_mae_deg,
            "axis_n": self.axis_n,
            "axis_edges_mae_deg": self.axis_edges_mae_deg,
            "axis_edges_n": self.axis_edges_n,
            "axis_readings": self.axis_readings,
        }


AXIS_READINGS = {"cnn": "axis_cnn_deg", "edges": "axis_edges_deg"}


def compare_axis_readings(pairs: Sequence[tuple[dict, ChipObject]]) -> dict[str, dict]:
    """MAE of every stored axis reading on the (hit, true flake) pairs where all of them
    exist, against the lattice and against the flake's straight-edge consensus."""
    both = [
        (h, o)
        for h, o in pairs
        if o.axis_deg is not None and all(h.get(k) is not None for k in AXIS_READINGS.values())
    ]
    if not both:
        return {}
    out: dict[str, dict] = {}
    for name, key in AXIS_READINGS.items():
        lattice = [_mod30_error(h[key], o.axis_deg) for h, o in both]
        edges = [
            _mod30_error(h[key], e)
            for h, o in both
            if (e := edge_consensus_deg(o.polygon)) is not None
        ]
        out[name] = {
            "n": len(both),
            "lattice_mae_deg": float(np.mean(lattice)),
            "edges_mae_deg": float(np.mean(edges)) if edges else None,
            "edges_n": len(edges),
        }
    return out


def measured_contrast(obj: ChipObject, optics: StackOptics, flare: float) -> float:
    """The R contrast a flake shows: its thin-film contrast lowered by the camera's flare."""
    return float(optics.contrast(obj.layers or 0)[0]) / (1.0 + flare)


def measured_class(
    obj: ChipObject,
    optics: StackOptics,
    flare: float,
    bins: Sequence[float],
) -> int:
    """The contrast class a flake shows: its thin-film R contrast, lowered by flare, binned."""
    return contrast_class(measured_contrast(obj, optics, flare), bins)


def evaluate_scan(
    chip: Chip,
    hits: Sequence[dict],
    region_um: tuple[float, float, float, float],
    *,
    min_area_um2: float,
    class_bins: Sequence[float] = (0.0, 0.12, 0.19, 0.30),
    flare: float = 0.15,
    numerical_aperture: float = 0.14,
    min_radius_um: float = 3.0,
) -> ScanEvaluation:
    """Recall and precision per class, position error and axis-angle error of a scan.

    `hits` are catalogue rows (x_um, y_um, flake_class, axis_angle_deg). A true flake's
    class is the contrast class it shows; flakes outside every bin (too thick) are not
    counted as truth, but a hit on one still counts as a hit on a thin flake.
    """
    optics = StackOptics(MATERIALS[chip.spec.material], chip.spec.oxide_nm, numerical_aperture)
    n_classes = len(class_bins) - 1
    rows = [ClassRow(str(k)) for k in range(1, n_classes + 1)]
    total = ClassRow("all")
    xy = [(h["x_um"], h["y_um"]) for h in hits]
    report = match_hits(
        chip,
        xy,
        region_um,
        min_area_um2=min_area_um2,
        layers=(1, THIN_MAX_LAYERS),
        min_radius_um=min_radius_um,
    )
    by_id = {o.id: o for o in chip.objects}
    truth_class = {o.id: measured_class(o, optics, flare, class_bins) for o in report.missed} | {
        tid: measured_class(by_id[tid], optics, flare, class_bins) for tid, _ in report.matches
    }
    for tid, k in truth_class.items():
        if k == 0:
            continue
        rows[k - 1].truth += 1
        total.truth += 1
        if any(t == tid for t, _ in report.matches):
            rows[k - 1].found += 1
            total.found += 1
    matched_truth = {i: t for t, i in report.matches}
    readings = compare_axis_readings(
        [(hits[i], by_id[t]) for i, t in matched_truth.items() if by_id[t].axis_deg is not None]
    )
    axis_errors: list[float] = []
    edge_errors: list[float] = []
    for i, hit in enumerate(hits):
        k = int(hit["flake_class"])
        row = rows[k - 1] if 1 <= k <= n_classes else None
        on = report.hit_on_thin_flake[i]
        for r in (row, total):
            if r is None:
                continue
            r.hits += 1
            r.hits_on_thin_flakes += on
        tid = matched_truth.get(i)
        if tid is not None:
            if truth_class.get(tid) == k:
                total.hits_right_class += 1
                if row is not None:
                    row.hits_right_class += 1
            truth_axis = by_id[tid].axis_deg
            got = hit.get("axis_angle_deg")
            if got is not None and truth_axis is not None:
                axis_errors.append(_mod30_error(got, truth_axis))
                edges = edge_consensus_deg(by_id[tid].polygon)
                if edges is not None:
                    edge_errors.append(_mod30_error(got, edges))
    errs = np.asarray(report.position_errors_um)
    return ScanEvaluation(
        rows=[*rows, total],
        position_error_um_median=float(np.median(errs)) if errs.size else None,
        position_error_um_p90=float(np.percentile(errs, 90)) if errs.size else None,
        axis_mae_deg=float(np.mean(axis_errors)) if axis_errors else None,
        axis_n=len(axis_errors),
        axis_edges_mae_deg=float(np.mean(edge_errors)) if edge_errors else None,
        axis_edges_n=len(edge_errors),
        axis_readings=readings,
    )


def _mod30_error(a: float, b: float) -> float:
    return abs((a - b % 30 + 15) % 30 - 15)
