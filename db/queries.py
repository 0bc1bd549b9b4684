"""Reading the catalogue: the queries people and programs ask of it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from .models import Flake, Scan, row_dict

__all__ = ["FlakeQuery", "find_flakes", "get_flake", "list_scans", "scan_summary"]


@dataclass(frozen=True)
class FlakeQuery:
    """Filters for `find_flakes`; None means no filter."""

    scan_id: int | None = None
    chip_id: str | None = None
    flake_class: int | None = None
    min_area_um2: float | None = None
    max_area_um2: float | None = None
    limit: int | None = None


def find_flakes(engine: Engine, q: FlakeQuery = FlakeQuery()) -> list[dict]:
    """Flakes matching the filters, largest first."""
    stmt = select(Flake)
    if q.scan_id is not None:
        stmt = stmt.where(Flake.scan_id == q.scan_id)
    if q.chip_id is not None:
        stmt = stmt.where(Flake.chip_id == q.chip_id)
    if q.flake_class is not None:
        stmt = stmt.where(Flake.flake_class == q.flake_class)
    if q.min_area_um2 is not None:
        stmt = stmt.where(Flake.area_um2 >= q.min_area_um2)
    if q.max_area_um2 is not None:
        stmt = stmt.where(Flake.area_um2 <= q.max_area_um2)
    stmt = stmt.order_by(Flake.area_um2.desc(), Flake.id)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    with Session(engine) as s:
        return [f.as_dict() for f in s.scalars(stmt)]


def get_flake(engine: Engine, flake_id: int) -> dict | None:
    with Session(engine) as s:
        f = s.get(Flake, flake_id)
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
