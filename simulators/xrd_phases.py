"""Crystal phases for powder-XRD simulation, and their reflection lists.

A powder pattern is a list of reflections (hkl, |F|^2) seen through an instrument. The list
depends only on the crystal, so it is computed once per phase here and the per-pattern physics
(strain, broadening, texture, background, noise) moves and shapes the peaks analytically in
`xrd_pattern`. Unlike pymatgen's `XRDCalculator`, which merges symmetry-equivalent reflections
into families, every reflection of one Friedel half-space is kept separately: an anisotropic
strain splits a family (a tetragonal distortion separates (200) from (002)) and preferred
orientation weighs its members differently, so both need the members, not the family.

Structure factors use pymatgen's atomic scattering parameters (the same Cromer-Mann style fit
its `XRDCalculator` uses), so `tests/test_xrd.py` can check the summed intensities against it.

Phases: the layered crystals a 2D-materials lab exfoliates (graphite, hBN, 2H-MoS2, 2H-WSe2)
are built from their space group and Wyckoff positions (no CIFs for them ship with the
libraries); the rest are the CIFs shipped with Dans_Diffraction, read through pymatgen.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KNOWN_PHASES",
    "TRAIN_OUTSIDE_PHASES",
    "UNSEEN_PHASES",
    "PhaseSpec",
    "ReflectionList",
    "load_structure",
    "reflection_list",
]

# Largest 2-theta (deg, Cu K-alpha-2) a reflection list must reach: the 10-90 deg pattern
# plus room for strain, zero shift and the K-alpha-2 doublet.
MAX_TWO_THETA_DEG = 100.0
CU_KA2_ANGSTROM = 1.544390


@dataclass(frozen=True)
class PhaseSpec:
    """A named phase: a Dans_Diffraction CIF, or a space group with Wyckoff sites."""

    name: str
    formula: str
    cif: str | None = None  # file name in Dans_Diffraction's Structures folder
    spacegroup: int | None = None
    lattice: tuple[float, ...] = ()  # a, c (hexagonal) in angstrom
    sites: tuple[tuple[str, tuple[float, float, float]], ...] = ()
    layered: bool = False  # texture (preferred orientation) along (001) in a powder mount


def _hex(name: str, formula: str, a: float, c: float, sites: tuple, layered: bool = True):
    return PhaseSpec(name, formula, spacegroup=194, lattice=(a, c), sites=sites, layered=layered)


# The classes the model names. Lattices: graphite a 2.464 c 6.711 (Bernal), hBN a 2.504
# c 6.661, 2H-MoS2 a 3.160 c 12.294 (S z 0.621), 2H-WSe2 a 3.282 c 12.960 (Se z 0.621).
KNOWN_PHASES: tuple[PhaseSpec, ...] = (
    _hex("graphite", "C", 2.464, 6.711, (("C", (0, 0, 0.25)), ("C", (1 / 3, 2 / 3, 0.25)))),
    _hex("hBN", "BN", 2.504, 6.661, (("B", (1 / 3, 2 / 3, 0.25)), ("N", (1 / 3, 2 / 3, 0.75)))),
    _hex(
        "MoS2-2H",
        "MoS2",
        3.160,
        12.294,
        (("Mo", (1 / 3, 2 / 3, 0.25)), ("S", (1 / 3, 2 / 3, 0.621))),
    ),
    _hex(
        "WSe2-2H",
        "WSe2",
        3.282,
        12.960,
        (("W", (1 / 3, 2 / 3, 0.25)), ("Se", (1 / 3, 2 / 3, 0.621))),
    ),
    PhaseSpec("silicon", "Si", cif="Silicon.cif"),
    PhaseSpec("rutile", "TiO2", cif="Rutile.cif"),
)

# Phases outside the set that the anomaly class is trained on.
TRAIN_OUTSIDE_PHASES: tuple[PhaseSpec, ...] = tuple(
    PhaseSpec(n, f, cif=c)
    for n, f, c in (
        ("diamond", "C", "Diamond.cif"),
        ("sapphire", "Al2O3", "Sapphire.cif"),
        ("ZnO", "ZnO", "ZnO.cif"),
        ("KCl", "KCl", "KCl.cif"),
        ("copper", "Cu", "Copper.cif"),
        ("iron", "Fe", "Iron.cif"),
        ("gold", "Au", "Gold.cif"),
        ("LiCoO2", "LiCoO2", "LiCoO2.cif"),
    )
)

# Phases no model sees in training: the test of "flags unknown inputs". WS2 is the hard case
# on purpose: 2H-WS2 (a 3.153, c 12.323) is almost isostructural with 2H-MoS2.
UNSEEN_PHASES: tuple[PhaseSpec, ...] = (
    *(
        PhaseSpec(n, f, cif=c)
        for n, f, c in (
            ("silver", "Ag", "Silver.cif"),
            ("aluminium", "Al", "Aluminium.cif"),
            ("niobium", "Nb", "Niobium.cif"),
            ("cobalt", "Co", "Cobalt.cif"),
            ("ruthenium", "Ru", "Ruthenium.cif"),
            ("vanadium", "V", "Vanadium.cif"),
            ("beryllium", "Be", "Beryllium.cif"),
            ("Ca2RuO4", "Ca2RuO4", "Ca2RuO4.cif"),
            ("Na0.8CoO2", "Na0.8CoO2", "Na0.8CoO2_P63mmc.cif"),
        )
    ),
    _hex(
        "WS2-2H", "WS2", 3.153, 12.323, (("W", (1 / 3, 2 / 3, 0.25)), ("S", (1 / 3, 2 / 3, 0.622)))
    ),
)


def _dans_structures_dir() -> str:
    import Dans_Diffraction

    return os.path.join(os.path.dirname(Dans_Diffraction.__file__), "Structures")


@functools.cache
def load_structure(spec: PhaseSpec):
    """The pymatgen Structure of a phase (conventional cell, as the CIF gives it)."""
    from pymatgen.core import Lattice, Structure

    if spec.cif is not None:
        from pymatgen.io.cif import CifParser

        path = os.path.join(_dans_structures_dir(), spec.cif)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CIF dialect notes, not errors
            return CifParser(path).parse_structures(primitive=False)[0]
    a, c = spec.lattice
    species = [s for s, _ in spec.sites]
    coords = [list(x) for _, x in spec.sites]
    return Structure.from_spacegroup(spec.spacegroup, Lattice.hexagonal(a, c), species, coords)


@dataclass(frozen=True)
class ReflectionList:
    """Every reflection of one Friedel half-space up to MAX_TWO_THETA_DEG.

    `f2` is |F|^2 of the unstrained crystal (the Friedel mate's share included, i.e. doubled);
    `lattice` holds the real-space lattice vectors as rows, for strained d-spacings.
    """

    name: str
    hkl: np.ndarray  # (M, 3) int
    f2: np.ndarray  # (M,) float
    lattice: np.ndarray  # (3, 3) angstrom, rows a, b, c

    def d_spacings(self, lattice: np.ndarray | None = None) -> np.ndarray:
        """d (angstrom) of each reflection, in this lattice or a strained one."""
        recip = np.linalg.inv(self.lattice if lattice is None else lattice).T
        return 1.0 / np.linalg.norm(self.hkl @ recip, axis=1)

    def g_vectors(self, lattice: np.ndarray | None = None) -> np.ndarray:
        """Cartesian reciprocal vectors (1/angstrom, no 2 pi), for texture angles."""
        return self.hkl @ np.linalg.inv(self.lattice if lattice is None else lattice).T


@functools.cache
def reflection_list(spec: PhaseSpec) -> ReflectionList:
    """Structure factors of every reflection a Cu K-alpha pattern to 100 deg 2-theta reaches."""
    from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS

    s = load_structure(spec)
    lattice = np.array(s.lattice.matrix)
    recip = np.linalg.inv(lattice).T
    g_max = 2 * np.sin(np.radians(MAX_TWO_THETA_DEG / 2)) / CU_KA2_ANGSTROM
    # h = g . a_i, so |h| <= g_max |a_i|: the index range of each axis.
    n = np.ceil(g_max * np.linalg.norm(lattice, axis=1)).astype(int) + 1
    grid = np.stack(
        np.meshgrid(*(np.arange(-k, k + 1) for k in n), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    h, k, ell = grid.T
    half = (h > 0) | ((h == 0) & (k > 0)) | ((h == 0) & (k == 0) & (ell > 0))
    grid = grid[half]
    g = np.linalg.norm(grid @ recip, axis=1)
    grid, g = grid[g <= g_max], g[g <= g_max]
    s2 = (g / 2) ** 2
    f = np.zeros(len(grid), dtype=np.complex128)
    for site in s:
        for sp, occu in site.species.items():
            coeff = np.asarray(ATOMIC_SCATTERING_PARAMS[sp.symbol])
            fs = sp.Z - 41.78214 * s2 * np.sum(coeff[:, 0] * np.exp(-coeff[:, 1] * s2[:, None]), 1)
            f += occu * fs * np.exp(2j * np.pi * grid @ site.frac_coords)
    f2 = 2.0 * np.abs(f) ** 2  # the Friedel mate -h scatters the same
    keep = f2 > 1e-6 * f2.max()  # systematic absences carry no intensity
    return ReflectionList(spec.name, grid[keep], f2[keep], lattice)
