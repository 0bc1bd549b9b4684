"""The flake catalogue schema: scans, the tiles they imaged, the flakes found.

Coordinates are stage micrometres (x along image columns, y along image rows); times are
UTC; angles are degrees. The tables are meant to be read with plain `sqlite3` as well as
through SQLAlchemy, so names are spelled out and units are in the column names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "DEFAULT_INSTRUMENT",
    "SCHEMA_VERSION",
    "Base",
    "Flake",
    "FlakeImage",
    "Scan",
    "Tile",
    "new_uuid",
    "plain",
    "row_dict",
    "utcnow",
]

# The schema's number: alembic revision 000N is schema N (db/migrations/versions). It is
# also written to PRAGMA user_version, so a flakescan from before alembic refuses a
# catalogue it would write wrong rows into (no instrument, no uuid).
SCHEMA_VERSION = 6

# What a writer stamps when it is not told its instrument (config.instrument is).
DEFAULT_INSTRUMENT = "default"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_uuid() -> str:
    """A row's global key: a lab-wide catalogue merges several daemons' rows by it."""
    return str(uuid4())


def _instrument() -> Mapped[str]:
    """Which microscope (the daemon's config.instrument) wrote the row (schema 6)."""
    return mapped_column(String(64), index=True)


def _uuid() -> Mapped[str]:
    """UUID4 as 36 characters, set on insert (schema 6); the integer id stays local."""
    return mapped_column(String(36), unique=True, index=True, default=new_uuid)


def plain(value: object) -> object:
    """A column value as JSON wants it: naive-UTC datetimes as ISO 8601 with a Z."""
    return value.isoformat() + "Z" if isinstance(value, datetime) else value


def row_dict(obj: Base, exclude: tuple[str, ...] = ()) -> dict:
    """All columns of a row as plain values, for JSON, CSV and events."""
    return {
        c.name: plain(getattr(obj, c.key)) for c in obj.__table__.columns if c.name not in exclude
    }


class Base(DeclarativeBase):
    pass


class Scan(Base):
    """One scan of one chip region."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = _uuid()
    instrument: Mapped[str] = _instrument()
    chip_id: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    # running | completed | stopped | failed | interrupted
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    region_x0_um: Mapped[float] = mapped_column(Float)
    region_y0_um: Mapped[float] = mapped_column(Float)
    region_x1_um: Mapped[float] = mapped_column(Float)
    region_y1_um: Mapped[float] = mapped_column(Float)
    overlap_pct: Mapped[float] = mapped_column(Float)
    pixel_size_um: Mapped[float] = mapped_column(Float)
    fov_width_um: Mapped[float] = mapped_column(Float)
    fov_height_um: Mapped[float] = mapped_column(Float)
    tiles_planned: Mapped[int] = mapped_column(Integer)
    tiles_done: Mapped[int] = mapped_column(Integer, default=0)
    flakes_found: Mapped[int] = mapped_column(Integer, default=0)
    classifier_model: Mapped[str] = mapped_column(String(256), default="")
    settings_json: Mapped[str] = mapped_column(Text, default="{}")

    tiles: Mapped[list[Tile]] = relationship(back_populates="scan", cascade="all, delete-orphan")
    flakes: Mapped[list[Flake]] = relationship(back_populates="scan", cascade="all, delete-orphan")


class Tile(Base):
    """One field of view of a scan, processed."""

    __tablename__ = "tiles"
    __table_args__ = (UniqueConstraint("scan_id", "tile_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = _uuid()
    instrument: Mapped[str] = _instrument()
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    tile_index: Mapped[int] = mapped_column(Integer)
    x_um: Mapped[float] = mapped_column(Float)
    y_um: Mapped[float] = mapped_column(Float)
    z_um: Mapped[float] = mapped_column(Float)
    acquired_at: Mapped[datetime] = mapped_column(DateTime)
    processed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    candidates: Mapped[int] = mapped_column(Integer)
    hits: Mapped[int] = mapped_column(Integer)
    processing_ms: Mapped[float] = mapped_column(Float)
    background_r: Mapped[float] = mapped_column(Float)
    background_g: Mapped[float] = mapped_column(Float)
    background_b: Mapped[float] = mapped_column(Float)
    skipped_reason: Mapped[str] = mapped_column(Text, default="")
    # schema 5: the share of the tile that was bare wafer (a resumed scan learns the
    # chip's wafer colour again from its finished tiles); NULL before schema 5
    background_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)

    scan: Mapped[Scan] = relationship(back_populates="tiles")


class Flake(Base):
    """A hit: a candidate the classifier accepted."""

    __tablename__ = "flakes"
    __table_args__ = (Index("ix_flakes_class_area", "flake_class", "area_um2"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = _uuid()
    instrument: Mapped[str] = _instrument()
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    tile_id: Mapped[int] = mapped_column(ForeignKey("tiles.id", ondelete="CASCADE"), index=True)
    chip_id: Mapped[str] = mapped_column(String(128), index=True)
    x_um: Mapped[float] = mapped_column(Float)
    y_um: Mapped[float] = mapped_column(Float)
    bbox_x0_um: Mapped[float] = mapped_column(Float)
    bbox_y0_um: Mapped[float] = mapped_column(Float)
    bbox_x1_um: Mapped[float] = mapped_column(Float)
    bbox_y1_um: Mapped[float] = mapped_column(Float)
    area_um2: Mapped[float] = mapped_column(Float)
    flake_class: Mapped[int] = mapped_column(Integer)
    score_class1: Mapped[float] = mapped_column(Float)
    score_class2: Mapped[float] = mapped_column(Float)
    score_class3: Mapped[float] = mapped_column(Float)
    score_any: Mapped[float] = mapped_column(Float)
    contrast_r: Mapped[float] = mapped_column(Float)
    contrast_g: Mapped[float] = mapped_column(Float)
    contrast_b: Mapped[float] = mapped_column(Float)
    contrast_class: Mapped[int] = mapped_column(Integer)
    axis_angle_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    axis_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    # schema 2: both axis measurements, and which one axis_angle_deg is ("cnn", "edges")
    axis_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    axis_cnn_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    axis_cnn_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    axis_edges_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    axis_edges_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    touches_border: Mapped[bool] = mapped_column(Boolean)
    thumbnail_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # schema 3: the outline (JSON [[x_um, y_um], ...]) and the shape figures read off it
    # (inference/shape.py), NULL for flakes logged before; what people add to a flake.
    outline_json: Mapped[str] = mapped_column(Text, default="")
    perimeter_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    length_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    width_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    aspect_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    inscribed_diameter_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    rect_length_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    rect_width_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    rect_angle_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    favourite: Mapped[bool] = mapped_column(Boolean, default=False)
    annotated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    scan: Mapped[Scan] = relationship(back_populates="flakes")

    def as_dict(self) -> dict:
        """Plain values, for JSON, CSV and events."""
        return row_dict(self)


class FlakeImage(Base):
    """An image of a flake taken on a revisit, at a higher magnification (schema 4)."""

    __tablename__ = "flake_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = _uuid()
    instrument: Mapped[str] = _instrument()
    flake_id: Mapped[int] = mapped_column(ForeignKey("flakes.id", ondelete="CASCADE"), index=True)
    objective: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    x_um: Mapped[float] = mapped_column(Float)  # the chip point at the image centre
    y_um: Mapped[float] = mapped_column(Float)
    z_um: Mapped[float] = mapped_column(Float)
    pixel_size_um: Mapped[float] = mapped_column(Float)
    focus: Mapped[str] = mapped_column(String(16))  # autofocus | calibrated
    registered: Mapped[bool] = mapped_column(Boolean)  # re-centred by registration
    shift_x_um: Mapped[float] = mapped_column(Float)  # what registration corrected
    shift_y_um: Mapped[float] = mapped_column(Float)
    taken_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    def as_dict(self) -> dict:
        return row_dict(self)
