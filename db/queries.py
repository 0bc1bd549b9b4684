"""Reading the catalogue: the queries people and programs ask of it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from .models import Flake, Scan

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


def scan_summary(engine: Engine, scan_id: int) -> dict | None:
    """A scan's row plus its flake count per class."""
    with Session(engine) as s:
        scan = s.get(Scan, scan_id)
        if scan is None:
            return None
        per_class = dict(
            s.execute(
                select(Flake.flake_class, func.count())
                .where(Flake.scan_id == scan_id)
                .group_by(Flake.flake_class)
            ).all()
        )
        row = {c.name: getattr(scan, c.key) for c in Scan.__table__.columns}
        row = {k: (v.isoformat() + "Z" if hasattr(v, "isoformat") else v) for k, v in row.items()}
        row["flakes_per_class"] = {int(k): int(v) for k, v in per_class.items()}
        return row


def list_scans(engine: Engine) -> list[dict]:
    with Session(engine) as s:
        ids = list(s.scalars(select(Scan.id).order_by(Scan.id)))
    return [r for i in ids if (r := scan_summary(engine, i)) is not None]
