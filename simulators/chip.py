"""A simulated exfoliated chip and its ground truth.

The chip is a list of objects in stage micrometres: thin flakes (1-10 layers), thick bulk
crystals, tape residue (a polymer film) and dust. Thin flakes are often terraces attached to
a thick crystal of the same lattice orientation. Every object carries what a test needs to
judge a flake finder: outline, layers, thickness, lattice axis angle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from .config import ChipSpec
from .optics import MATERIALS
from .shapes import cleaved_crystal

__all__ = ["Chip", "ChipObject", "generate_chip"]

ObjectKind = Literal["flake", "bulk", "residue", "dust"]

# Layer-count distribution of thin flakes (1..10), from what exfoliation typically gives.
_LAYER_P = np.array([0.30, 0.22, 0.14, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01])


@dataclass
class ChipObject:
    """One object on the chip, in stage micrometres (x right, y down the image)."""

    id: int
    kind: ObjectKind
    outline_um: list[tuple[float, float]]
    thickness_nm: float
    layers: int | None = None
    axis_deg: float | None = None  # lattice orientation of crystals, mod 60
    parent_id: int | None = None  # the thick crystal a terrace hangs from
    # Linear reflectance factor of opaque dust relative to the substrate.
    dust_albedo: float | None = None
    _poly: Polygon | None = field(default=None, repr=False, compare=False)

    @property
    def polygon(self) -> Polygon:
        if self._poly is None:
            self._poly = Polygon(self.outline_um)
        return self._poly

    @property
    def centroid_um(self) -> tuple[float, float]:
        c = self.polygon.centroid
        return (c.x, c.y)

    @property
    def area_um2(self) -> float:
        return float(self.polygon.area)

    @property
    def radius_um(self) -> float:
        """Radius of the circle of equal area."""
        return float(np.sqrt(self.area_um2 / np.pi))

    @property
    def axis_mod30_deg(self) -> float | None:
        return None if self.axis_deg is None else self.axis_deg % 30.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_poly")
        d["centroid_um"] = self.centroid_um
        d["area_um2"] = self.area_um2
        return d


@dataclass
class Chip:
    """The chip: its spec, seed and objects, drawn bottom to top in list order."""

    spec: ChipSpec
    seed: int
    objects: list[ChipObject]
    _tree: shapely.STRtree | None = field(default=None, repr=False)

    def flakes(self, min_layers: int = 1, max_layers: int = 10) -> list[ChipObject]:
        """Thin flakes with a layer count in [min_layers, max_layers]."""
        return [
            o
            for o in self.objects
            if o.kind == "flake" and o.layers is not None and min_layers <= o.layers <= max_layers
        ]

    def query(self, x0: float, y0: float, x1: float, y1: float) -> list[ChipObject]:
        """Objects whose outline meets the rectangle, in drawing order."""
        if self._tree is None:
            self._tree = shapely.STRtree([o.polygon for o in self.objects])
        idx = self._tree.query(box(x0, y0, x1, y1), predicate="intersects")
        return [self.objects[i] for i in sorted(idx)]

    def visible_polygon(self, obj: ChipObject) -> Polygon:
        """The part of an object not covered by objects drawn above it."""
        i = self.objects.index(obj)
        above = [
            o.polygon
            for o in self.query(*obj.polygon.bounds)[::-1]
            if self.objects.index(o) > i and o.kind in ("flake", "bulk")
        ]
        return obj.polygon.difference(shapely.union_all(above)) if above else obj.polygon

    def to_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "spec": self.spec.model_dump(),
                "objects": [o.to_dict() for o in self.objects],
            },
            indent=1,
        )

    def write_truth(self, path: str | Path) -> Path:
        """Write the ground truth next to a generated chip (JSON)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path


def _poisson_count(rng: np.random.Generator, per_mm2: float, area_um2: float) -> int:
    return int(rng.poisson(per_mm2 * area_um2 / 1e6))


def generate_chip(spec: ChipSpec, seed: int) -> Chip:
    """Draw a chip: bulk crystals with thin terraces, free thin flakes, residue and dust."""
    rng = np.random.default_rng(seed)
    m = spec.margin_um
    area = (spec.width_um - 2 * m) * (spec.height_um - 2 * m)
    objects: list[ChipObject] = []

    def place() -> tuple[float, float]:
        return (
            float(rng.uniform(m, spec.width_um - m)),
            float(rng.uniform(m, spec.height_um - m)),
        )

    def add(**kw) -> ChipObject:
        obj = ChipObject(id=len(objects) + 1, **kw)
        objects.append(obj)
        return obj

    def add_crystal(kind: ObjectKind, poly: Polygon, layers: int, axis: float) -> ChipObject:
        return add(
            kind=kind,
            outline_um=list(poly.exterior.coords)[:-1],
            thickness_nm=layers * layer_nm,
            layers=layers,
            axis_deg=axis,
        )

    layer_nm = MATERIALS[spec.material].layer_nm
    residue: list[dict] = []
    dust: list[dict] = []
    for _ in range(_poisson_count(rng, spec.residue_per_mm2, area)):
        centre = place()
        r = float(rng.lognormal(np.log(12), 0.6))
        blob = (
            Polygon(
                [
                    (
                        centre[0] + r * (1 + 0.35 * rng.standard_normal()) * np.cos(t),
                        centre[1] + r * (1 + 0.35 * rng.standard_normal()) * np.sin(t),
                    )
                    for t in np.linspace(0, 2 * np.pi, 14, endpoint=False)
                ]
            )
            .buffer(r * 0.15)
            .buffer(-r * 0.1)
        )
        if blob.geom_type == "Polygon" and blob.area > 1:
            residue.append(
                dict(
                    kind="residue",
                    outline_um=list(blob.exterior.coords)[:-1],
                    thickness_nm=float(rng.uniform(15, 150)),
                )
            )
    for _ in range(_poisson_count(rng, spec.dust_per_mm2, area)):
        centre = place()
        r = float(rng.uniform(0.8, 4.0))
        blob = shapely.Point(centre).buffer(r, quad_segs=4)
        dust.append(
            dict(
                kind="dust",
                outline_um=list(blob.exterior.coords)[:-1],
                thickness_nm=0.0,
                dust_albedo=float(rng.uniform(0.25, 0.7)),
            )
        )

    def thin_layers() -> int:
        return int(rng.choice(np.arange(1, 11), p=_LAYER_P / _LAYER_P.sum()))

    def thin_radius() -> float:
        d = float(rng.lognormal(np.log(spec.thin_median_diameter_um), 0.6))
        return float(np.clip(d / 2, 1.5, 60.0))

    # Bulk crystals, each possibly with a thin terrace of the same orientation.
    for _ in range(_poisson_count(rng, spec.bulk_crystals_per_mm2, area)):
        centre = place()
        axis = float(rng.uniform(0, 60))
        r_bulk = float(np.clip(rng.lognormal(np.log(25), 0.5), 6, 120))
        bulk_poly = cleaved_crystal(
            rng, centre, r_bulk, axis, spec.facet_scatter_deg, spec.torn_fraction
        )
        bulk_layers = int(rng.integers(40, 900))
        if rng.random() < spec.terrace_fraction:
            # The terrace sticks out of one side of the crystal, same lattice (sigma 1.5 deg
            # between pieces of one crystal is below our facet scatter; keep it equal).
            ang = rng.uniform(0, 2 * np.pi)
            r_t = thin_radius()
            tc = (centre[0] + np.cos(ang) * r_bulk, centre[1] + np.sin(ang) * r_bulk)
            terrace = cleaved_crystal(
                rng, tc, r_t, axis, spec.facet_scatter_deg, spec.torn_fraction
            )
            visible = terrace.difference(bulk_poly)
            if visible.geom_type == "Polygon" and visible.area > 4:
                t_obj = add_crystal("flake", visible, thin_layers(), axis)
                t_obj.parent_id = add_crystal("bulk", bulk_poly, bulk_layers, axis).id
                continue
        add_crystal("bulk", bulk_poly, bulk_layers, axis)

    # Free thin flakes, kept apart from what is already there.
    taken = shapely.union_all([o.polygon for o in objects]) if objects else Polygon()
    for _ in range(_poisson_count(rng, spec.thin_flakes_per_mm2, area)):
        for _attempt in range(10):
            centre = place()
            axis = float(rng.uniform(0, 60))
            poly = cleaved_crystal(
                rng, centre, thin_radius(), axis, spec.facet_scatter_deg, spec.torn_fraction
            )
            if not poly.buffer(15).intersects(taken):
                break
        else:
            continue
        taken = taken.union(poly)
        add_crystal("flake", poly, thin_layers(), axis)

    # Residue and dust lie on top of everything.
    for kw in residue + dust:
        add(**kw)
    return Chip(spec=spec, seed=seed, objects=objects)
