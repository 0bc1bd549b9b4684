"""Powder-XRD phase identification with anomaly detection, served from an ONNX model.

The model's card fixes the 2-theta grid it was trained on; a measured pattern is brought
onto that grid (binned if it was measured finer, interpolated if coarser), min-max
normalised, and run once. The output row is [class logits..., novelty distance]. A pattern is
an anomaly when the anomaly class wins (mixtures and foreign phases the model was trained
on) or when the novelty distance exceeds the card's threshold (inputs unlike anything it was
trained on); otherwise it is the winning phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import InferenceBackend
from .registry import ModelEntry
from .xrd_readers import XrdPattern

__all__ = [
    "XRD_TASK",
    "XrdGrid",
    "XrdIdentifier",
    "XrdResult",
    "normalise_pattern",
    "resample_to_grid",
]

XRD_TASK = "xrd-phase"
ANOMALY = "anomaly"


@dataclass(frozen=True)
class XrdGrid:
    """The 2-theta sampling a model reads: start (deg), step (deg), number of points."""

    start: float
    step: float
    points: int

    @property
    def two_theta(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.points)

    @property
    def end(self) -> float:
        return self.start + self.step * (self.points - 1)


def resample_to_grid(pattern: XrdPattern, grid: XrdGrid) -> np.ndarray:
    """Intensities on `grid`: the mean of the points in each grid step when the measurement
    is finer than the grid (keeps every count, no aliasing), linear interpolation otherwise.

    Refuses a pattern that does not cover the grid: padding a missing range would show the
    model a pattern no diffractometer made.
    """
    tt, inten = pattern.two_theta, pattern.intensity
    half = grid.step / 2
    if tt[0] > grid.start + half or tt[-1] < grid.end - half:
        raise ValueError(
            f"{pattern.source}: 2-theta range {tt[0]:.2f}-{tt[-1]:.2f} deg does not cover the "
            f"model's {grid.start:.2f}-{grid.end:.2f} deg"
        )
    measured_step = float(np.median(np.diff(tt)))
    centres = grid.two_theta
    if measured_step < 0.75 * grid.step:
        edges = np.append(centres - half, centres[-1] + half)
        idx = np.searchsorted(edges, tt, side="right") - 1
        inside = (idx >= 0) & (idx < grid.points)
        sums = np.bincount(idx[inside], weights=inten[inside], minlength=grid.points)
        counts = np.bincount(idx[inside], minlength=grid.points)
        out = np.interp(centres, tt, inten)  # any empty bin falls back to interpolation
        filled = counts > 0
        out[filled] = sums[filled] / counts[filled]
        return out
    return np.interp(centres, tt, inten)


def normalise_pattern(y: np.ndarray, source: str = "pattern") -> np.ndarray:
    """Min-max to [0, 1] as float32: count rate and exposure time do not name a phase."""
    y = np.asarray(y, dtype=np.float64)
    lo, hi = float(np.min(y)), float(np.max(y))
    if not hi > lo:
        raise ValueError(f"{source}: intensity is constant ({lo:g}); no peaks to identify")
    return ((y - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class XrdResult:
    source: str
    phase: str | None  # None: anomaly
    anomaly: bool
    reason: str
    probabilities: dict[str, float]
    novelty: float
    novelty_threshold: float

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "phase": self.phase,
            "anomaly": self.anomaly,
            "reason": self.reason,
            "probabilities": {k: round(v, 5) for k, v in self.probabilities.items()},
            "novelty": round(self.novelty, 4),
            "novelty_threshold": round(self.novelty_threshold, 4),
        }


class XrdIdentifier:
    """Phase or anomaly for measured patterns, with a model from the registry."""

    def __init__(self, entry: ModelEntry, backend: InferenceBackend) -> None:
        card = entry.card
        if card.task != XRD_TASK:
            raise ValueError(f"model {entry.name!r} is a {card.task!r} model, not {XRD_TASK!r}")
        if card.input.two_theta_deg is None or card.threshold is None:
            raise ValueError(f"model card of {entry.name!r} has no 2-theta grid or threshold")
        start, step, points = card.input.two_theta_deg
        self.grid = XrdGrid(start, step, int(points))
        self.classes = list(card.output.classes)
        self.threshold = float(card.threshold)
        self.entry = entry
        self.backend = backend

    def prepare(self, pattern: XrdPattern) -> np.ndarray:
        return normalise_pattern(resample_to_grid(pattern, self.grid), pattern.source)

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(softmax probabilities (n, C), novelty distances (n,)) of prepared patterns."""
        out = self.backend.run(np.ascontiguousarray(batch, dtype=np.float32))
        logits, novelty = out[:, :-1], out[:, -1]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), novelty

    def decide(self, probs: np.ndarray, novelty: float, source: str) -> XrdResult:
        top = self.classes[int(np.argmax(probs))]
        p = {c: float(v) for c, v in zip(self.classes, probs, strict=True)}
        if top == ANOMALY:
            anomaly, reason, phase = True, "the anomaly class wins", None
        elif novelty > self.threshold:
            anomaly, phase = True, None
            reason = f"unlike every trained phase (novelty {novelty:.2f} > {self.threshold:.2f})"
        else:
            anomaly, reason, phase = False, "phase identified", top
        return XrdResult(source, phase, anomaly, reason, p, float(novelty), self.threshold)

    def identify(self, patterns: list[XrdPattern]) -> list[XrdResult]:
        batch = np.stack([self.prepare(p) for p in patterns])
        probs, novelty = self.scores(batch)
        return [
            self.decide(pr, float(nv), pat.source)
            for pr, nv, pat in zip(probs, novelty, patterns, strict=True)
        ]


def reference_peaks(entry: ModelEntry, phase: str) -> list[tuple[float, float]]:
    """(2-theta, relative intensity) sticks of a trained phase, from its card."""
    return [tuple(p) for p in entry.card.training.get("reference_peaks", {}).get(phase, [])]


def plot_identification(
    pattern: XrdPattern, prepared: np.ndarray, result: XrdResult, entry: ModelEntry, out: Path
) -> Path:
    """The validation picture: the pattern on the model's grid, the best phase's sticks, the
    class probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, step, points = entry.card.input.two_theta_deg
    tt = start + step * np.arange(int(points))
    best = max(
        (c for c in result.probabilities if c != ANOMALY), key=lambda c: result.probabilities[c]
    )
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1]}, constrained_layout=True
    )
    ax.plot(tt, prepared, lw=0.7, color="k", label=Path(pattern.source).name)
    for x, h in reference_peaks(entry, best):
        ax.vlines(x, -0.12, -0.12 + 0.1 * h, color="C3", lw=1)
    ax.plot([], [], color="C3", label=f"{best} (reference)")
    ax.set_xlabel("2θ (deg, Cu Kα)")
    ax.set_ylabel("normalised intensity")
    verdict = "ANOMALY: " + result.reason if result.anomaly else f"phase: {result.phase}"
    ax.set_title(verdict, fontsize=10)
    ax.legend(fontsize=8)
    names = list(result.probabilities)
    bx.barh(names, [result.probabilities[n] for n in names], color="C0")
    bx.set_xlim(0, 1)
    bx.set_xlabel("probability")
    bx.set_title(f"novelty {result.novelty:.2f} (limit {result.novelty_threshold:.2f})", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
