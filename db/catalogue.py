"""Writing the catalogue. Only the daemon writes, through one `CatalogueWriter`.

Each tile is one transaction (its row and its flakes together), so a scan cut short by a
fault or a kill keeps every tile it finished, and never half of one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from flakescan.inference.pipeline import AXIS_FIELDS, Hit, TileResult

from .models import DEFAULT_INSTRUMENT, Flake, FlakeImage, Scan, Tile, row_dict, utcnow

__all__ = ["CatalogueWriter"]


class CatalogueWriter:
    """Scans, tiles and flakes into the database; the daemon's one writer.

    Every call is its own session and transaction, so the scan worker's tiles and the
    control thread's annotations interleave (SQLite serialises the writes).

    Every row it adds carries `instrument` (the daemon's config.instrument), so one
    catalogue can hold several microscopes' scans; each row gets its uuid on insert.
    """

    def __init__(self, engine: Engine, instrument: str = DEFAULT_INSTRUMENT) -> None:
        self.engine = engine
        self.instrument = instrument

    def mark_interrupted(self) -> list[int]:
        """Scans still 'running' belong to a daemon that died: mark them interrupted."""
        with Session(self.engine) as s, s.begin():
            ids = list(s.scalars(select(Scan.id).where(Scan.status == "running")))
            if ids:
                s.execute(
                    update(Scan)
                    .where(Scan.id.in_(ids))
                    .values(
                        status="interrupted", reason="daemon stopped mid-scan", finished_at=utcnow()
                    )
                )
        return ids

    def start_scan(
        self,
        *,
        instrument: str | None = None,
        chip_id: str,
        name: str,
        region_um: tuple[float, float, float, float],
        overlap_pct: float,
        pixel_size_um: float,
        fov_um: tuple[float, float],
        tiles_planned: int,
        classifier_model: str,
        settings: dict,
    ) -> int:
        """A new scan, `running`; `instrument` defaults to the writer's."""
        with Session(self.engine) as s, s.begin():
            scan = Scan(
                instrument=instrument or self.instrument,
                chip_id=chip_id,
                name=name,
                status="running",
                region_x0_um=region_um[0],
                region_y0_um=region_um[1],
                region_x1_um=region_um[2],
                region_y1_um=region_um[3],
                overlap_pct=overlap_pct,
                pixel_size_um=pixel_size_um,
                fov_width_um=fov_um[0],
                fov_height_um=fov_um[1],
                tiles_planned=tiles_planned,
                classifier_model=classifier_model,
                settings_json=json.dumps(settings, default=str),
            )
            s.add(scan)
            s.flush()
            return scan.id

    def record_tile(
        self,
        *,
        scan_id: int,
        chip_id: str,
        tile: TileResult,
        z_um: float,
        acquired_at: datetime,
        hits: Sequence[Hit],
        thumbnails: Sequence[str],
        updates: Sequence[tuple[int, Hit]] = (),
    ) -> tuple[list[dict], list[dict]]:
        """Store a processed tile, its new flakes, and what it adds to flakes already
        logged (a flake larger than the overlap, seen again from this tile), in one
        transaction. Returns the new rows and the updated rows.

        Idempotent: a tile the scan already holds (a resumed scan asked again) is left as
        it is and nothing is added (([], []) is returned), so no flake is ever logged twice.
        """
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            done = select(Tile.id).where(Tile.scan_id == scan_id, Tile.tile_index == tile.index)
            if s.scalar(done) is not None:
                return [], []
            bg = (*tile.background, 0.0, 0.0, 0.0)[:3]
            row = Tile(
                instrument=self.instrument,
                scan_id=scan_id,
                tile_index=tile.index,
                x_um=tile.x_um,
                y_um=tile.y_um,
                z_um=z_um,
                acquired_at=acquired_at,
                candidates=tile.n_candidates,
                hits=len(hits),
                processing_ms=tile.timings_ms.get("total", 0.0),
                background_r=bg[0],
                background_g=bg[1],
                background_b=bg[2],
                skipped_reason=tile.skipped_reason or "",
                background_fraction=tile.background_fraction,
            )
            s.add(row)
            s.flush()
            flakes = [
                Flake(
                    instrument=self.instrument,
                    scan_id=scan_id,
                    tile_id=row.id,
                    chip_id=chip_id,
                    thumbnail_path=thumb,
                )
                for thumb in thumbnails
            ]
            if len(flakes) != len(hits):
                raise ValueError(f"{len(hits)} hits but {len(thumbnails)} thumbnails")
            for flake, hit in zip(flakes, hits, strict=True):
                _set_measurements(flake, hit)
            s.add_all(flakes)
            updated = []
            for flake_id, hit in updates:
                flake = s.get(Flake, flake_id)
                if flake is None or flake.scan_id != scan_id:
                    raise KeyError(f"no flake {flake_id} in scan {scan_id} to update")
                _set_measurements(flake, hit)
                updated.append(flake)
            s.execute(
                update(Scan)
                .where(Scan.id == scan_id)
                .values(
                    tiles_done=Scan.tiles_done + 1, flakes_found=Scan.flakes_found + len(flakes)
                )
            )
            s.flush()
            return [f.as_dict() for f in flakes], [f.as_dict() for f in updated]

    def reopen_scan(self, scan_id: int, resumable: tuple[str, ...]) -> dict:
        """Set an unfinished scan running again (a resume), if its status is one of
        `resumable`; the resume is noted in its settings. Returns the scan's row; raises
        KeyError for no such scan, ValueError (naming the status) for one not resumable."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            scan = s.get(Scan, scan_id)
            if scan is None:
                raise KeyError(f"no scan {scan_id}")
            if scan.status not in resumable:
                raise ValueError(
                    f"scan {scan_id} is {scan.status}; only a scan that is "
                    f"{' or '.join(resumable)} can be resumed"
                )
            resumes = json.loads(scan.settings_json or "{}").get("resumes", [])
            note = {"at": utcnow().isoformat() + "Z", "status": scan.status, "reason": scan.reason}
            _merge_settings(scan, {"resumes": [*resumes, note]})
            scan.status, scan.reason, scan.finished_at = "running", "", None
            s.flush()
            return row_dict(scan)

    def add_scan_settings(self, scan_id: int, extra: dict) -> None:
        """Merge what the scan learnt as it started (its focus surface) into its settings."""
        with Session(self.engine) as s, s.begin():
            scan = s.get(Scan, scan_id)
            if scan is None:
                raise KeyError(f"no scan {scan_id}")
            _merge_settings(scan, extra)

    def replan_scan(
        self,
        scan_id: int,
        region_um: tuple[float, float, float, float],
        tiles_planned: int,
        extra_settings: dict,
    ) -> None:
        """The scan's tiles, planned again once its chip was found (a smaller region)."""
        with Session(self.engine) as s, s.begin():
            scan = s.get(Scan, scan_id)
            if scan is None:
                raise KeyError(f"no scan {scan_id}")
            scan.region_x0_um, scan.region_y0_um, scan.region_x1_um, scan.region_y1_um = region_um
            scan.tiles_planned = tiles_planned
            _merge_settings(scan, extra_settings)

    def annotate(
        self,
        flake_id: int,
        *,
        notes: str | None = None,
        append_note: bool = False,
        used: bool | None = None,
        favourite: bool | None = None,
    ) -> dict:
        """What a person adds to a flake: notes (replaced, or appended as a new line), the
        "used" flag (taken for a device) and the favourite flag. Returns the row."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            flake = s.get(Flake, flake_id)
            if flake is None:
                raise KeyError(f"no flake with id {flake_id}")
            if notes is not None:
                old = flake.notes or ""
                flake.notes = f"{old}\n{notes}" if append_note and old else notes
            if used is not None:
                flake.used = used
            if favourite is not None:
                flake.favourite = favourite
            flake.annotated_at = utcnow()
            s.flush()
            return flake.as_dict()

    def add_flake_image(self, flake_id: int, image: dict) -> dict:
        """Link an image taken on a revisit (`daemon.revisit.RevisitResult.as_dict()`)."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            if s.get(Flake, flake_id) is None:
                raise KeyError(f"no flake with id {flake_id}")
            row = FlakeImage(
                instrument=self.instrument,
                flake_id=flake_id,
                objective=image["objective"],
                path=image["image_path"],
                x_um=image["x_um"],
                y_um=image["y_um"],
                z_um=image["z_um"],
                pixel_size_um=image["pixel_size_um"],
                focus=image["focus"],
                registered=image["registered"],
                shift_x_um=image["shift_um"][0],
                shift_y_um=image["shift_um"][1],
            )
            s.add(row)
            s.flush()
            return row.as_dict()

    def finish_scan(self, scan_id: int, status: str, reason: str = "") -> dict:
        """Close a scan with its final status; returns the scan's summary row."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            scan = s.get(Scan, scan_id)
            if scan is None:
                raise KeyError(f"no scan {scan_id}")
            scan.status = status
            scan.reason = reason
            scan.finished_at = utcnow()
            return {
                "scan_id": scan.id,
                "status": scan.status,
                "reason": scan.reason,
                "tiles_planned": scan.tiles_planned,
                "tiles_done": scan.tiles_done,
                "flakes_found": scan.flakes_found,
            }


def _merge_settings(scan: Scan, extra: dict) -> None:
    """What the scan learnt as it ran (focus surface, chip outline) added to its settings."""
    scan.settings_json = json.dumps(
        {**json.loads(scan.settings_json or "{}"), **extra}, default=str
    )


def _set_measurements(flake: Flake, h: Hit) -> None:
    """Copy what the pipeline measured of a hit onto its row."""
    flake.x_um, flake.y_um = h.x_um, h.y_um
    flake.bbox_x0_um, flake.bbox_y0_um, flake.bbox_x1_um, flake.bbox_y1_um = h.bbox_um
    flake.area_um2 = h.area_um2
    flake.flake_class = h.flake_class
    flake.score_class1, flake.score_class2, flake.score_class3 = h.scores[:3]
    flake.score_any = h.scores[-1]
    rgb = (*h.contrast, h.contrast[0], h.contrast[0])[:3] if len(h.contrast) < 3 else h.contrast
    flake.contrast_r, flake.contrast_g, flake.contrast_b = rgb[:3]
    flake.contrast_class = h.contrast_class
    for name in AXIS_FIELDS:
        setattr(flake, name, getattr(h, name))
    flake.touches_border = h.touches_border
    flake.outline_json = json.dumps([list(p) for p in h.outline_um])
    for name, value in (h.shape.as_columns() if h.shape else {}).items():
        setattr(flake, name, value)
