"""Outlines of exfoliated crystals: straight cleavage edges along lattice directions.

Hexagonal crystals (graphene, hBN) cleave along zigzag and armchair directions, so the
straight edges of a flake lie at multiples of 30 deg from its lattice axis. A cleaved
crystal is modelled as an intersection of half-planes whose normals are lattice
directions, unions of such pieces give re-entrant (concave) outlines, and a share of edges is
torn: replaced by a rough, non-crystallographic line.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon
from shapely.ops import split

__all__ = [
    "cleaved_crystal",
    "convex_cleaved_piece",
    "edge_consensus_deg",
    "split_terraces",
    "torn_edges",
]


def _half_plane_polygon(
    normals_deg: np.ndarray, distances: np.ndarray, centre: tuple[float, float]
) -> Polygon:
    """Intersection of half-planes n_k . (p - c) <= d_k, as a polygon (empty if unbounded)."""
    order = np.argsort(normals_deg % 360)
    ang = np.radians(normals_deg[order] % 360)
    dist = distances[order]
    gaps = np.diff(np.concatenate([ang, ang[:1] + 2 * np.pi]))
    if gaps.max() >= np.pi - 1e-6:
        return Polygon()  # normals do not enclose the centre: unbounded region
    cx, cy = centre
    big = 10 * float(dist.max())
    poly = Polygon([(-big, -big), (big, -big), (big, big), (-big, big)])
    for a_k, d_k in zip(ang, dist, strict=True):
        n = np.array([np.cos(a_k), np.sin(a_k)])
        t = np.array([-n[1], n[0]])
        base = n * d_k
        clip = Polygon(
            [
                base + t * big,
                base - t * big,
                base - t * big - n * 2 * big,
                base + t * big - n * 2 * big,
            ]
        )
        poly = poly.intersection(clip)
    return affinity.translate(poly, cx, cy) if not poly.is_empty else poly


def convex_cleaved_piece(
    rng: np.random.Generator,
    centre: tuple[float, float],
    radius_um: float,
    axis_deg: float,
    facet_scatter_deg: float,
    edge_period_deg: float = 30.0,
) -> Polygon:
    """A convex crystal piece: 4-8 facets on lattice directions, somewhat elongated.

    Exfoliated fragments are mostly compact; needles are rare, so pieces whose bounding
    rectangle is more than 3.5 times longer than wide are drawn again.
    """
    n_dirs = round(360 / edge_period_deg)
    for _ in range(50):
        k = int(rng.integers(4, min(9, n_dirs + 1)))
        chosen = np.sort(rng.choice(n_dirs, size=k, replace=False))
        normals = axis_deg + 90.0 + chosen * edge_period_deg
        normals = normals + rng.normal(0.0, facet_scatter_deg, size=k)
        # Elongation: the distance to a facet depends on its direction.
        stretch = rng.uniform(1.0, 1.8)
        stretch_dir = np.radians(rng.uniform(0, 180))
        cosines = np.cos(np.radians(normals) - stretch_dir)
        dist = radius_um * (1 + (stretch - 1) * cosines**2) / np.sqrt(stretch)
        dist = dist * rng.uniform(0.8, 1.2, size=k)
        poly = _half_plane_polygon(normals, dist, centre)
        if not poly.is_empty and poly.area > 0 and _aspect(poly) <= 3.5:
            return poly
    raise RuntimeError("could not build a bounded crystal piece")  # pragma: no cover


def _aspect(poly: Polygon) -> float:
    """Length over width of the minimum rotated rectangle."""
    c = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)
    a, b = np.hypot(*(c[1] - c[0])), np.hypot(*(c[2] - c[1]))
    return float(max(a, b) / max(min(a, b), 1e-9))


def torn_edges(
    rng: np.random.Generator, poly: Polygon, torn_fraction: float, roughness_um: float
) -> Polygon:
    """Replace a share of the outline's edges by rough, non-crystallographic ones."""
    coords = np.asarray(poly.exterior.coords)[:-1]
    out: list[np.ndarray] = []
    for i, p in enumerate(coords):
        q = coords[(i + 1) % len(coords)]
        out.append(p)
        length = float(np.hypot(*(q - p)))
        if rng.random() >= torn_fraction or length < 4 * roughness_um:
            continue
        n_pts = max(3, int(length / roughness_um))
        t = np.linspace(0, 1, n_pts + 2)[1:-1]
        normal = np.array([-(q - p)[1], (q - p)[0]]) / length
        # A smoothed random walk pinned at both ends (torn edges wander, they are not
        # saw-toothed), bowed by up to a twelfth of the edge.
        steps = rng.normal(0, roughness_um, size=n_pts)
        walk = np.cumsum(ndimage.uniform_filter1d(steps, 5, mode="nearest"))
        walk -= t * walk[-1]
        bow = rng.uniform(-1, 1) * length / 12 * np.sin(np.pi * t)
        for tt, w, b in zip(t, walk, bow, strict=True):
            out.append(p + tt * (q - p) + normal * (w + b))
    torn = Polygon(out)
    if not torn.is_valid:
        torn = shapely.make_valid(torn)
        if torn.geom_type != "Polygon":
            torn = max(getattr(torn, "geoms", [poly]), key=lambda g: g.area)
            if torn.geom_type != "Polygon":
                return poly
    return torn


def cleaved_crystal(
    rng: np.random.Generator,
    centre: tuple[float, float],
    radius_um: float,
    axis_deg: float,
    facet_scatter_deg: float = 2.0,
    torn_fraction: float = 0.25,
    edge_period_deg: float = 30.0,
) -> Polygon:
    """A flake outline: one to three lattice-aligned pieces joined, some edges torn."""
    pieces = [
        convex_cleaved_piece(rng, centre, radius_um, axis_deg, facet_scatter_deg, edge_period_deg)
    ]
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        offset = rng.normal(0, radius_um * 0.6, size=2)
        pieces.append(
            convex_cleaved_piece(
                rng,
                (centre[0] + offset[0], centre[1] + offset[1]),
                radius_um * rng.uniform(0.4, 0.8),
                axis_deg,
                facet_scatter_deg,
                edge_period_deg,
            )
        )
    outline = shapely.union_all(pieces)
    if outline.geom_type != "Polygon":  # disjoint pieces: keep the main one
        outline = max(outline.geoms, key=lambda g: g.area)
    outline = Polygon(outline.exterior)
    return torn_edges(rng, outline, torn_fraction, roughness_um=max(0.4, radius_um * 0.04))


def split_terraces(
    rng: np.random.Generator,
    poly: Polygon,
    axis_deg: float,
    n_cuts: int,
    edge_period_deg: float = 30.0,
) -> list[Polygon]:
    """Cut a crystal into terraces along cleavage lines (lattice directions).

    Exfoliation peels layers off in steps; each step edge is a cleavage line, so it runs
    along a lattice direction like the outer edges. Pieces are returned largest first.
    """
    pieces = [poly]
    n_dirs = round(360 / edge_period_deg)
    for _ in range(n_cuts):
        target = max(pieces, key=lambda g: g.area)
        x0, y0, x1, y1 = target.bounds
        for _attempt in range(10):
            point = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
            if target.contains(point):
                break
        else:
            continue
        theta = np.radians(axis_deg + edge_period_deg * int(rng.integers(n_dirs)))
        span = 2 * max(x1 - x0, y1 - y0)
        d = np.array([np.cos(theta), np.sin(theta)]) * span
        line = LineString([(point.x - d[0], point.y - d[1]), (point.x + d[0], point.y + d[1])])
        parts = [g for g in split(target, line).geoms if g.geom_type == "Polygon" and g.area > 1]
        if len(parts) >= 2:
            pieces.remove(target)
            pieces.extend(parts)
    return sorted(pieces, key=lambda g: -g.area)


def edge_consensus_deg(
    poly: Polygon,
    modulus_deg: float = 30.0,
    min_edge_um: float = 1.0,
    min_edge_fraction: float = 0.12,
) -> float | None:
    """The orientation a person reads off a flake's straight edges, degrees mod `modulus_deg`.

    Cleaved facets scatter a few degrees about the lattice (physics-notes: sigma ~ 5 deg), so
    the edges know the lattice only to ~sigma / sqrt(edges). A labeller, like the AxisID
    seed's, reports what the straight edges agree on: here the length-weighted circular mean
    of the outline's straight segments (torn edges are chains of short segments and drop
    out). None when no segment is long enough.
    """
    rings = [poly] if poly.geom_type == "Polygon" else list(getattr(poly, "geoms", []))
    longest_min = max(min_edge_um, min_edge_fraction * float(np.sqrt(max(poly.area, 0.0))))
    total = 0j
    for ring in rings:
        xy = np.asarray(ring.exterior.coords)
        d = np.diff(xy, axis=0)
        length = np.hypot(d[:, 0], d[:, 1])
        keep = length >= longest_min
        if not keep.any():
            continue
        phase = np.arctan2(d[keep, 1], d[keep, 0]) * (360.0 / modulus_deg)
        total += np.sum(length[keep] * np.exp(1j * phase))
    if abs(total) == 0:
        return None
    angle = float(np.degrees(np.angle(total)) * modulus_deg / 360.0) % modulus_deg
    return 0.0 if angle >= modulus_deg else angle  # -1e-15 % 30 == 30.0
