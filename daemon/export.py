"""`flakescan export`: flakes (one, a scan, or any query) as one archive a lab can share.

The archive holds the rows as CSV and JSON, each flake's thumbnail, its high-magnification
images where a revisit stored them, the overview map of every scan involved, and a
manifest with the query, the counts and a SHA-256 per file. It is written to a temporary
name and renamed, so an interrupted export never leaves a half archive under the name asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from flakescan.db.queries import FlakeQuery

from .output import format_flakes
from .overview import scan_folder

__all__ = ["export_archive", "highmag_folder"]


def highmag_folder(images_root: Path, scan_id: int, flake_id: int) -> Path:
    """Where a revisit keeps a flake's high-magnification images."""
    return scan_folder(images_root, scan_id) / "highmag" / f"flake-{flake_id}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_archive(
    rows: Sequence[dict], images_root: Path, out: Path, query: FlakeQuery | None = None
) -> dict:
    """Write the archive of `rows` (catalogue flakes) to `out` (.zip); returns the manifest."""
    if out.suffix != ".zip":
        raise ValueError(f"--out {str(out)!r}: the archive must be a .zip file")
    out.parent.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    missing: list[str] = []
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:

            def put(name: str, data: bytes) -> None:
                zf.writestr(name, data)
                files[name] = _sha256(data)

            put("flakes.csv", format_flakes(rows, "csv").encode())
            put("flakes.json", json.dumps(list(rows), indent=1).encode())
            for r in rows:
                thumb = Path(r.get("thumbnail_path") or "")
                if thumb.is_file():
                    put(f"thumbnails/flake-{r['id']}.png", thumb.read_bytes())
                else:
                    missing.append(f"thumbnail of flake {r['id']} ({thumb})")
                folder = highmag_folder(images_root, r["scan_id"], r["id"])
                for image in sorted(folder.glob("*")) if folder.is_dir() else []:
                    if image.is_file():
                        put(f"highmag/flake-{r['id']}/{image.name}", image.read_bytes())
            for scan_id in sorted({r["scan_id"] for r in rows}):
                overview = scan_folder(images_root, scan_id) / "overview.png"
                if overview.is_file():
                    put(f"overview/scan-{scan_id}.png", overview.read_bytes())
                else:
                    missing.append(f"overview of scan {scan_id}")
            manifest = {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "flakescan": version("flakescan"),
                "query": asdict(query) if query else None,
                "flakes": len(rows),
                "scans": sorted({r["scan_id"] for r in rows}),
                "files": files,
                "missing": missing,
            }
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=list))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest
