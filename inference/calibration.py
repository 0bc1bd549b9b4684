"""Few-shot calibration of the preselection for a new material or oxide.

A lab that changes material (hBN for graphene) or wafer (90 nm oxide for 285 nm) cannot
wait for a physics preset to be derived and checked; it has a handful of flakes whose layer
numbers it knows (from AFM, Raman, or optical contrast steps). In the spirit of 2DMatGMM,
each layer number gets a Gaussian in R, G, B contrast, fitted from those flakes:

* the mean is the mean of the flakes' median contrasts;
* the covariance is the scatter of the flakes' medians, shrunk towards a floor
  (`prior_sigma` per channel, worth two flakes), plus the scatter of their pixels when
  known: one or two flakes of a layer number already give a usable, not a degenerate,
  model, and with many flakes the data dominate.

The preset's colour window, what the preselection needs, spans every layer's mean +-
`k_sigma` standard deviations (and keeps the bare wafer out on the channel that separates
it best); `classify` names the likeliest layer number of a contrast. Presets are JSON files
(`ContrastPreset`, the public contract), named, kept in a presets folder, used by name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .config import PreselectionConfig

__all__ = ["ContrastPreset", "FlakeExample", "LayerModel", "fit_preset", "load_preset"]

_PRIOR_WEIGHT = 2.0  # flakes' worth of belief in prior_sigma


@dataclass(frozen=True)
class FlakeExample:
    """One flake of known layer number: its median contrast, and its pixels if known."""

    layers: int
    contrast: tuple[float, float, float]  # median (R, G, B) contrast
    pixels: np.ndarray | None = None  # (n, 3) contrast of its pixels, for the scatter
    source: str = ""  # "flake 12" / "image.png box (..)"


class LayerModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: int = Field(..., ge=1)
    mean: tuple[float, float, float]
    covariance: tuple[tuple[float, float, float], ...]
    flakes: int = Field(..., ge=1)

    def sigma(self) -> np.ndarray:
        return np.sqrt(np.diag(np.asarray(self.covariance)))


class ContrastPreset(BaseModel):
    """A fitted preselection preset: per layer number, a Gaussian in contrast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    material: str = ""
    substrate: str = ""  # e.g. "285 nm SiO2/Si"
    k_sigma: float = Field(3.0, gt=0)
    layers: list[LayerModel] = Field(..., min_length=1)
    created: str = ""
    examples: list[str] = []

    def window(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(contrast_min, contrast_max): every layer's mean +- k_sigma sigma."""
        lo = np.min([np.asarray(m.mean) - self.k_sigma * m.sigma() for m in self.layers], 0)
        hi = np.max([np.asarray(m.mean) + self.k_sigma * m.sigma() for m in self.layers], 0)
        # The window must leave the bare wafer (0, 0, 0) out: on the channel whose window
        # lies furthest from zero, cut it there if it straddles zero.
        if np.all(lo < 0) and np.all(hi > 0):
            ch = int(np.argmax(np.minimum(np.abs(lo), np.abs(hi))))
            means = np.array([m.mean[ch] for m in self.layers])
            if np.all(means > 0):
                lo[ch] = min(means.min() / 2, hi[ch] / 2)
            else:
                hi[ch] = max(means.max() / 2, lo[ch] / 2)
        return tuple(float(v) for v in lo), tuple(float(v) for v in hi)

    def preselection(self, base: PreselectionConfig) -> PreselectionConfig:
        """`base` with this preset's colour window."""
        lo, hi = self.window()
        return base.model_copy(update={"contrast_min": lo, "contrast_max": hi})

    def classify(self, contrast: Sequence[float]) -> tuple[int, float]:
        """(likeliest layer number, its Mahalanobis distance) for a median contrast."""
        c = np.asarray(contrast, float)
        best = None
        for m in self.layers:
            d = c - np.asarray(m.mean)
            dist = float(np.sqrt(d @ np.linalg.solve(np.asarray(m.covariance), d)))
            if best is None or dist < best[1]:
                best = (m.layers, dist)
        assert best is not None
        return best

    def accepts(self, contrast: Sequence[float]) -> bool:
        """Whether a flake of this contrast lies within k_sigma of some layer's model."""
        return self.classify(contrast)[1] <= self.k_sigma * np.sqrt(3)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)
        return path


def load_preset(folder: Path, name: str) -> ContrastPreset:
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"no preset {name!r} in {folder}; known: {', '.join(known) or 'none'}"
        )
    return ContrastPreset.model_validate(json.loads(path.read_text()))


def fit_preset(
    examples: Sequence[FlakeExample],
    name: str,
    *,
    material: str = "",
    substrate: str = "",
    prior_sigma: float = 0.01,
    k_sigma: float = 3.0,
) -> ContrastPreset:
    """The per-layer Gaussians from example flakes (at least one per layer number fitted)."""
    if not examples:
        raise ValueError("calibrate: no example flakes")
    for e in examples:
        if e.layers < 1:
            raise ValueError(f"calibrate: layers = {e.layers} for {e.source or 'a flake'}")
    models = []
    for layers in sorted({e.layers for e in examples}):
        mine = [e for e in examples if e.layers == layers]
        medians = np.array([e.contrast for e in mine], float)
        mean = medians.mean(axis=0)
        n = len(mine)
        # Between flakes: their medians' scatter, shrunk towards the floor (the prior
        # counts as `_PRIOR_WEIGHT` flakes), so one flake gives the floor, many the data.
        dev = medians - mean
        between = (dev.T @ dev + _PRIOR_WEIGHT * prior_sigma**2 * np.eye(3)) / (
            n - 1 + _PRIOR_WEIGHT
        )
        # Within a flake: its pixels' scatter (the preselection judges pixels).
        pixel_covs = [
            np.cov(np.asarray(e.pixels, float).T)
            for e in mine
            if e.pixels is not None and len(e.pixels) > 3
        ]
        within = np.mean(pixel_covs, axis=0) if pixel_covs else np.zeros((3, 3))
        cov = between + within
        models.append(
            LayerModel(
                layers=layers,
                mean=tuple(float(v) for v in mean),
                covariance=tuple(tuple(float(v) for v in row) for row in cov),
                flakes=n,
            )
        )
    return ContrastPreset(
        name=name,
        material=material,
        substrate=substrate,
        k_sigma=k_sigma,
        layers=models,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        examples=[e.source for e in examples],
    )
