"""Printing flakes for people (a table) and for programs (CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "TABLE_COLUMNS", "err", "format_flakes"]

# The command line's exit codes: success, failure (scan failed, daemon unreachable, start-up
# fault), bad input (configuration, arguments, refused request).
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def err(msg: str) -> None:
    """A command's error line, on stderr."""
    print(f"flakescan: {msg}", file=sys.stderr)


# (column, header, format) shown in the table; CSV and JSON carry every column.
TABLE_COLUMNS = (
    ("id", "id", "{}"),
    ("scan_id", "scan", "{}"),
    ("flake_class", "class", "{}"),
    ("x_um", "x um", "{:.1f}"),
    ("y_um", "y um", "{:.1f}"),
    ("area_um2", "area um2", "{:.0f}"),
    ("contrast_r", "R contrast", "{:.3f}"),
    ("score_any", "score", "{:.2f}"),
    ("axis_angle_deg", "axis deg", "{:.1f}"),
    ("axis_confidence", "axis conf", "{:.2f}"),
    ("rect_width_um", "rect w um", "{:.1f}"),
    ("rect_length_um", "rect l um", "{:.1f}"),
    ("aspect_ratio", "aspect", "{:.1f}"),
    ("favourite", "fav", "{}"),
    ("used", "used", "{}"),
)
_FLAG = {True: "yes", False: ""}


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return _FLAG[value]
    return fmt.format(value)


def format_flakes(rows: Sequence[dict], fmt: str, console: Console | None = None) -> str:
    """Render flake rows as 'table', 'csv' or 'json' text."""
    if fmt == "json":
        return json.dumps(list(rows), indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"--format {fmt!r}: expected table, csv or json")
    table = Table(title=f"{len(rows)} flakes")
    for _, header, _ in TABLE_COLUMNS:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(*(_cell(r.get(key), f) for key, _, f in TABLE_COLUMNS))
    width = max(console.width if console else 0, 150)
    out = Console(file=io.StringIO(), width=width, force_terminal=False)
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined]
