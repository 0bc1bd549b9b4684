"""Preselection presets derived from thin-film optics, per material and oxide.

The colour window of `PreselectionConfig` should follow from physics, not from hand-tuning on
one microscope: for every thickness of the wanted range the transfer-matrix model of
`flakescan.simulators.optics` gives the ideal R, G, B contrast, divided by (1 + flare) for the
veiling glare that real optics add (the simulator's default flare is 0.15). The window spans
those measured contrasts with a margin.

One box must also exclude the bare wafer (contrast 0 in every channel), or the whole field of
view becomes one candidate. Graphene is darker than the wafer in R and G at every thickness,
so that is easy. hBN is not absorbing: its contrast changes sign with thickness (interference),
so a box spanning every channel's range contains 0. The derivation therefore picks an *anchor*
channel and sign -- the (channel, sign) whose contrast stays beyond `min_contrast` (the pixel
noise floor) for the most thicknesses of the range -- and cuts that channel at +-min_contrast;
the other channels keep their full, possibly wide, range. Thicknesses the anchor cannot see
(hBN mono- to few-layers at 1-3 % contrast, or thicknesses where the anchor channel flips
sign) are reported in `PresetDerivation.uncovered_layers`, never silently dropped. On 285 nm
oxide hBN is brighter than the wafer in green at every thickness up to 1500 layers, so wide
ranges anchor on G < 0 and only 1-3 layers stay below the noise floor; for 1-50 layers red
(darker, R > 0) sees one layer count more and wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flakescan.simulators.optics import MATERIALS, stack_optics

from .config import PreselectionConfig

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "NO_CLASS_BINS",
    "SEED_GRAPHENE_BINS",
    "PresetDerivation",
    "derive_preset",
    "measured_contrast",
    "preset_for",
]

# The seed's GrapheneClassifier bins on R contrast (<= 12 %, 12-19 %, 19-30 %).
SEED_GRAPHENE_BINS: tuple[float, float, float, float] = PreselectionConfig().class_bins
# Bins no contrast falls in: every candidate gets contrast_class 0. R-contrast classes mean
# "1, 2, 3 layers" only for graphene; for hBN R is not even monotonic in thickness.
NO_CLASS_BINS: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
# What "thin" means per material when the caller does not say: graphene 1-5 layers (the seed's
# bins end at 30 % R, about 5 layers), hBN < 50 layers (the UA_BN paper's "thin" class).
DEFAULT_MAX_LAYERS: dict[str, int] = {"graphene": 5, "hBN": 50, "MoS2": 5, "WSe2": 5}

_CHANNELS = "RGB"


def measured_contrast(
    material: str,
    oxide_nm: float,
    layers: np.ndarray,
    *,
    flare: float = 0.15,
    numerical_aperture: float = 0.0,
) -> np.ndarray:
    """(n, 3) R, G, B contrast a camera measures for each layer count: ideal / (1 + flare).

    Veiling glare adds flare * R_substrate to flake and wafer alike, so the contrast
    (R_sub - R_flake) / R_sub shrinks by exactly 1 / (1 + flare), as in the simulator.
    """
    if not 0 <= flare < 1:
        raise ValueError(f"flare must be in [0, 1), got {flare}")
    optics = stack_optics(material, float(oxide_nm), numerical_aperture)
    return np.array([optics.contrast(int(n)) for n in layers], dtype=float) / (1.0 + flare)


@dataclass(frozen=True)
class PresetDerivation:
    """A derived preset and the physics behind it, so a test or a person can check it."""

    material: str
    oxide_nm: float
    flare: float
    layers: np.ndarray  # (n,) layer counts of the range
    contrast: np.ndarray  # (n, 3) measured R, G, B contrast per layer count
    covered: np.ndarray  # (n,) bool: inside the window (the anchor sees it)
    anchor_channel: int  # 0, 1, 2 for R, G, B
    anchor_sign: int  # +1: flake darker than wafer in that channel, -1: brighter
    min_contrast: float
    config: PreselectionConfig

    @property
    def anchor(self) -> str:
        """E.g. "G<0": the channel and sign that separate flakes from bare wafer."""
        return f"{_CHANNELS[self.anchor_channel]}{'>' if self.anchor_sign > 0 else '<'}0"

    @property
    def uncovered_layers(self) -> list[int]:
        """Layer counts of the range the window cannot select (below the noise floor)."""
        return [int(n) for n in self.layers[~self.covered]]

    def summary(self) -> str:
        """One line for logs and docs."""
        c = self.config
        win = ", ".join(
            f"{ch} [{lo:+.3f}, {hi:+.3f}]"
            for ch, lo, hi in zip(_CHANNELS, c.contrast_min, c.contrast_max, strict=True)
        )
        unc = self.uncovered_layers
        miss = f"; not covered: {_ranges(unc)} layers" if unc else ""
        return (
            f"{self.material} on {self.oxide_nm:g} nm SiO2, {self.layers[0]}-{self.layers[-1]}"
            f" layers, flare {self.flare:g}: anchor {self.anchor}, window {win}{miss}"
        )


def _ranges(values: list[int]) -> str:
    """Compact "1-3, 7" form of sorted integers."""
    out: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def derive_preset(
    material: str,
    oxide_nm: float,
    max_layers: int | None = None,
    *,
    min_layers: int = 1,
    flare: float = 0.15,
    numerical_aperture: float = 0.0,
    min_contrast: float = 0.04,
    rel_margin: float = 0.25,
    abs_margin: float = 0.02,
    base: PreselectionConfig | None = None,
) -> PresetDerivation:
    """Derive the colour window for `min_layers..max_layers` of a material on an oxide.

    Margins: each bound moves outwards by `rel_margin` of its magnitude (white balance, focus,
    oxide tolerance: labs see measured contrast 15-25 % off the model) plus `abs_margin`
    (pixel noise). `min_contrast` is the noise floor of the anchor channel: 0.04 is about
    twice the per-pixel spread of wafer contrast in 8-bit JPEGs after the preselection's
    1-px smoothing (measured about 0.02 on UA_BN). Everything except the window and the bins
    (minimum area, smoothing, opening) comes from `base`, by default `PreselectionConfig()`.
    """
    if material not in MATERIALS:
        raise KeyError(f"unknown material {material!r}; presets: {sorted(MATERIALS)}")
    if max_layers is None:
        max_layers = DEFAULT_MAX_LAYERS.get(material, 5)
    if not 1 <= min_layers <= max_layers:
        raise ValueError(f"need 1 <= min_layers <= max_layers, got {min_layers}, {max_layers}")
    if min_contrast <= 0 or rel_margin < 0 or abs_margin < 0:
        raise ValueError("min_contrast must be > 0 and the margins >= 0")
    layers = np.arange(min_layers, max_layers + 1)
    contrast = measured_contrast(
        material, oxide_nm, layers, flare=flare, numerical_aperture=numerical_aperture
    )
    # Anchor: the (channel, sign) that sees the most thicknesses; ties go to R, then G, then
    # B (red is the channel most robust to oxide variation, physics-notes), darker first.
    best: tuple[int, int, np.ndarray] | None = None
    for ch in range(3):
        for sign in (1, -1):
            sees = sign * contrast[:, ch] >= min_contrast
            if best is None or sees.sum() > best[2].sum():
                best = (ch, sign, sees)
    assert best is not None
    anchor, sign, covered = best
    if not covered.any():
        raise ValueError(
            f"no thickness of {material} {min_layers}-{max_layers} layers on {oxide_nm:g} nm "
            f"reaches a contrast of {min_contrast:g} in any channel: nothing to preselect"
        )
    seen = contrast[covered]
    lo_c, hi_c = seen.min(axis=0), seen.max(axis=0)
    lo = lo_c - (rel_margin * np.abs(lo_c) + abs_margin)
    hi = hi_c + (rel_margin * np.abs(hi_c) + abs_margin)
    if sign > 0:
        lo[anchor] = max(lo[anchor], min_contrast)
    else:
        hi[anchor] = min(hi[anchor], -min_contrast)
    base = base if base is not None else PreselectionConfig()
    fields = base.model_dump()
    fields.update(
        contrast_min=tuple(round(float(v), 4) for v in lo),
        contrast_max=tuple(round(float(v), 4) for v in hi),
        class_bins=SEED_GRAPHENE_BINS if material == "graphene" else NO_CLASS_BINS,
    )
    # Rounding to 4 decimals moves a bound by <= 5e-5, far inside the margins.
    config = PreselectionConfig(**fields)
    return PresetDerivation(
        material=material,
        oxide_nm=float(oxide_nm),
        flare=flare,
        layers=layers,
        contrast=contrast,
        covered=covered,
        anchor_channel=anchor,
        anchor_sign=sign,
        min_contrast=min_contrast,
        config=config,
    )


def preset_for(
    material: str,
    oxide_nm: float,
    max_layers: int | None = None,
    *,
    min_layers: int = 1,
    flare: float = 0.15,
    numerical_aperture: float = 0.0,
    min_contrast: float = 0.04,
    base: PreselectionConfig | None = None,
) -> PreselectionConfig:
    """The `PreselectionConfig` for a material on an oxide (see `derive_preset` for why)."""
    return derive_preset(
        material,
        oxide_nm,
        max_layers,
        min_layers=min_layers,
        flare=flare,
        numerical_aperture=numerical_aperture,
        min_contrast=min_contrast,
        base=base,
    ).config
