"""A simulated exfoliated chip and its ground truth.

The chip is a list of objects in stage micrometres, drawn bottom to top: thick crystals cut
into terraces along cleavage lines, thin flakes (1-10 layers) alone or hanging from a thick
crystal, crowded patches where the tape touched, polymer bubbles, scratches in the oxide,
tape residue and dust, inside a chip outline with a chipped edge. Every object carries what a
test needs to judge a flake finder: outline, layers, thickness, lattice axis angle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box

from .config import ChipSpec
from .optics import MATERIALS
from .shapes import cleaved_crystal, split_terraces

__all__ = ["Chip", "ChipObject", "generate_chip"]

ObjectKind = Literal["flake", "bulk", "residue", "bubble", "scratch", "dust"]

# Layer-count distribution of thin flakes (1..10), from what exfoliation typically gives.
_LAYER_P = np.array([0.30, 0.22, 0.14, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01])
# Thin means 1-10 layers; thicker pieces are bulk.
THIN_MAX_LAYERS = 10


@dataclass
class ChipObject:
    """One object on the chip, in stage micrometres (x along image columns, y along rows).

    `thickness_nm` is the film thickness for crystals, residue and bubble rings, and the
    oxide left in a scratch.
    """

    id: int
    kind: ObjectKind
    outline_um: list[tuple[float, float]]
    thickness_nm: float
    layers: int | None = None
    axis_deg: float | None = None  # lattice orientation of crystals, mod 60
    parent_id: int | None = None  # the crystal a terrace belongs to; the first bubble ring
    # Linear reflectance factor of opaque dust relative to the substrate.
    dust_albedo: float | None = None
    # Parts of the outline covered by crystals drawn above it (the renderer draws those
    # on top anyway; area and centroid must leave them out).
    holes_um: list[list[tuple[float, float]]] = field(default_factory=list)
    _poly: Polygon | None = field(default=None, repr=False, compare=False)

    @property
    def polygon(self) -> Polygon:
        if self._poly is None:
            self._poly = Polygon(self.outline_um, self.holes_um)
        return self._poly

    def set_polygon(self, poly: Polygon) -> None:
        self.outline_um = list(poly.exterior.coords)[:-1]
        self.holes_um = [list(ring.coords)[:-1] for ring in poly.interiors]
        self._poly = None

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
    """The chip: its spec, seed, outline and objects (drawn bottom to top in list order)."""

    spec: ChipSpec
    seed: int
    objects: list[ChipObject]
    # The chip's edge; by default the plain rectangle of the spec.
    outline_um: list[tuple[float, float]] = field(default_factory=list)
    _tree: shapely.STRtree | None = field(default=None, repr=False)
    _outline: Polygon | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.outline_um:
            w, h = self.spec.width_um, self.spec.height_um
            self.outline_um = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]

    @property
    def material(self) -> str:
        return self.spec.material

    @property
    def outline(self) -> Polygon:
        if self._outline is None:
            self._outline = Polygon(self.outline_um)
        return self._outline

    def flakes(self, min_layers: int = 1, max_layers: int = THIN_MAX_LAYERS) -> list[ChipObject]:
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

    def to_json(self, conditions: dict | None = None) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "material": self.material,
                "spec": self.spec.model_dump(),
                "conditions": conditions or {},
                "outline_um": self.outline_um,
                "objects": [o.to_dict() for o in self.objects],
            },
            indent=1,
        )

    def write_truth(self, path: str | Path, conditions: dict | None = None) -> Path:
        """Write the ground truth next to a generated chip (JSON, written atomically).

        `conditions` records how it was imaged (the simulator's imaging and stage
        settings), which evaluation needs to know what contrast each flake showed.
        """
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json(conditions))
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, text: str) -> Chip:
        """Read back a ground-truth file (as written by `write_truth`)."""
        data = json.loads(text)
        objects = [
            ChipObject(
                id=o["id"],
                kind=o["kind"],
                outline_um=[tuple(p) for p in o["outline_um"]],
                thickness_nm=o["thickness_nm"],
                layers=o.get("layers"),
                axis_deg=o.get("axis_deg"),
                parent_id=o.get("parent_id"),
                dust_albedo=o.get("dust_albedo"),
                holes_um=[[tuple(p) for p in ring] for ring in o.get("holes_um", [])],
            )
            for o in data["objects"]
        ]
        return cls(
            spec=ChipSpec.model_validate(data["spec"]),
            seed=data["seed"],
            objects=objects,
            outline_um=[tuple(p) for p in data["outline_um"]],
        )


def _poisson_count(rng: np.random.Generator, per_mm2: float, area_um2: float) -> int:
    return int(rng.poisson(per_mm2 * area_um2 / 1e6))


def _chip_outline(spec: ChipSpec, rng: np.random.Generator) -> Polygon:
    """The chip's rectangle with a chipped (cleaved-wafer) edge."""
    w, h, r = spec.width_um, spec.height_um, spec.edge_roughness_um
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    pts: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        n = max(2, int(np.hypot(x1 - x0, y1 - y0) / 40))
        t = np.linspace(0, 1, n, endpoint=False)
        # Inward notches of a cleaved wafer edge: mostly small, now and then a chip.
        depth = r * rng.exponential(0.3, size=n) * (t > 0)
        nx, ny = (y1 - y0), -(x1 - x0)
        norm = np.hypot(nx, ny)
        for tt, dd in zip(t, depth, strict=True):
            pts.append((x0 + tt * (x1 - x0) - nx / norm * dd, y0 + tt * (y1 - y0) - ny / norm * dd))
    poly = Polygon(pts)
    poly = poly if poly.is_valid else shapely.make_valid(poly).buffer(0)
    a, b = spec.broken_corner_um
    if a > 0 and b > 0:
        pad = 10 * r + 10
        corner = Polygon(
            [(w - a, h), (w, h - b), (w + pad, h - b), (w + pad, h + pad), (w - a, h + pad)]
        )
        poly = poly.difference(corner)
        if not isinstance(poly, Polygon):
            poly = max(poly.geoms, key=lambda g: g.area)
    return poly


class _ChipBuilder:
    """Draws the objects of one chip from one random generator, in drawing order."""

    def __init__(self, spec: ChipSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self.objects: list[ChipObject] = []
        self.layer_nm = MATERIALS[spec.material].layer_nm
        self.period = MATERIALS[spec.material].edge_period_deg
        m = spec.margin_um
        self.area = (spec.width_um - 2 * m) * (spec.height_um - 2 * m)

    def place(self) -> tuple[float, float]:
        s, m = self.spec, self.spec.margin_um
        return (
            float(self.rng.uniform(m, s.width_um - m)),
            float(self.rng.uniform(m, s.height_um - m)),
        )

    def count(self, per_mm2: float) -> int:
        return _poisson_count(self.rng, per_mm2, self.area)

    def add(self, **kw: object) -> ChipObject:
        obj = ChipObject(id=len(self.objects) + 1, **kw)  # type: ignore[arg-type]
        self.objects.append(obj)
        return obj

    def add_crystal(self, poly: Polygon, layers: int, axis: float) -> ChipObject:
        kind: ObjectKind = "flake" if layers <= THIN_MAX_LAYERS else "bulk"
        obj = self.add(
            kind=kind,
            outline_um=[],
            thickness_nm=layers * self.layer_nm,
            layers=layers,
            axis_deg=axis,
        )
        obj.set_polygon(poly)
        return obj

    def thin_layers(self) -> int:
        return int(self.rng.choice(np.arange(1, 11), p=_LAYER_P / _LAYER_P.sum()))

    def thin_radius(self) -> float:
        d = float(self.rng.lognormal(np.log(self.spec.thin_median_diameter_um), 0.6))
        return float(np.clip(d / 2, 1.5, 60.0))

    def bulk_layers(self) -> int:
        lo, hi = self.spec.bulk_thickness_nm
        nm = float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))
        return max(THIN_MAX_LAYERS + 1, round(nm / self.layer_nm))

    def crystal(self, centre: tuple[float, float], radius: float) -> list[ChipObject]:
        """A thick crystal cut into terraces of different thickness, maybe with a thin one."""
        rng, spec = self.rng, self.spec
        axis = float(rng.uniform(0, 60))
        outline = cleaved_crystal(
            rng, centre, radius, axis, spec.facet_scatter_deg, spec.torn_fraction, self.period
        )
        # Bigger crystals break into more terraces (a step every ~15 um of radius).
        most = min(spec.max_terrace_cuts, int(radius / 15) + 1) if radius > 4 else 0
        n_cuts = int(rng.integers(0, most + 1))
        pieces = split_terraces(rng, outline, axis, n_cuts, self.period)
        base = self.bulk_layers()
        made: list[ChipObject] = []
        thin: ChipObject | None = None
        if rng.random() < spec.terrace_fraction and radius > 4:
            # A thin terrace sticking out of one side, same lattice.
            ang = rng.uniform(0, 2 * np.pi)
            tc = (centre[0] + np.cos(ang) * radius, centre[1] + np.sin(ang) * radius)
            terrace = cleaved_crystal(
                rng,
                tc,
                self.thin_radius(),
                axis,
                spec.facet_scatter_deg,
                spec.torn_fraction,
                self.period,
            )
            visible = terrace.difference(outline)
            if visible.geom_type == "Polygon" and visible.area > 4:
                thin = self.add_crystal(visible, self.thin_layers(), axis)
                made.append(thin)
        for k, piece in enumerate(pieces):
            # Each step peels off (or leaves) a few tens of percent of the thickness.
            layers = (
                base if k == 0 else max(THIN_MAX_LAYERS + 1, round(base * rng.uniform(0.3, 1.6)))
            )
            made.append(self.add_crystal(piece, layers, axis))
        parent = made[-len(pieces)].id
        for obj in made:
            if obj.id != parent:
                obj.parent_id = parent
        return made

    def clusters(self) -> None:
        """Crowded patches: many fragments, mostly small and thick, around a centre."""
        rng, spec = self.rng, self.spec
        for _ in range(self.count(spec.clusters_per_mm2)):
            cx, cy = self.place()
            m = spec.margin_um
            for _ in range(int(rng.poisson(spec.fragments_per_cluster))):
                off = rng.normal(0, spec.cluster_radius_um, size=2)
                x, y = float(cx + off[0]), float(cy + off[1])
                r = float(np.clip(rng.lognormal(np.log(4.0), 0.8), 1.0, 60.0))
                if m <= x <= spec.width_um - m and m <= y <= spec.height_um - m:
                    self.crystal((x, y), r)

    def free_thin_flakes(self) -> None:
        rng, spec = self.rng, self.spec
        taken = shapely.union_all([o.polygon for o in self.objects]) if self.objects else Polygon()
        for _ in range(self.count(spec.thin_flakes_per_mm2)):
            for _attempt in range(10):
                centre = self.place()
                axis = float(rng.uniform(0, 60))
                poly = cleaved_crystal(
                    rng,
                    centre,
                    self.thin_radius(),
                    axis,
                    spec.facet_scatter_deg,
                    spec.torn_fraction,
                    self.period,
                )
                if not poly.buffer(15).intersects(taken):
                    break
            else:
                continue
            taken = taken.union(poly)
            self.add_crystal(poly, self.thin_layers(), axis)

    def scratches(self) -> None:
        rng, spec = self.rng, self.spec
        for _ in range(self.count(spec.scratches_per_mm2)):
            x, y = self.place()
            theta = rng.uniform(0, np.pi)
            length = rng.uniform(200, 1500)
            pts = [(x, y)]
            for _ in range(8):  # a scratch wanders a little
                theta += rng.normal(0, 0.03)
                x, y = x + np.cos(theta) * length / 8, y + np.sin(theta) * length / 8
                pts.append((x, y))
            width = rng.uniform(0.6, 2.5)
            line = LineString(pts).buffer(width / 2, cap_style="round", quad_segs=2)
            self.add(
                kind="scratch",
                outline_um=list(line.exterior.coords)[:-1],
                thickness_nm=self.spec.oxide_nm * float(rng.uniform(0.0, 0.7)),
            )

    def bubbles(self) -> None:
        """Polymer bubbles: domes whose thickness makes Newton's rings (drawn as rings)."""
        rng = self.rng
        for _ in range(self.count(self.spec.bubbles_per_mm2)):
            cx, cy = self.place()
            radius = float(rng.lognormal(np.log(8), 0.5))
            height = float(rng.uniform(80, 400))
            first = None
            for k in range(10):
                rk = radius * (1 - k / 10)
                # A spherical cap: thickness grows towards the centre.
                t = height * (1 - (rk / radius) ** 2) + height * 0.05
                ring = Point(cx, cy).buffer(rk, quad_segs=8)
                obj = self.add(
                    kind="bubble",
                    outline_um=list(ring.exterior.coords)[:-1],
                    thickness_nm=t,
                    parent_id=first,
                )
                first = first or obj.id

    def residue_and_dust(self) -> None:
        rng = self.rng
        for _ in range(self.count(self.spec.residue_per_mm2)):
            cx, cy = self.place()
            r = float(rng.lognormal(np.log(12), 0.6))
            blob = (
                Polygon(
                    [
                        (
                            cx + r * (1 + 0.35 * rng.standard_normal()) * np.cos(t),
                            cy + r * (1 + 0.35 * rng.standard_normal()) * np.sin(t),
                        )
                        for t in np.linspace(0, 2 * np.pi, 14, endpoint=False)
                    ]
                )
                .buffer(r * 0.15)
                .buffer(-r * 0.1)
            )
            if blob.geom_type == "Polygon" and blob.area > 1:
                self.add(
                    kind="residue",
                    outline_um=list(blob.exterior.coords)[:-1],
                    thickness_nm=float(rng.uniform(15, 150)),
                )
        for _ in range(self.count(self.spec.dust_per_mm2)):
            centre = self.place()
            r = float(rng.uniform(0.8, 4.0))
            blob = Point(centre).buffer(r, quad_segs=4)
            self.add(
                kind="dust",
                outline_um=list(blob.exterior.coords)[:-1],
                thickness_nm=0.0,
                dust_albedo=float(rng.uniform(0.25, 0.7)),
            )


def _trim_hidden_flakes(objects: list[ChipObject]) -> list[ChipObject]:
    """Ground truth is what can be seen: cut from each thin flake the crystals drawn above it.

    A flake left in pieces keeps its largest piece; one hidden entirely is dropped.
    """
    crystals = [o for o in objects if o.kind in ("flake", "bulk")]
    tree = shapely.STRtree([o.polygon for o in crystals])
    order = {o.id: i for i, o in enumerate(objects)}
    keep: list[ChipObject] = []
    for obj in objects:
        if obj.kind == "flake":
            above = [
                crystals[i].polygon
                for i in tree.query(obj.polygon, predicate="intersects")
                if order[crystals[i].id] > order[obj.id]
            ]
            if above:
                visible = obj.polygon.difference(shapely.union_all(above))
                if visible.is_empty or visible.area < 1.0:
                    continue
                if visible.geom_type != "Polygon":
                    visible = max(getattr(visible, "geoms", []), key=lambda g: g.area)
                    if visible.geom_type != "Polygon":
                        continue
                obj.set_polygon(visible)
        keep.append(obj)
    return keep


def generate_chip(spec: ChipSpec, seed: int) -> Chip:
    """Draw a chip: scratches, crystals and crowded patches, free thin flakes, bubbles,
    then residue and dust on top."""
    rng = np.random.default_rng(seed)
    outline = _chip_outline(spec, rng)
    b = _ChipBuilder(spec, rng)
    b.scratches()
    for _ in range(b.count(spec.bulk_crystals_per_mm2)):
        b.crystal(b.place(), float(np.clip(rng.lognormal(np.log(25), 0.5), 6, 120)))
    b.clusters()
    b.free_thin_flakes()
    b.bubbles()
    b.residue_and_dust()
    objects = _trim_hidden_flakes(b.objects)
    if spec.broken_corner_um[0] > 0 and spec.broken_corner_um[1] > 0:
        # What lay across the cleave line went with the broken piece.
        objects = [o for o in objects if outline.contains(o.polygon)]
    return Chip(
        spec=spec, seed=seed, objects=objects, outline_um=list(outline.exterior.coords)[:-1]
    )
