"""Thin-film optics of a flake on SiO2/Si, seen through a colour camera.

The colour of a flake is what flake-hunting rests on, so the simulator computes it from
physics rather than picking it: a transfer-matrix (characteristic-matrix) model of the stack
air / flake / SiO2 / Si (Blake et al., APL 91, 063124, 2007), averaged over the cone of
incidence angles the objective's numerical aperture admits, and integrated over a 3200 K lamp
spectrum times Gaussian camera-channel responses. Contrast is C = (R_substrate - R_flake) /
R_substrate per channel, on *linear* intensities.

Materials: graphene and hBN (indices checked against published contrasts), MoS2 and WSe2
(published monolayer tables, reduced in optics_data.py). A TMD flake of N layers is modelled as
one film of N monolayer thicknesses with the *monolayer* index: few-layer and bulk TMDs absorb
differently (excitons shift and weaken), so their contrasts are approximate.
Presets: `stack_optics("MoS2", "90nm", numerical_aperture=0.14)` picks a material from
MATERIALS and an oxide from OXIDE_PRESETS by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from .optics_data import MOS2_ERMOLAEV_2020_1L, MOS2_ZHANG_2015_1L, WSE2_HSU_2019_1L

__all__ = [
    "MATERIALS",
    "OXIDE_PRESETS",
    "POLYMER",
    "CameraResponse",
    "Material",
    "StackOptics",
    "contrast_class",
    "contrast_classes",
    "refractive_index",
    "stack_optics",
]

# Wavelength grid for spectral integration (nm).
WAVELENGTHS_NM = np.arange(400.0, 721.0, 5.0)

# Si, Green (2008) / Aspnes & Studna (1983), values to about 1 % (refractiveindex.info).
_SI_TABLE = np.array(
    [
        # nm, n, k
        (400, 5.570, 0.387),
        (420, 5.120, 0.269),
        (440, 4.800, 0.130),
        (450, 4.690, 0.086),
        (460, 4.590, 0.080),
        (480, 4.450, 0.061),
        (500, 4.298, 0.047),
        (520, 4.200, 0.037),
        (540, 4.115, 0.030),
        (560, 4.040, 0.025),
        (580, 3.980, 0.021),
        (600, 3.939, 0.018),
        (620, 3.900, 0.016),
        (650, 3.840, 0.014),
        (680, 3.800, 0.011),
        (700, 3.780, 0.009),
        (720, 3.760, 0.008),
    ]
)

# Graphene, Weber et al. (APL 97, 091904, 2010) ellipsometry; outside 460-620 nm the trend
# is extrapolated linearly (Blake's constant 2.6 - 1.3i lies within 3 % of it).
_GRAPHENE_TABLE = np.array(
    [
        (460, 2.686, 1.158),
        (540, 2.681, 1.233),
        (620, 2.720, 1.338),
    ]
)


# Tabulated TMD monolayer indices (optics_data.py), valid over 400-720 nm. The bare name is the
# default source; "-Author" names select a source explicitly.
_TMD_TABLES: dict[str, np.ndarray] = {
    "MoS2": MOS2_ZHANG_2015_1L,
    "MoS2-Zhang2015": MOS2_ZHANG_2015_1L,
    "MoS2-Ermolaev2020": MOS2_ERMOLAEV_2020_1L,
    "WSe2": WSE2_HSU_2019_1L,
    "WSe2-Hsu2019": WSE2_HSU_2019_1L,
}


def _interp_table(table: np.ndarray, wl: np.ndarray) -> np.ndarray:
    """Complex index from an (nm, n, k) table, linear inside, linearly extended outside."""
    x, n, k = table[:, 0], table[:, 1], table[:, 2]
    if len(x) == 1:
        return np.full(wl.shape, n[0] + 1j * k[0])
    out_n = np.interp(wl, x, n)
    out_k = np.interp(wl, x, k)
    lo, hi = wl < x[0], wl > x[-1]
    for mask, i, j in ((lo, 0, 1), (hi, -2, -1)):
        if mask.any():
            slope_n = (n[j] - n[i]) / (x[j] - x[i])
            slope_k = (k[j] - k[i]) / (x[j] - x[i])
            ref = x[i] if i == 0 else x[j]
            base_n = n[i] if i == 0 else n[j]
            base_k = k[i] if i == 0 else k[j]
            out_n[mask] = base_n + slope_n * (wl[mask] - ref)
            out_k[mask] = np.maximum(base_k + slope_k * (wl[mask] - ref), 0.0)
    return out_n + 1j * out_k


def _silica(wl: np.ndarray) -> np.ndarray:
    """Fused silica, Malitson (1965) Sellmeier equation."""
    um2 = (wl / 1000.0) ** 2
    n2 = (
        1
        + 0.6961663 * um2 / (um2 - 0.0684043**2)
        + 0.4079426 * um2 / (um2 - 0.1162414**2)
        + 0.8974794 * um2 / (um2 - 9.896161**2)
    )
    return np.sqrt(n2) + 0j


def _hbn(wl: np.ndarray) -> np.ndarray:
    """hBN in-plane index, Lee et al. (2018) single-term Sellmeier, non-absorbing."""
    n2 = 1 + 3.263 * wl**2 / (wl**2 - 164.4**2)
    return np.sqrt(n2) + 0j


def refractive_index(name: str, wl_nm: np.ndarray) -> np.ndarray:
    """Complex refractive index n + ik of a named material over wavelengths in nm."""
    wl = np.asarray(wl_nm, dtype=float)
    if name == "Si":
        return _interp_table(_SI_TABLE, wl)
    if name == "SiO2":
        return _silica(wl)
    if name in ("graphene", "graphite"):
        return _interp_table(_GRAPHENE_TABLE, wl)
    if name == "hBN":
        return _hbn(wl)
    if name in _TMD_TABLES:
        return _interp_table(_TMD_TABLES[name], wl)
    if name == "polymer":
        # Tape adhesive / PMMA-like residue, Cauchy n = 1.47 + 4000 nm^2 / wl^2.
        return 1.47 + 4000.0 / wl**2 + 0j
    raise KeyError(f"no refractive index for material {name!r}")


@dataclass(frozen=True)
class Material:
    """A layered crystal: its index source and the thickness of one layer."""

    name: str
    index_name: str
    layer_nm: float
    # Hexagonal crystals cleave along zigzag and armchair: edges every 30 deg.
    edge_period_deg: float = 30.0


MATERIALS: dict[str, Material] = {
    "graphene": Material("graphene", "graphene", 0.335),
    "hBN": Material("hBN", "hBN", 0.333),
    # Monolayer thicknesses: MoS2 0.65 nm as paired with Zhang's table in physics-notes.md,
    # WSe2 0.70 nm (project choice). Bulk 2H interlayer spacings c/2 are 0.615 nm (MoS2,
    # c = 12.30 A) and 0.648 nm (WSe2, c = 12.96 A). An index fitted to thin-film contrast or
    # reflectance is tied to the thickness its authors assumed, which was not checked here.
    "MoS2": Material("MoS2", "MoS2", 0.65),
    "WSe2": Material("WSe2", "WSe2", 0.70),
}

# Common thermal-oxide thicknesses (nm) of SiO2/Si wafers for flake hunting.
OXIDE_PRESETS: dict[str, float] = {"90nm": 90.0, "285nm": 285.0, "300nm": 300.0}

# Films that are not crystals of interest; thickness is given directly in nm.
POLYMER = Material("polymer", "polymer", 1.0, edge_period_deg=0.0)


@dataclass(frozen=True)
class CameraResponse:
    """Gaussian spectral responses of the R, G, B channels over a blackbody lamp."""

    centres_nm: tuple[float, float, float] = (610.0, 535.0, 465.0)
    widths_nm: tuple[float, float, float] = (40.0, 35.0, 30.0)
    lamp_kelvin: float = 3200.0

    def weights(self, wl: np.ndarray) -> np.ndarray:
        """(3, n_wl) normalised weights: lamp spectrum times channel response."""
        h, c, kb = 6.62607015e-34, 2.99792458e8, 1.380649e-23
        lam = wl * 1e-9
        lamp = 1.0 / (lam**5 * (np.exp(h * c / (lam * kb * self.lamp_kelvin)) - 1.0))
        resp = np.stack(
            [
                np.exp(-0.5 * ((wl - c0) / s) ** 2)
                for c0, s in zip(self.centres_nm, self.widths_nm, strict=True)
            ]
        )
        w = resp * lamp
        return w / w.sum(axis=1, keepdims=True)


def _stack_reflectance(
    wl: np.ndarray,
    indices: list[np.ndarray],
    thicknesses_nm: list[float],
    substrate: np.ndarray,
    sin_theta0: float,
) -> np.ndarray:
    """Unpolarised reflectance of air / films... / substrate at one angle of incidence.

    Characteristic-matrix method (Macleod), vectorised over wavelength; films are given
    top to bottom. Macleod's matrices use the n - ik sign convention, so the n + ik indices
    of the tables are conjugated here (with n + ik an absorbing film would amplify light).
    """
    indices = [np.conj(n) for n in indices]
    substrate = np.conj(substrate)
    n0 = 1.0
    result = np.zeros(wl.shape)
    for pol in ("s", "p"):

        def admittance(n: np.ndarray, cos_t: np.ndarray, pol: str = pol) -> np.ndarray:
            return n * cos_t if pol == "s" else n / cos_t

        def cos_in(n: np.ndarray) -> np.ndarray:
            return np.sqrt(1 - (n0 * sin_theta0 / n) ** 2 + 0j)

        m11 = np.ones(wl.shape, complex)
        m12 = np.zeros(wl.shape, complex)
        m21 = np.zeros(wl.shape, complex)
        m22 = np.ones(wl.shape, complex)
        for n, d in zip(indices, thicknesses_nm, strict=True):
            ct = cos_in(n)
            eta = admittance(n, ct)
            delta = 2 * np.pi * n * d * ct / wl
            c, s = np.cos(delta), np.sin(delta)
            a11, a12, a21, a22 = c, 1j * s / eta, 1j * eta * s, c
            m11, m12, m21, m22 = (
                m11 * a11 + m12 * a21,
                m11 * a12 + m12 * a22,
                m21 * a11 + m22 * a21,
                m21 * a12 + m22 * a22,
            )
        eta_sub = admittance(substrate, cos_in(substrate))
        eta0 = admittance(np.full(wl.shape, n0 + 0j), np.full(wl.shape, cos_in(n0 + 0j)))
        b = m11 + m12 * eta_sub
        cc = m21 + m22 * eta_sub
        r = (eta0 * b - cc) / (eta0 * b + cc)
        result += 0.5 * np.abs(r) ** 2
    return result


@dataclass(frozen=True)
class StackOptics:
    """Channel reflectances of a material on SiO2/Si, as a camera with this objective sees them."""

    material: Material
    oxide_nm: float = 285.0
    numerical_aperture: float = 0.0
    camera: CameraResponse = CameraResponse()

    def _angles(self) -> tuple[np.ndarray, np.ndarray]:
        """Incidence angles and weights over a uniformly filled pupil (sin t cos t dt)."""
        if self.numerical_aperture <= 0:
            return np.array([0.0]), np.array([1.0])
        theta_max = np.arcsin(min(self.numerical_aperture, 0.99))
        x, w = np.polynomial.legendre.leggauss(6)
        theta = 0.5 * theta_max * (x + 1)
        weight = w * np.sin(theta) * np.cos(theta)
        return theta, weight / weight.sum()

    def spectral_reflectance(self, thickness_nm: float) -> np.ndarray:
        """Reflectance spectrum over WAVELENGTHS_NM for a flake of this thickness (0 = bare)."""
        wl = WAVELENGTHS_NM
        sio2 = refractive_index("SiO2", wl)
        si = refractive_index("Si", wl)
        films: list[np.ndarray] = [sio2]
        thick: list[float] = [self.oxide_nm]
        if thickness_nm > 0:
            films.insert(0, refractive_index(self.material.index_name, wl))
            thick.insert(0, thickness_nm)
        theta, weight = self._angles()
        total = np.zeros(wl.shape)
        for t, w in zip(theta, weight, strict=True):
            total += w * _stack_reflectance(wl, films, thick, si, float(np.sin(t)))
        return total

    def channel_reflectance(self, thickness_nm: float) -> np.ndarray:
        """Linear R, G, B reflectance (fractions of the lamp) of the stack."""
        return _channel_reflectance_cached(self, float(thickness_nm))

    def layers_reflectance(self, n_layers: int) -> np.ndarray:
        """Linear R, G, B reflectance of an n-layer flake (0 = bare substrate)."""
        return self.channel_reflectance(n_layers * self.material.layer_nm)

    def contrast(self, n_layers: int) -> np.ndarray:
        """Per-channel contrast (R_sub - R_flake) / R_sub of an n-layer flake, R, G, B order."""
        sub = self.layers_reflectance(0)
        return (sub - self.layers_reflectance(n_layers)) / sub


@cache
def _channel_reflectance_cached(optics: StackOptics, thickness_nm: float) -> np.ndarray:
    spectrum = optics.spectral_reflectance(thickness_nm)
    out = optics.camera.weights(WAVELENGTHS_NM) @ spectrum
    out.setflags(write=False)
    return out


def stack_optics(
    material: str | Material = "graphene",
    oxide: str | float = "285nm",
    numerical_aperture: float = 0.0,
    camera: CameraResponse | None = None,
) -> StackOptics:
    """StackOptics from preset names, so configs and scripts can say "MoS2" and "90nm".

    `material` is a MATERIALS key (or a Material); `oxide` an OXIDE_PRESETS key or a thickness
    in nm. Unknown names raise KeyError listing the presets.
    """
    if isinstance(material, str):
        if material not in MATERIALS:
            raise KeyError(f"unknown material {material!r}; presets: {sorted(MATERIALS)}")
        material = MATERIALS[material]
    if isinstance(oxide, str):
        if oxide not in OXIDE_PRESETS:
            raise KeyError(f"unknown oxide {oxide!r}; presets: {sorted(OXIDE_PRESETS)}")
        oxide_nm = OXIDE_PRESETS[oxide]
    else:
        oxide_nm = float(oxide)
    return StackOptics(
        material,
        oxide_nm,
        float(numerical_aperture),
        camera if camera is not None else CameraResponse(),
    )


def contrast_classes(r_contrast: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """GrapheneClassifier class k of each R contrast, bins[k-1] < r <= bins[k] (the lowest
    such k); 0 outside the bins or for NaN. One rule for the simulator's truth, the training
    labels and the preselection."""
    r = np.asarray(r_contrast, np.float64)
    out = np.zeros(r.shape, np.int8)
    with np.errstate(invalid="ignore"):  # NaN compares False: class 0
        for k in range(len(bins) - 1, 0, -1):  # descending, so the lowest k wins
            out[(r > bins[k - 1]) & (r <= bins[k])] = k
    return out


def contrast_class(r_contrast: float, bins: Sequence[float]) -> int:
    """`contrast_classes` of one R contrast."""
    return int(contrast_classes(np.asarray(r_contrast), bins))
