"""The per-set metrics rows the Markdown evaluation reports share."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["metric_rows"]


def metric_rows(
    metrics: dict,
    columns: Sequence[str],
    digits: int,
    sets: Sequence[str] = ("val", "test"),
    missing: str = "-",
) -> list[str]:
    """`| set | value | ... |` for each evaluated set in `metrics` (a card's), floats to
    `digits` places, a column the set lacks as `missing`; sets not evaluated are left out."""
    rows = []
    for name in sets:
        m = metrics.get(name)
        if not m:
            continue
        cells = [m.get(c, missing) for c in columns]
        rows.append(
            f"| {name} | "
            + " | ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in cells)
            + " |"
        )
    return rows
