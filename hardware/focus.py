"""Software autofocus and the chip's focus surface.

A chip is never flat under the objective: it sits tilted on the holder, bows a little, and
the stand drifts as it warms. At 5x the depth of field is a few micrometres, so a scan that
keeps one Z images the far corner blurred. flakescan therefore

1. focuses at a few points over the region (`autofocus`: a coarse Z sweep, then a fine one
   round the best coarse step, the peak placed by a parabola through log-sharpness, which is
   exact for a Gaussian focus curve);
2. fits a focus surface through them (`FocusSurface`: a plane, or a quadratic when the chip
   bends and there are points enough to tell), which the scan engine follows tile by tile;
3. refocuses during the scan (a fine sweep at the current tile) every so many tiles and when
   a tile's sharpness falls well below its neighbours', and moves the whole surface by what
   it finds (drift is a shift of the surface, not of its shape).

Every Z the sweeps ask for is clipped to the travel limits before it is commanded, and a
sweep that finds no peak (no structure in view, or the peak beyond the range) raises
`FocusError`: a scan never runs on a focus it did not find.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import HardwareError
from .microscope import Microscope

__all__ = [
    "FocusConfig",
    "FocusError",
    "FocusPoint",
    "FocusSurface",
    "FocusTracker",
    "autofocus",
    "focus_points",
    "map_focus",
    "sharpness",
]

log = logging.getLogger(__name__)


class FocusError(HardwareError):
    """Autofocus found no focus it can trust."""


class FocusConfig(BaseModel):
    """`[focus]`: autofocus before a scan, the focus surface, refocusing during it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = False  # focus map before every scan (a request may ask either way)
    points_per_axis: int = Field(3, ge=1, le=10)  # focus points: a grid over the region
    coarse_range_um: float = Field(40.0, gt=0)  # full width of the first sweep, round z now
    coarse_step_um: float = Field(5.0, gt=0)
    fine_range_um: float = Field(6.0, gt=0)
    fine_step_um: float = Field(1.0, gt=0)
    surface: Literal["plane", "quadratic", "auto"] = "auto"
    # auto: a quadratic when there are at least 6 points and the plane misses one by more.
    bend_threshold_um: float = Field(1.0, gt=0)
    refocus_every_tiles: int = Field(25, ge=0)  # 0: only when sharpness drops
    refocus_drop: float = Field(0.6, gt=0, lt=1)  # tile sharpness / median of the last tiles
    # A refocus with nothing in view is tried again at the next tile, the surface kept;
    # this many misses in a row fail the scan.
    max_refocus_misses: int = Field(10, ge=1)
    # Coarse sweep max / min below this: nothing in view to focus on (a tenth of the excess
    # for the fine sweep).
    min_peak_contrast: float = Field(1.08, gt=1)

    @model_validator(mode="after")
    def _steps_fit(self) -> FocusConfig:
        if self.coarse_step_um * 2 > self.coarse_range_um:
            raise ValueError(
                f"coarse_step_um ({self.coarse_step_um}) must be at most half of "
                f"coarse_range_um ({self.coarse_range_um})"
            )
        if self.fine_step_um * 2 > self.fine_range_um:
            raise ValueError(
                f"fine_step_um ({self.fine_step_um}) must be at most half of "
                f"fine_range_um ({self.fine_range_um})"
            )
        return self


def sharpness(image: np.ndarray) -> float:
    """Normalised gradient energy of the image's centre: mean squared difference of
    pixels two apart (Brenner) on the image binned 2 x 2, divided by the mean squared.
    Independent of exposure; largest in focus. Colour is summed to luminance first; the
    binning takes pixel noise, which does not change with focus, out of the measure (on
    the simulated 5x it raises the focus curve's max / min over +-20 um from 1.3-1.6 to 1.75).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., :3].sum(axis=-1)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    h, w = x.shape
    c = x[h // 8 : h - h // 8, w // 8 : w - w // 8]
    mean = float(c.mean())
    if mean <= 0:
        return 0.0
    gx = c[:, 2:] - c[:, :-2]
    gy = c[2:, :] - c[:-2, :]
    return float(((gx**2).mean() + (gy**2).mean()) / mean**2)


@dataclass(frozen=True)
class FocusPoint:
    x_um: float
    y_um: float
    z_um: float
    sharpness: float
    sweep: tuple[tuple[float, float], ...] = field(repr=False)  # (z, sharpness) in order

    def as_dict(self) -> dict:
        return {
            "x_um": round(self.x_um, 2),
            "y_um": round(self.y_um, 2),
            "z_um": round(self.z_um, 3),
            "sharpness": round(self.sharpness, 6),
            "snaps": len(self.sweep),
        }


def _sweep_positions(centre: float, full_range: float, step: float, mic: Microscope) -> list[float]:
    n = math.floor(full_range / 2 / step)
    lim = mic.limits
    zs = [centre + k * step for k in range(-n, n + 1)]
    return [z for z in zs if lim.z_min_um <= z <= lim.z_max_um]


def _sweep(mic: Microscope, zs: Sequence[float]) -> list[tuple[float, float]]:
    curve = []
    for z in zs:
        mic.move_z(z)
        curve.append((z, sharpness(mic.snap().image)))
    return curve


def _peak(curve: list[tuple[float, float]], what: str, min_contrast: float) -> tuple[float, float]:
    """(z, sharpness) at the curve's peak: a parabola through log-sharpness at the best
    point and its neighbours. Raises when there is no peak inside the sweep, or when the
    sweep's max / min is under `min_contrast` (a flat curve: noise, not focus)."""
    zs = np.array([z for z, _ in curve])
    s = np.array([v for _, v in curve])
    if len(s) < 3:
        raise FocusError(f"{what}: only {len(s)} Z positions inside the travel limits")
    if s.min() <= 0 or s.max() / s.min() < min_contrast:
        raise FocusError(
            f"{what}: sharpness varies only {s.max() / max(s.min(), 1e-12):.3f}x over "
            f"z {zs[0]:.1f}..{zs[-1]:.1f} um (nothing in view to focus on, or far out of focus)"
        )
    k = int(np.argmax(s))
    if k in (0, len(s) - 1):
        raise FocusError(
            f"{what}: sharpest at the end of the sweep (z {zs[k]:.1f} um of "
            f"{zs[0]:.1f}..{zs[-1]:.1f}); the focus lies beyond it"
        )
    # A least-squares parabola through log-sharpness of up to 5 points round the best:
    # exact for a Gaussian focus curve, and steadier than 3 points on a noisy one.
    lo, hi = max(k - 2, 0), min(k + 3, len(s))
    a, b, _ = np.polyfit(zs[lo:hi], np.log(s[lo:hi]), 2)
    step = float(np.median(np.diff(zs)))
    z_peak = -b / (2 * a) if a < 0 else zs[k]
    return float(np.clip(z_peak, zs[k] - step, zs[k] + step)), float(s[k])


def _fine_sweep(
    mic: Microscope, cfg: FocusConfig, z0: float, what: str
) -> tuple[float, float, list[tuple[float, float]]]:
    """The fine sweep round z0, walked on past its end while the sharpest Z is at an end
    (drift since the last focus can exceed half the fine range), up to the coarse range."""
    curve = _sweep(mic, _sweep_positions(z0, cfg.fine_range_um, cfg.fine_step_um, mic))
    lim, step = mic.limits, cfg.fine_step_um
    while curve:
        curve.sort()
        k = int(np.argmax([v for _, v in curve]))
        if 0 < k < len(curve) - 1:
            break
        edge, direction = (curve[0][0], -1) if k == 0 else (curve[-1][0], 1)
        if abs(edge - z0) + step > cfg.coarse_range_um / 2:
            break  # walked as far as a coarse sweep would have looked
        more = [edge + direction * step * i for i in (1, 2, 3)]
        more = [z for z in more if lim.z_min_um <= z <= lim.z_max_um]
        if not more:
            break
        curve += _sweep(mic, more)
    z, best = _peak(curve, what, 1 + (cfg.min_peak_contrast - 1) / 10)
    return z, best, curve


def autofocus(
    mic: Microscope, cfg: FocusConfig, *, z_start: float | None = None, fine_only: bool = False
) -> FocusPoint:
    """Focus at the current XY: coarse sweep round `z_start` (default: Z now), fine sweep
    round its peak (or only the fine sweep, to refocus), and leave Z at the focus."""
    x, y = mic.position()
    z0 = mic.z() if z_start is None else z_start
    where = f"autofocus at ({x:.0f}, {y:.0f}) um"
    curve: list[tuple[float, float]] = []
    if not fine_only:
        coarse = _sweep(mic, _sweep_positions(z0, cfg.coarse_range_um, cfg.coarse_step_um, mic))
        curve += coarse
        z0, _ = _peak(coarse, where + " (coarse)", cfg.min_peak_contrast)
    # The fine sweep spans about a tenth of the coarse one's range of sharpness.
    z, s, fine = _fine_sweep(mic, cfg, z0, where + " (fine)")
    curve += fine
    mic.move_z(z)
    return FocusPoint(x, y, z, s, tuple(curve))


def focus_points(
    region_um: tuple[float, float, float, float],
    per_axis: int,
    inside: Callable[[float, float], bool] | None = None,
) -> list[tuple[float, float]]:
    """A per_axis x per_axis grid over the region, inset from its edges by a sixth (the chip
    edge is a poor place to focus), keeping the points `inside` accepts (the chip's outline)."""
    x0, y0, x1, y1 = region_um
    if per_axis == 1:
        xs, ys = [(x0 + x1) / 2], [(y0 + y1) / 2]
    else:
        xs = list(np.linspace(x0 + (x1 - x0) / 6, x1 - (x1 - x0) / 6, per_axis))
        ys = list(np.linspace(y0 + (y1 - y0) / 6, y1 - (y1 - y0) / 6, per_axis))
    pts = [(float(x), float(y)) for y in ys for x in xs]
    return [p for p in pts if inside is None or inside(*p)]


@dataclass
class FocusSurface:
    """z(x, y) = a fitted plane or quadratic through focus points, plus a drift offset."""

    kind: str  # "plane" | "quadratic" | "flat" (one point)
    coefficients: tuple[float, ...]
    centre_um: tuple[float, float]  # coordinates are taken from here, in mm, for conditioning
    residual_um: float  # RMS misfit at the points it was fitted to
    points: list[FocusPoint]
    offset_um: float = 0.0  # what refocusing found since the fit (drift)

    @staticmethod
    def _terms(kind: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        one = np.ones_like(dx)
        if kind == "flat":
            return one[:, None]
        if kind == "plane":
            return np.stack([one, dx, dy], axis=1)
        return np.stack([one, dx, dy, dx * dx, dx * dy, dy * dy], axis=1)

    @classmethod
    def fit(cls, points: Sequence[FocusPoint], cfg: FocusConfig) -> FocusSurface:
        if not points:
            raise FocusError("no focus point was found: cannot fit a focus surface")
        xs = np.array([p.x_um for p in points])
        ys = np.array([p.y_um for p in points])
        zs = np.array([p.z_um for p in points])
        centre = (float(xs.mean()), float(ys.mean()))
        dx, dy = (xs - centre[0]) / 1000, (ys - centre[1]) / 1000

        def solve(kind: str) -> tuple[np.ndarray, float]:
            a = cls._terms(kind, dx, dy)
            coef, *_ = np.linalg.lstsq(a, zs, rcond=None)
            return coef, float(np.sqrt(np.mean((a @ coef - zs) ** 2)))

        kind = cfg.surface
        if len(points) < 3:
            kind = "flat"
        elif kind == "auto":
            coef, rms = solve("plane")
            worst = float(np.max(np.abs(cls._terms("plane", dx, dy) @ coef - zs)))
            kind = "quadratic" if len(points) >= 6 and worst > cfg.bend_threshold_um else "plane"
        elif kind == "quadratic" and len(points) < 6:
            raise FocusError(f"a quadratic focus surface needs 6 focus points, got {len(points)}")
        coef, rms = solve(kind)
        return cls(kind, tuple(float(c) for c in coef), centre, rms, list(points))

    def z_at(self, x_um: float, y_um: float) -> float:
        dx = np.array([(x_um - self.centre_um[0]) / 1000])
        dy = np.array([(y_um - self.centre_um[1]) / 1000])
        return float(self._terms(self.kind, dx, dy)[0] @ np.array(self.coefficients)) + (
            self.offset_um
        )

    @classmethod
    def from_description(cls, d: dict) -> FocusSurface:
        """The surface `describe()` wrote (a resumed scan follows the one it mapped; the
        focus points come back without their sweeps)."""
        points = [
            FocusPoint(p["x_um"], p["y_um"], p["z_um"], p["sharpness"], sweep=())
            for p in d.get("points", [])
        ]
        return cls(
            kind=d["kind"],
            coefficients=tuple(d["coefficients"]),
            centre_um=tuple(d["centre_um"]),  # type: ignore[arg-type]
            residual_um=d["residual_um"],
            points=points,
            offset_um=d.get("offset_um", 0.0),
        )

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "coefficients": [round(c, 5) for c in self.coefficients],
            "centre_um": [round(c, 2) for c in self.centre_um],
            "residual_um": round(self.residual_um, 3),
            "offset_um": round(self.offset_um, 3),
            "points": [p.as_dict() for p in self.points],
        }


def map_focus(
    mic: Microscope,
    cfg: FocusConfig,
    region_um: tuple[float, float, float, float],
    inside: Callable[[float, float], bool] | None = None,
    on_point: Callable[[FocusPoint], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> FocusSurface:
    """Autofocus at the points over the region and fit the surface. A point with nothing
    to focus on is skipped (and logged); the next one starts from the last focus found."""
    found: list[FocusPoint] = []
    failures: list[str] = []
    z_guess = mic.z()
    x0, y0, x1, y1 = region_um
    nudge = (x1 - x0) / (3 * cfg.points_per_axis), (y1 - y0) / (3 * cfg.points_per_axis)
    points = focus_points(region_um, cfg.points_per_axis, inside)
    for x, y in points:
        # A field with nothing in it cannot be focused: try a little aside, as a person
        # would, before giving the point up.
        for dx, dy in ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)):
            if cancelled():
                raise FocusError("focus map cancelled: the scan was stopped")
            px, py = x + dx * nudge[0], y + dy * nudge[1]
            if inside is not None and not inside(px, py):
                continue
            mic.move_xy(px, py)
            try:
                point = autofocus(mic, cfg, z_start=z_guess)
            except FocusError as exc:
                log.warning("%s", exc)
                failures.append(str(exc))
                continue
            found.append(point)
            z_guess = point.z_um
            if on_point is not None:
                on_point(point)
            break
    if len(found) < min(3, len(points)):
        raise FocusError(
            f"only {len(found)} focus points found, too few for a surface: " + "; ".join(failures)
        )
    return FocusSurface.fit(found, cfg)


class FocusTracker:
    """The focus surface during a scan: the Z of each tile, and when to refocus.

    The scan engine asks `z_for` before each tile and `refocus_due` after the move; the
    processing worker reports each tile's sharpness (`note_tile`, from another thread). A
    refocus is due every `refocus_every_tiles` tiles, and at the next tile after one whose
    sharpness fell below `refocus_drop` x the median of the previous tiles: that catches
    drift between the scheduled ones (the tile that showed it is already taken).
    """

    _HISTORY = 7

    def __init__(
        self,
        surface: FocusSurface,
        cfg: FocusConfig,
        on_refocus: Callable[[dict], None] | None = None,
    ) -> None:
        self.surface = surface
        self.cfg = cfg
        self.on_refocus = on_refocus
        self.refocus_count = 0
        self.misses = 0  # refocus attempts in a row that found nothing to focus on
        self._since = 0
        self._history: list[float] = []
        self._dropped = threading.Event()

    def z_for(self, x_um: float, y_um: float) -> float:
        return self.surface.z_at(x_um, y_um)

    def note_tile(self, sharpness_value: float) -> None:
        """A processed tile's sharpness; a drop against its predecessors asks for a refocus."""
        past = self._history[-self._HISTORY :]
        if len(past) >= 3 and sharpness_value < self.cfg.refocus_drop * float(np.median(past)):
            self._dropped.set()
        self._history.append(sharpness_value)

    def refocus_due(self) -> bool:
        self._since += 1
        every = self.cfg.refocus_every_tiles
        return self._dropped.is_set() or (every > 0 and self._since > every)

    def refocus(self, mic: Microscope) -> FocusPoint | None:
        """A fine sweep round the surface's Z here; the surface moves by what it finds.

        A field with nothing to focus on (the chip's edge, bare wafer) keeps the surface and
        Z as they were and tries again at the next tile; `max_refocus_misses` in a row
        raise FocusError, so a scan never runs on for long without a focus it has checked.
        """
        x, y = mic.position()
        expected = self.z_for(x, y)
        try:
            point = autofocus(mic, self.cfg, z_start=expected, fine_only=True)
        except FocusError as exc:
            self.misses += 1
            mic.move_z(expected)
            log.warning("refocus missed (%d in a row): %s", self.misses, exc)
            if self.on_refocus is not None:
                self.on_refocus({"found": False, "reason": str(exc), "misses": self.misses})
            if self.misses >= self.cfg.max_refocus_misses:
                raise FocusError(f"{self.misses} refocus attempts in a row failed: {exc}") from exc
            return None
        shift = point.z_um - expected
        self.surface.offset_um += shift
        self.refocus_count += 1
        self.misses = 0
        self._since = 0
        self._dropped.clear()
        self._history.clear()  # sharpness after a refocus is a new baseline
        if self.on_refocus is not None:
            self.on_refocus({"found": True, **point.as_dict(), "shift_um": round(shift, 3)})
        return point
