"""Powder-XRD patterns from two-column text files: .xy, .xye (with sigma), .csv, .dat, .txt.

Diffractometer software exports many dialects of "2-theta, intensity" text: comment lines
(#, ;, !), a header row, commas or semicolons or whitespace, descending angles. This reader
takes them all and refuses anything it would have to guess at, naming the file, the line and
the value, so a wrong column never becomes a silently wrong answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["XrdPattern", "XrdReadError", "read_xrd"]

MIN_POINTS = 50
_ANGLE_NAMES = re.compile(r"^(2[ -]?th(eta)?|2θ|two[_ ]?theta|angle|pos(ition)?)", re.I)
_INTENSITY_NAMES = re.compile(r"^(i(ntensity)?|counts?|cps|y|yobs|iobs)", re.I)


class XrdReadError(ValueError):
    """A pattern file that cannot be read unambiguously (the message says where and why)."""


@dataclass(frozen=True)
class XrdPattern:
    """A measured pattern: 2-theta (deg, increasing), intensity, optional sigma."""

    two_theta: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    source: str


def _split(line: str) -> list[str]:
    return [w for w in re.split(r"[,;\s]+", line.strip()) if w]


def _header_columns(words: list[str], path: Path, lineno: int) -> tuple[int, int]:
    angle = next((i for i, w in enumerate(words) if _ANGLE_NAMES.match(w)), None)
    inten = next((i for i, w in enumerate(words) if _INTENSITY_NAMES.match(w)), None)
    if angle is None or inten is None:
        raise XrdReadError(
            f"{path}:{lineno}: header {words!r} names no 2-theta column and intensity column "
            "(expected e.g. '2theta,intensity')"
        )
    return angle, inten


def read_xrd(path: str | Path) -> XrdPattern:
    """Read a two-column (or xye three-column) pattern; columns are 2-theta then intensity
    unless a header row names them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"XRD pattern file not found: {path}")
    cols: tuple[int, int] = (0, 1)
    sigma_col: int | None = 2 if path.suffix.lower() == ".xye" else None
    rows: list[list[float]] = []
    text = path.read_text(errors="replace")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;!'\"":
            continue
        words = _split(line)
        try:
            values = [float(w) for w in words]
        except ValueError:
            if rows:
                raise XrdReadError(f"{path}:{lineno}: not a number in data line {line!r}") from None
            cols = _header_columns(words, path, lineno)
            sigma_col = next(
                (i for i, w in enumerate(words) if re.match(r"^(sigma|esd|err|e?si?g)", w, re.I)),
                sigma_col,
            )
            continue
        need = max(*cols, sigma_col or 0) + 1
        if len(values) < need:
            raise XrdReadError(
                f"{path}:{lineno}: {len(values)} column(s) in {line!r}, need {need} "
                "(2-theta and intensity)"
            )
        rows.append(values)
    if len(rows) < MIN_POINTS:
        raise XrdReadError(f"{path}: {len(rows)} data points, need at least {MIN_POINTS}")
    data = np.array([[r[cols[0]], r[cols[1]], r[sigma_col] if sigma_col else 0] for r in rows])
    if not np.all(np.isfinite(data)):
        bad = int(np.argwhere(~np.isfinite(data))[0][0])
        raise XrdReadError(f"{path}: data point {bad + 1} is not finite: {rows[bad]}")
    tt, inten, sig = data.T
    order = np.argsort(tt, kind="stable")
    tt, inten, sig = tt[order], inten[order], sig[order]
    if np.any(np.diff(tt) <= 0):
        i = int(np.argmax(np.diff(tt) <= 0))
        raise XrdReadError(f"{path}: 2-theta {tt[i]:g} appears twice; one value per angle")
    if tt[0] < 0 or tt[-1] > 180:
        raise XrdReadError(f"{path}: 2-theta runs {tt[0]:g}-{tt[-1]:g} deg, outside 0-180")
    return XrdPattern(tt, inten, sig if sigma_col is not None else None, str(path))
