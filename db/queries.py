"""Reading the catalogue: the queries people and programs ask of it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from .models import Flake, Scan, Tile, row_dict

__all__ = [
    "ORDERS",
    "FlakeQuery",
    "find_flakes",
    "get_flake",
    "get_flake_by_uuid",
    "list_scans",
    "scan_summary",
    "scan_tiles",
]

# How results can be sorted: the figure, largest first (then by id, so pages are stable).
ORDERS = {
    "area": Flake.area_um2,
    "rect_width": Flake.rect_width_um,
    "inscribed_diameter": Flake.inscribed_diameter_um,
    "score": Flake.score_any,
    "id": Flake.id,
}


@dataclass(frozen=True)
class FlakeQuery:
    """Filters for `find_flakes`; None means no filter.

    Shape filters (aspect ratio, the largest inscribed rectangle's sides, the inscribed
    circle) leave out flakes logged before outlines were measured. The axis window is mod
    `axis_modulus` and may wrap: `axis_min_deg=28, axis_max_deg=2` is 28-30 or 0-2 deg.
    """

    scan_id: int | None = None
    instrument: str | None = None
    chip_id: str | None = None
    flake_class: int | None = None
    min_area_um2: float | None = None
    max_area_um2: float | None = None
    min_aspect_ratio: float | None = None
    max_aspect_ratio: float | None = None
    min_rect_width_um: float | None = None
    min_rect_length_um: float | None = None
    min_inscribed_diameter_um: float | None = None
    axis_min_deg: float | None = None
    axis_max_deg: float | None = None
    axis_modulus: float = 30.0
    used: bool | None = None
    favourite: bool | None = None
    notes_contain: str | None = None
    ids: tuple[int, ...] | None = None
    order_by: str = "area"
    limit: int | None = None


def _axis_window(q: FlakeQuery) -> ColumnElement[bool] | None:
    if q.axis_min_deg is None and q.axis_max_deg is None:
        return None
    m = q.axis_modulus
    lo = (q.axis_min_deg if q.axis_min_deg is not None else 0.0) % m
    hi = q.axis_max_deg if q.axis_max_deg is not None else m
    hi = hi if hi == m else hi % m  # the window's top may be the modulus itself
    a = Flake.axis_angle_deg
    if lo <= hi:
        return and_(a >= lo, a <= hi)
    return or_(a >= lo, a <= hi)


def _filters(q: FlakeQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    pairs = (
        (q.scan_id, lambda v: Flake.scan_id == v),
        (q.instrument, lambda v: Flake.instrument == v),
        (q.chip_id, lambda v: Flake.chip_id == v),
        (q.flake_class, lambda v: Flake.flake_class == v),
        (q.min_area_um2, lambda v: Flake.area_um2 >= v),
        (q.max_area_um2, lambda v: Flake.area_um2 <= v),
        (q.min_aspect_ratio, lambda v: Flake.aspect_ratio >= v),
        (q.max_aspect_ratio, lambda v: Flake.aspect_ratio <= v),
        (q.min_rect_width_um, lambda v: Flake.rect_width_um >= v),
        (q.min_rect_length_um, lambda v: Flake.rect_length_um >= v),
        (q.min_inscribed_diameter_um, lambda v: Flake.inscribed_diameter_um >= v),
        (q.used, lambda v: Flake.used.is_(v)),
        (q.favourite, lambda v: Flake.favourite.is_(v)),
        (q.notes_contain, lambda v: Flake.notes.contains(v, autoescape=True)),
        (q.ids, lambda v: Flake.id.in_(v)),
    )
    where += [make(value) for value, make in pairs if value is not None]
    if (axis := _axis_window(q)) is not None:
        where.append(axis)
    return where


def find_flakes(engine: Engine, q: FlakeQuery = FlakeQuery()) -> list[dict]:
    """Flakes matching the filters, sorted by `q.order_by` (largest first)."""
    if q.order_by not in ORDERS:
        raise ValueError(f"order_by = {q.order_by!r}: expected one of {', '.join(ORDERS)}")
    key = ORDERS[q.order_by]
    stmt = select(Flake).where(*_filters(q)).order_by(key.desc().nulls_last(), Flake.id)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    with Session(engine) as s:
        return [f.as_dict() for f in s.scalars(stmt)]


def get_flake(engine: Engine, flake_id: int) -> dict | None:
    with Session(engine) as s:
        f = s.get(Flake, flake_id)
        return f.as_dict() if f else None


def get_flake_by_uuid(engine: Engine, uuid: str) -> dict | None:
    """A flake by its global key (the one a lab-wide catalogue shares)."""
    with Session(engine) as s:
        f = s.scalar(select(Flake).where(Flake.uuid == uuid))
        return f.as_dict() if f else None


def _per_class(s: Session, scan_ids: list[int]) -> dict[int, dict[int, int]]:
    counts: dict[int, dict[int, int]] = {i: {} for i in scan_ids}
    rows = s.execute(
        select(Flake.scan_id, Flake.flake_class, func.count())
        .where(Flake.scan_id.in_(scan_ids))
        .group_by(Flake.scan_id, Flake.flake_class)
    )
    for scan_id, cls, n in rows:
        counts[scan_id][int(cls)] = int(n)
    return counts


def scan_summary(engine: Engine, scan_id: int) -> dict | None:
    """A scan's row (with its settings) plus its flake count per class."""
    with Session(engine) as s:
        scan = s.get(Scan, scan_id)
        if scan is None:
            return None
        return {**row_dict(scan), "flakes_per_class": _per_class(s, [scan_id])[scan_id]}


def list_scans(engine: Engine) -> list[dict]:
    """Every scan with its flake count per class (settings left out: see scan_summary)."""
    with Session(engine) as s:
        scans = list(s.scalars(select(Scan).order_by(Scan.id)))
        counts = _per_class(s, [sc.id for sc in scans])
        return [
            {**row_dict(sc, exclude=("settings_json",)), "flakes_per_class": counts[sc.id]}
            for sc in scans
        ]


def scan_tiles(engine: Engine, scan_id: int) -> list[dict]:
    """A scan's tiles in the order they were processed."""
    with Session(engine) as s:
        rows = s.scalars(select(Tile).where(Tile.scan_id == scan_id).order_by(Tile.id))
        return [row_dict(t) for t in rows]
