"""Inputs the analysis-service tests send: a PACBED-like disc, a reflection file and a
rendered microscope tile, made the same way wherever they are needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pacbed_disc(
    shape: tuple[int, int] = (160, 160),
    centre: tuple[float, float] = (81.3, 78.9),
    radius: float = 40.0,
    counts: float = 400.0,
    seed: int = 0,
) -> np.ndarray:
    """Poisson counts of a bright disc with radial fringes on a faint background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - centre[0], xx - centre[1])
    disc = (r < radius) * (1 + 0.3 * np.cos(r / 3.0)) + 0.01
    return np.random.default_rng(seed).poisson(disc * counts)


def write_reflections(path: Path) -> Path:
    """A SHELX HKLF-4 file of every h, k, l in -3..3 with gamma-distributed intensities."""
    from flakescan.inference.phase_retrieval import write_hkl

    grid = np.arange(-3, 4)
    hkl = np.array([(h, k, m) for h in grid for k in grid for m in grid if (h, k, m) != (0, 0, 0)])
    intensity = np.random.default_rng(1).gamma(2.0, 50.0, len(hkl))
    return write_hkl(path, hkl, intensity, np.sqrt(intensity))


def simulated_tile() -> np.ndarray:
    """A 0.57 um/px tile of a simulated chip (seed 5) with thin flakes, linear RGB."""
    from flakescan.simulators.chip import generate_chip
    from flakescan.simulators.config import ChipSpec, ImagingSpec
    from flakescan.simulators.render import FieldRenderer

    chip = generate_chip(ChipSpec(width_um=3000, height_um=3000, thin_flakes_per_mm2=12), 5)
    return FieldRenderer(chip, ImagingSpec(), 0.57, 0.14, seed=5).render(1500.0, 1500.0)
