"""Perturbed powder-XRD patterns (Bragg-Brentano, Cu K-alpha), as a diffractometer records them.

A classifier trained on ideal stick patterns fails on the first real scan: peaks move with
strain and sample height, broaden with crystallite size and the instrument, change their
ratios with texture, sit on a background, and come with counting noise and a K-alpha-2
shoulder. Each of those is drawn per pattern here (`draw_instrument`, `draw_sample`) and
applied analytically to a phase's reflection list from `xrd_phases`:

- lattice strain: isotropic (solid solution, temperature) and anisotropic (a random symmetric
  strain tensor), which also splits symmetry-equivalent reflections;
- peak width: Caglioti instrument function (U tan^2 + V tan + W), Scherrer crystallite size
  (Lorentzian) and microstrain (Gaussian, 4 e tan theta), combined as a Thompson-Cox-Hastings
  pseudo-Voigt;
- preferred orientation: March-Dollase along (001) for layered crystals (flakes lie flat in
  a powder mount), along a random low-index direction otherwise;
- zero shift and sample displacement (-2 s cos(theta) / R);
- Lorentz-polarisation factor, isotropic Debye-Waller factor;
- K-alpha-1/K-alpha-2 doublet (ratio 0.5), or K-alpha-1 only (monochromated instruments);
- background: Chebyshev polynomial plus an amorphous hump (glass holder, grease);
- Poisson counting noise at a drawn count level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .xrd_phases import ReflectionList, reflection_list

__all__ = [
    "CU_KA1",
    "CU_KA2",
    "TWO_THETA_GRID",
    "Instrument",
    "Sample",
    "draw_instrument",
    "draw_sample",
    "render_pattern",
    "simulate_pattern",
]

CU_KA1 = 1.540562  # angstrom
CU_KA2 = 1.544390
KA2_RATIO = 0.5
GONIOMETER_RADIUS_MM = 240.0
# The model's 2-theta grid: 10-90 deg at 0.02 deg, 4000 points (divisible for pooling).
TWO_THETA_GRID = 10.0 + 0.02 * np.arange(4000)


@dataclass(frozen=True)
class Instrument:
    """What the diffractometer and the mount add, shared by every phase of a sample."""

    caglioti_uvw: tuple[float, float, float]  # deg^2
    zero_shift_deg: float
    displacement_mm: float
    ka2: bool
    background: tuple[float, ...]  # Chebyshev coefficients, in units of the peak maximum
    hump: tuple[float, float, float]  # amorphous hump: centre deg, FWHM deg, height
    peak_counts: float  # counts at the strongest peak


@dataclass(frozen=True)
class Sample:
    """What one phase of the sample adds."""

    strain: np.ndarray  # (3, 3) symmetric
    crystallite_nm: float
    microstrain: float
    texture_axis: tuple[int, int, int]  # hkl of the preferred-orientation plane normal
    march_r: float  # March-Dollase r: 1 = random powder, < 1 plates lying flat
    b_iso: float  # Debye-Waller B, angstrom^2


def draw_instrument(rng: np.random.Generator) -> Instrument:
    """A lab Bragg-Brentano diffractometer and mount, drawn from realistic ranges."""
    u = rng.uniform(0.001, 0.012)
    v = -rng.uniform(0.0, 0.004)
    w = rng.uniform(0.0015, 0.006)
    c0 = rng.uniform(0.01, 0.15)
    background = (c0, *(c0 * rng.uniform(-0.5, 0.5, size=3)))
    hump = (rng.uniform(17.0, 30.0), rng.uniform(5.0, 14.0), rng.uniform(0.0, 0.12))
    return Instrument(
        caglioti_uvw=(u, v, w),
        zero_shift_deg=rng.normal(0.0, 0.03),
        displacement_mm=rng.normal(0.0, 0.05),
        ka2=bool(rng.random() < 0.8),
        background=background,
        hump=hump,
        peak_counts=float(np.exp(rng.uniform(np.log(300.0), np.log(30000.0)))),
    )


def draw_sample(rng: np.random.Generator, layered: bool) -> Sample:
    """One phase's strain, size, microstrain and texture."""
    iso = rng.normal(0.0, 0.002)
    aniso = rng.normal(0.0, 0.0007, size=(3, 3))
    strain = iso * np.eye(3) + (aniso + aniso.T) / 2
    if layered:
        axis, march_r = (0, 0, 1), rng.uniform(0.45, 1.0)
    else:
        axes = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1))
        axis, march_r = axes[rng.integers(len(axes))], rng.uniform(0.8, 1.0)
    return Sample(
        strain=strain,
        crystallite_nm=float(np.exp(rng.uniform(np.log(15.0), np.log(500.0)))),
        microstrain=rng.uniform(0.0, 0.002),
        texture_axis=axis,
        march_r=march_r,
        b_iso=rng.uniform(0.2, 1.2),
    )


def _pseudo_voigt_tch(x: np.ndarray, fwhm_g: np.ndarray, fwhm_l: np.ndarray) -> np.ndarray:
    """Unit-area Thompson-Cox-Hastings pseudo-Voigt at offsets x (deg), one row per peak."""
    g, lo = fwhm_g[:, None], fwhm_l[:, None]
    h = (
        (g**5 + 2.69269 * g**4 * lo + 2.42843 * g**3 * lo**2 + 4.47163 * g**2 * lo**3)
        + 0.07842 * g * lo**4
        + lo**5
    )
    h = h ** (1 / 5)
    q = lo / h
    eta = 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3
    gauss = (2 / h) * np.sqrt(np.log(2) / np.pi) * np.exp(-4 * np.log(2) * (x / h) ** 2)
    lorentz = (2 / (np.pi * h)) / (1 + 4 * (x / h) ** 2)
    return eta * lorentz + (1 - eta) * gauss


def _phase_peaks(
    refl: ReflectionList, sample: Sample, inst: Instrument, wavelength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(2-theta, integrated intensity, Gaussian FWHM, Lorentzian FWHM) of each reflection."""
    lattice = refl.lattice @ (np.eye(3) + sample.strain)
    d = refl.d_spacings(lattice)
    sin_t = wavelength / (2 * d)
    ok = sin_t < np.sin(np.radians(95.0 / 2))
    d, sin_t, f2 = d[ok], sin_t[ok], refl.f2[ok]
    theta = np.arcsin(sin_t)
    two_theta = np.degrees(2 * theta)
    two_theta += inst.zero_shift_deg
    two_theta -= np.degrees(2 * inst.displacement_mm * np.cos(theta) / GONIOMETER_RADIUS_MM)
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    s2 = (1 / (2 * d)) ** 2
    intensity = f2 * lp * np.exp(-2 * sample.b_iso * s2)
    if sample.march_r != 1.0:
        g = refl.g_vectors(lattice)[ok]
        axis = np.asarray(sample.texture_axis, float) @ np.linalg.inv(lattice).T
        cos_a = (g @ axis) / (np.linalg.norm(g, axis=1) * np.linalg.norm(axis))
        r = sample.march_r
        intensity *= (r**2 * cos_a**2 + (1 - cos_a**2) / r) ** -1.5
    u, v, w = inst.caglioti_uvw
    tan_t = np.tan(theta)
    fwhm_g2 = np.maximum(u * tan_t**2 + v * tan_t + w, 1e-6)
    fwhm_g2 += np.degrees(4 * sample.microstrain * tan_t) ** 2
    fwhm_l = np.degrees(0.9 * wavelength / (sample.crystallite_nm * 10 * np.cos(theta)))
    return two_theta, intensity, np.sqrt(fwhm_g2), fwhm_l


def render_pattern(
    phases: Sequence[tuple[ReflectionList, Sample, float]],
    inst: Instrument,
    rng: np.random.Generator | None,
    two_theta: np.ndarray = TWO_THETA_GRID,
) -> np.ndarray:
    """Counts on the 2-theta grid for phases given as (reflections, sample, weight).

    Weights are the phases' shares of the diffracted intensity. With `rng` None the pattern
    is the noise-free expectation (for tests of the physics).
    """
    profile = np.zeros_like(two_theta)
    lines = [(CU_KA1, 1.0)] + ([(CU_KA2, KA2_RATIO)] if inst.ka2 else [])
    for refl, sample, weight in phases:
        part = np.zeros_like(two_theta)
        for wavelength, share in lines:
            tt, inten, fg, fl = _phase_peaks(refl, sample, inst, wavelength)
            near = (tt > two_theta[0] - 5) & (tt < two_theta[-1] + 5)
            tt, inten, fg, fl = tt[near], inten[near], fg[near], fl[near]
            for i in range(0, len(tt), 256):  # chunks bound the (peaks x points) matrix
                sl = slice(i, i + 256)
                shapes = _pseudo_voigt_tch(two_theta[None, :] - tt[sl, None], fg[sl], fl[sl])
                part += share * (inten[sl, None] * shapes).sum(0)
        profile += weight * part / max(part.max(), 1e-30)
    profile /= max(profile.max(), 1e-30)
    x = np.linspace(-1, 1, len(two_theta))
    background = np.polynomial.chebyshev.chebval(x, inst.background)
    centre, width, height = inst.hump
    background += height * np.exp(-4 * np.log(2) * ((two_theta - centre) / width) ** 2)
    expected = inst.peak_counts * (profile + np.maximum(background, 0.002))
    if rng is None:
        return expected
    return rng.poisson(expected).astype(np.float64)


def simulate_pattern(
    rng: np.random.Generator,
    phases: Sequence,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Counts of one drawn measurement of the given PhaseSpecs (a mixture if several)."""
    inst = draw_instrument(rng)
    weights = [1.0] * len(phases) if weights is None else list(weights)
    parts = [
        (reflection_list(spec), draw_sample(rng, spec.layered), w)
        for spec, w in zip(phases, weights, strict=True)
    ]
    return render_pattern(parts, inst, rng)
