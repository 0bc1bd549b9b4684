"""The catalogue's commands: `query`, `flake` (notes and flags), `export`, `overview`,
`db backup`.

Reading goes straight to the database (read-only; many readers beside the daemon). Notes
and flags are writes, so they go through the running daemon, the catalogue's one writer;
`--db` writes a catalogue directly when no daemon has it open (one copied to an office PC).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import images_dir, load_config, resolve_state_dir
from .keys_cli import add_client_security_options
from .output import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from .output import err as _err

__all__ = ["add_catalogue_commands", "database_url"]


def database_url(args: argparse.Namespace) -> str:
    from flakescan.db.engine import sqlite_url

    if args.db:
        return args.db if "://" in args.db else sqlite_url(args.db)
    cfg = load_config(args.config)
    return cfg.database_url(resolve_state_dir(cfg, args.state_dir))


def images_root(args: argparse.Namespace) -> Path:
    """The folder of the scans' pictures: beside a --db file, else the state directory's."""
    if args.db and "://" not in args.db:
        return images_dir(Path(args.db).expanduser().resolve().parent)
    cfg = load_config(args.config)
    return images_dir(resolve_state_dir(cfg, args.state_dir))


def _query(args: argparse.Namespace):
    from flakescan.db.queries import FlakeQuery

    lo, hi = args.axis_range if args.axis_range else (None, None)
    return FlakeQuery(
        scan_id=args.scan,
        chip_id=args.chip_id,
        flake_class=args.flake_class,
        min_area_um2=args.min_area,
        max_area_um2=args.max_area,
        min_aspect_ratio=args.min_aspect,
        max_aspect_ratio=args.max_aspect,
        min_rect_width_um=args.min_rect_width,
        min_rect_length_um=args.min_rect_length,
        min_inscribed_diameter_um=args.min_inscribed,
        axis_min_deg=lo,
        axis_max_deg=hi,
        used=args.used,
        favourite=args.favourite,
        notes_contain=args.notes,
        ids=tuple(args.flake) if getattr(args, "flake", None) else None,
        order_by=args.order_by,
        limit=args.limit,
    )


def _find(args: argparse.Namespace) -> tuple[Any, list[dict]]:
    from flakescan.db.engine import open_database
    from flakescan.db.queries import find_flakes

    q = _query(args)
    engine = open_database(database_url(args), create=False)
    try:
        return q, find_flakes(engine, q)
    finally:
        engine.dispose()


def cmd_query(args: argparse.Namespace) -> int:
    """Query the flake catalogue (read-only) as a table, CSV or JSON."""
    from rich.console import Console

    from .output import format_flakes

    _, rows = _find(args)
    sys.stdout.write(format_flakes(rows, args.format, Console(highlight=False)))
    return EXIT_OK


def cmd_flake(args: argparse.Namespace) -> int:
    """Show a flake, or set its notes, "used" and favourite flags."""
    changes = {
        k: v
        for k, v in (("notes", args.note), ("used", args.used), ("favourite", args.favourite))
        if v is not None
    }
    if not changes:
        from flakescan.db.engine import open_database
        from flakescan.db.queries import get_flake

        engine = open_database(database_url(args), create=False)
        try:
            row = get_flake(engine, args.flake_id)
        finally:
            engine.dispose()
        if row is None:
            _err(f"no flake with id {args.flake_id}")
            return EXIT_USAGE
        print(json.dumps(row, indent=1))
        return EXIT_OK
    if args.append and args.note is None:
        _err("--append needs --note TEXT")
        return EXIT_USAGE
    if args.db:
        return _annotate_directly(args, changes)
    from .client import ControlClient, DaemonUnreachable
    from .keys_cli import configure_client

    cfg = load_config(args.config)
    configure_client(args, cfg)
    params = {"flake_id": args.flake_id, "append_note": args.append, **changes}
    try:
        answer = ControlClient(args.control or cfg.zmq.control, timeout_s=args.timeout).request(
            "flake_annotate", params
        )
    except DaemonUnreachable as exc:
        _err(
            f"{exc} (notes and flags go through the daemon; --db FILE writes a catalogue "
            "no daemon has open)"
        )
        return EXIT_FAIL
    print(json.dumps(answer, indent=1, default=str))
    return EXIT_OK if answer.get("success") else EXIT_USAGE


def _annotate_directly(args: argparse.Namespace, changes: dict) -> int:
    from flakescan.db.catalogue import CatalogueWriter
    from flakescan.db.engine import open_database

    engine = open_database(database_url(args), create=False)
    try:
        row = CatalogueWriter(engine).annotate(args.flake_id, append_note=args.append, **changes)
    except KeyError as exc:
        _err(str(exc).strip("'\""))
        return EXIT_USAGE
    finally:
        engine.dispose()
    print(json.dumps(row, indent=1))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Export flakes (--flake IDs, --scan N, or any query) as a .zip: CSV, JSON,
    thumbnails, high-magnification images, overview maps and a manifest."""
    from .export import export_archive

    query, rows = _find(args)
    if not rows:
        _err("the query matches no flakes: nothing exported")
        return EXIT_USAGE
    manifest = export_archive(rows, images_root(args), args.out, query)
    print(
        json.dumps(
            {
                "archive": str(args.out),
                "flakes": manifest["flakes"],
                "files": len(manifest["files"]) + 1,
                "missing": manifest["missing"],
            },
            indent=1,
        )
    )
    return EXIT_OK


def cmd_overview(args: argparse.Namespace) -> int:
    """Redraw a scan's overview map from its tile previews and the catalogue; with
    --ome-tiff, also stitch its kept full-resolution tiles into a pyramidal OME-TIFF."""
    from flakescan.db.engine import open_database

    from .overview import render_overview, scan_folder, write_ome_tiff

    engine = open_database(database_url(args), create=False)
    folder = scan_folder(images_root(args), args.scan_id)
    try:
        try:
            info = render_overview(engine, args.scan_id, folder, args.out, args.um_per_px)
        except KeyError as exc:
            _err(str(exc).strip("'\""))
            return EXIT_USAGE
        doc: dict[str, Any] = {
            "overview": str(info.path),
            "size_px": list(info.size_px),
            "um_per_px": round(info.um_per_px, 3),
            "tiles": info.tiles,
            "tiles_missing": info.tiles_missing,
            "flakes": info.flakes,
        }
        if args.ome_tiff is not None:
            doc["ome_tiff"] = write_ome_tiff(engine, args.scan_id, folder, args.ome_tiff)
    finally:
        engine.dispose()
    print(json.dumps(doc, indent=1))
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    """Catalogue maintenance: `db backup OUT` copies the live SQLite catalogue consistently
    (SQLite's online backup, checked before it takes its name); `db current` says which
    migration the catalogue is at; `db upgrade` applies the pending ones (the daemon does
    at start)."""
    from flakescan.db.backup import backup_sqlite
    from flakescan.db.engine import SchemaVersionError, open_database
    from flakescan.db.migrate import describe

    url = database_url(args)
    if args.action in ("current", "upgrade"):
        if args.action == "upgrade":
            try:
                open_database(url, create=False).dispose()
            except SchemaVersionError as exc:
                _err(str(exc))
                return EXIT_FAIL
        print(json.dumps(describe(url), indent=1))
        return EXIT_OK
    if args.out is None:
        _err("db backup: give the backup file, e.g. flakescan db backup /backups/flakes.db")
        return EXIT_USAGE
    if not url.startswith("sqlite:///"):
        _err(f"db backup copies SQLite catalogues; {url.split('://')[0]} has its own tools")
        return EXIT_USAGE
    print(json.dumps(backup_sqlite(Path(url.removeprefix("sqlite:///")), args.out), indent=1))
    return EXIT_OK


def _add_filters(sp: argparse.ArgumentParser) -> None:
    from flakescan.db.queries import ORDERS

    sp.add_argument("--scan", type=int)
    sp.add_argument("--chip-id")
    sp.add_argument("--class", dest="flake_class", type=int, choices=[1, 2, 3])
    sp.add_argument("--min-area", type=float, help="um2")
    sp.add_argument("--max-area", type=float, help="um2")
    sp.add_argument("--min-aspect", type=float, help="length / width of the bounding rectangle")
    sp.add_argument("--max-aspect", type=float)
    sp.add_argument(
        "--min-rect-width", type=float, help="um: the largest rectangle inside, its short side"
    )
    sp.add_argument("--min-rect-length", type=float, help="um: that rectangle's long side")
    sp.add_argument("--min-inscribed", type=float, help="um: the largest circle inside")
    sp.add_argument(
        "--axis-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="crystal axis window, deg mod 30 (may wrap: 28 2)",
    )
    flags = sp.add_mutually_exclusive_group()
    flags.add_argument("--used", dest="used", action="store_const", const=True, default=None)
    flags.add_argument("--unused", dest="used", action="store_const", const=False)
    sp.add_argument("--favourite", action="store_const", const=True, default=None)
    sp.add_argument("--notes", help="notes containing this text")
    sp.add_argument("--order-by", choices=sorted(ORDERS), default="area")
    sp.add_argument("--limit", type=int)


def _add_db(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--db", help="database file or SQLAlchemy URL (default: from config)")
    sp.add_argument("--state-dir", type=Path)


def add_catalogue_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the catalogue's subcommands with the CLI's `add(name, func)`."""
    sp = add("query", cmd_query)
    _add_db(sp)
    _add_filters(sp)
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table")

    sp = add("flake", cmd_flake)
    _add_db(sp)
    sp.add_argument("flake_id", type=int)
    sp.add_argument("--note", help="set the notes (with --append: add a line)")
    sp.add_argument("--append", action="store_true")
    used = sp.add_mutually_exclusive_group()
    used.add_argument("--used", dest="used", action="store_const", const=True, default=None)
    used.add_argument("--unused", dest="used", action="store_const", const=False)
    fav = sp.add_mutually_exclusive_group()
    fav.add_argument(
        "--favourite", dest="favourite", action="store_const", const=True, default=None
    )
    fav.add_argument("--no-favourite", dest="favourite", action="store_const", const=False)
    sp.add_argument("--control", help="control endpoint (default: from config)")
    add_client_security_options(sp)
    sp.add_argument("--timeout", type=float, default=10.0)

    sp = add("export", cmd_export)
    _add_db(sp)
    _add_filters(sp)
    sp.add_argument("--flake", type=int, action="append", help="a flake id (repeatable)")
    sp.add_argument("--out", type=Path, required=True, help="the archive, .zip")

    sp = add("db", cmd_db)
    _add_db(sp)
    sp.add_argument("action", choices=["backup", "current", "upgrade"])
    sp.add_argument("out", type=Path, nargs="?", help="db backup: the backup file")

    sp = add("overview", cmd_overview)
    _add_db(sp)
    sp.add_argument("scan_id", type=int)
    sp.add_argument("--out", type=Path, help="PNG (default: the scan's overview.png)")
    sp.add_argument("--um-per-px", type=float, help="scale (default: the scan's)")
    sp.add_argument("--ome-tiff", type=Path, help="also write the full-resolution mosaic here")
