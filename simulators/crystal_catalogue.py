"""The crystals the phase-retrieval data sets are made of, each with its prototype family.

Three sources, all read through Dans_Diffraction so every crystal is described alike: the
CIFs shipped with Dans_Diffraction; prototypes built with `ase.spacegroup.crystal`; and
pymatgen's bundled structures (as conventional cells). The last two are written to CIFs in
a temporary folder first. Families (fcc, rutile, spinel, ...) let a data set hold out
whole geometries, not only compositions (`structure_factors.split_structures`).
`random_structure` makes synthetic crystals for training only.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .structure_factors import (
    DEFAULT_ENERGY_KEV,
    MIN_REFLECTIONS,
    CrystalStructure,
    dans_cif_paths,
    limiting_sphere_mask,
    load_cif,
)

__all__ = [
    "ASE_PROTOTYPES",
    "DANS_FAMILIES",
    "PYMATGEN_FAMILIES",
    "builtin_structures",
    "random_structure",
]

# Dans_Diffraction's CIFs and their prototype families. Duplicates (FCC = Copper, BCC =
# Iron, HCP = Cobalt, Ruby = Sapphire, the magnetic Sr3LiRuO6) and Cubic.cif (a = 1 A: two
# reflections inside the sphere) are left out.
DANS_FAMILIES = {
    "Aluminium": "fcc",
    "Beryllium": "hcp",
    "Ca2RuO4": "layered-perovskite",
    "Ca3CoMnO6": "Ca3CoMnO6",
    "Cobalt": "hcp",
    "Copper": "fcc",
    "Diamond": "diamond",
    "Gold": "fcc",
    "Graphite": "honeycomb-layers",
    "Iron": "bcc",
    "KCl": "rocksalt",
    "LaMnO3": "perovskite",
    "LiCoO2": "layered-oxide",
    "MnO": "rocksalt",
    "Na0.8CoO2_P63mmc": "layered-oxide",
    "NaCoO2_stripe_supercell": "layered-oxide",
    "Niobium": "bcc",
    "Ruthenium": "hcp",
    "Rutile": "rutile",
    "Sapphire": "corundum",
    "Silicon": "diamond",
    "Silver": "fcc",
    "Sr3LiRuO6": "K4CdCl6",
    "Vanadium": "bcc",
    "ZnO": "wurtzite",
    "triclinic": "one-atom",
}

# Prototypes built with ase.spacegroup.crystal: name, family, symbols, basis, space group,
# cell parameters (a, b, c[, alpha, beta, gamma]), setting. Literature room-temperature values.
_T = (0.0, 0.0, 0.0)
ASE_PROTOTYPES: list[tuple] = [
    ("NaCl", "rocksalt", ["Na", "Cl"], [_T, (0.5, 0.5, 0.5)], 225, [5.64] * 3, 1),
    ("MgO", "rocksalt", ["Mg", "O"], [_T, (0.5, 0.5, 0.5)], 225, [4.212] * 3, 1),
    ("LiF", "rocksalt", ["Li", "F"], [_T, (0.5, 0.5, 0.5)], 225, [4.027] * 3, 1),
    ("PbS", "rocksalt", ["Pb", "S"], [_T, (0.5, 0.5, 0.5)], 225, [5.936] * 3, 1),
    ("Ni", "fcc", ["Ni"], [_T], 225, [3.524] * 3, 1),
    ("Pt", "fcc", ["Pt"], [_T], 225, [3.924] * 3, 1),
    ("W", "bcc", ["W"], [_T], 229, [3.165] * 3, 1),
    ("Mo", "bcc", ["Mo"], [_T], 229, [3.147] * 3, 1),
    ("Mg", "hcp", ["Mg"], [(1 / 3, 2 / 3, 0.25)], 194, [3.209, 3.209, 5.211, 90, 90, 120], 1),
    ("Ti", "hcp", ["Ti"], [(1 / 3, 2 / 3, 0.25)], 194, [2.951, 2.951, 4.686, 90, 90, 120], 1),
    ("Zn", "hcp", ["Zn"], [(1 / 3, 2 / 3, 0.25)], 194, [2.665, 2.665, 4.947, 90, 90, 120], 1),
    ("NiAl", "cscl", ["Ni", "Al"], [_T, (0.5, 0.5, 0.5)], 221, [2.887] * 3, 1),
    ("CuZn", "cscl", ["Cu", "Zn"], [_T, (0.5, 0.5, 0.5)], 221, [2.952] * 3, 1),
    ("ZnS", "diamond", ["Zn", "S"], [_T, (0.25, 0.25, 0.25)], 216, [5.409] * 3, 1),
    ("GaAs", "diamond", ["Ga", "As"], [_T, (0.25, 0.25, 0.25)], 216, [5.653] * 3, 1),
    ("CdTe", "diamond", ["Cd", "Te"], [_T, (0.25, 0.25, 0.25)], 216, [6.481] * 3, 1),
    (
        "GaN",
        "wurtzite",
        ["Ga", "N"],
        [(1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.377)],
        186,
        [3.189, 3.189, 5.185, 90, 90, 120],
        1,
    ),
    (
        "AlN",
        "wurtzite",
        ["Al", "N"],
        [(1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.382)],
        186,
        [3.112, 3.112, 4.982, 90, 90, 120],
        1,
    ),
    ("CaF2", "fluorite", ["Ca", "F"], [_T, (0.25, 0.25, 0.25)], 225, [5.463] * 3, 1),
    ("CeO2", "fluorite", ["Ce", "O"], [_T, (0.25, 0.25, 0.25)], 225, [5.411] * 3, 1),
    (
        "KTaO3",
        "perovskite",
        ["K", "Ta", "O"],
        [_T, (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
        221,
        [3.989] * 3,
        1,
    ),
    (
        "PbTiO3",
        "perovskite",
        ["Pb", "Ti", "O", "O"],
        [_T, (0.5, 0.5, 0.538), (0.5, 0.5, 0.112), (0.5, 0, 0.617)],
        99,
        [3.904, 3.904, 4.152, 90, 90, 90],
        1,
    ),
    (
        "MgAl2O4",
        "spinel",
        ["Mg", "Al", "O"],
        [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2624, 0.2624, 0.2624)],
        227,
        [8.083] * 3,
        2,
    ),
    (
        "Fe3O4",
        "spinel",
        ["Fe", "Fe", "O"],
        [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2549, 0.2549, 0.2549)],
        227,
        [8.396] * 3,
        2,
    ),
    (
        "Fe2O3",
        "corundum",
        ["Fe", "O"],
        [(0, 0, 0.3553), (0.3059, 0, 0.25)],
        167,
        [5.035, 5.035, 13.747, 90, 90, 120],
        1,
    ),
    (
        "SnO2",
        "rutile",
        ["Sn", "O"],
        [_T, (0.307, 0.307, 0)],
        136,
        [4.737, 4.737, 3.186, 90, 90, 90],
        1,
    ),
    (
        "anatase",
        "anatase",
        ["Ti", "O"],
        [_T, (0, 0, 0.2081)],
        141,
        [3.785, 3.785, 9.514, 90, 90, 90],
        1,
    ),
    (
        "hBN",
        "honeycomb-layers",
        ["B", "N"],
        [(1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.25)],
        194,
        [2.504, 2.504, 6.656, 90, 90, 120],
        1,
    ),
    (
        "MoS2",
        "tmd-2H",
        ["Mo", "S"],
        [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)],
        194,
        [3.16, 3.16, 12.295, 90, 90, 120],
        1,
    ),
    (
        "WSe2",
        "tmd-2H",
        ["W", "Se"],
        [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)],
        194,
        [3.282, 3.282, 12.96, 90, 90, 120],
        1,
    ),
    (
        "TiS2",
        "CdI2",
        ["Ti", "S"],
        [_T, (1 / 3, 2 / 3, 0.25)],
        164,
        [3.407, 3.407, 5.695, 90, 90, 120],
        1,
    ),
    (
        "Bi2Se3",
        "tetradymite",
        ["Bi", "Se", "Se"],
        [(0, 0, 0.4008), _T, (0, 0, 0.2117)],
        166,
        [4.143, 4.143, 28.636, 90, 90, 120],
        1,
    ),
    (
        "Bi2Te3",
        "tetradymite",
        ["Bi", "Te", "Te"],
        [(0, 0, 0.4001), _T, (0, 0, 0.2095)],
        166,
        [4.386, 4.386, 30.497, 90, 90, 120],
        1,
    ),
    ("Cu2O", "cuprite", ["O", "Cu"], [_T, (0.25, 0.25, 0.25)], 224, [4.269] * 3, 1),
    (
        "NiAs",
        "NiAs",
        ["Ni", "As"],
        [_T, (1 / 3, 2 / 3, 0.25)],
        194,
        [3.619, 3.619, 5.034, 90, 90, 120],
        1,
    ),
    ("Ni3Al", "L12", ["Al", "Ni"], [_T, (0, 0.5, 0.5)], 221, [3.572] * 3, 1),
    ("Cu3Au", "L12", ["Au", "Cu"], [_T, (0, 0.5, 0.5)], 221, [3.749] * 3, 1),
    ("CuAu", "L10", ["Au", "Cu"], [_T, (0.5, 0.5, 0.5)], 123, [2.801, 2.801, 3.673, 90, 90, 90], 1),
    ("FePt", "L10", ["Pt", "Fe"], [_T, (0.5, 0.5, 0.5)], 123, [2.722, 2.722, 3.713, 90, 90, 90], 1),
    ("FeS2", "pyrite", ["Fe", "S"], [_T, (0.385, 0.385, 0.385)], 205, [5.417] * 3, 1),
    (
        "CaCO3",
        "calcite",
        ["Ca", "C", "O"],
        [_T, (0, 0, 0.25), (0.2578, 0, 0.25)],
        167,
        [4.99, 4.99, 17.061, 90, 90, 120],
        1,
    ),
    ("Nb3Sn", "A15", ["Sn", "Nb"], [_T, (0.25, 0, 0.5)], 223, [5.29] * 3, 1),
    ("ReO3", "ReO3", ["Re", "O"], [_T, (0.5, 0, 0)], 221, [3.75] * 3, 1),
    ("beta-Sn", "beta-Sn", ["Sn"], [_T], 141, [5.832, 5.832, 3.182, 90, 90, 90], 1),
    (
        "ZrO2",
        "baddeleyite",
        ["Zr", "O", "O"],
        [(0.2754, 0.0395, 0.2083), (0.07, 0.3317, 0.3447), (0.4496, 0.7569, 0.4792)],
        14,
        [5.15, 5.212, 5.315, 90, 99.23, 90],
        1,
    ),
    ("Se", "trigonal-Se", ["Se"], [(0.2254, 0, 1 / 3)], 152, [4.366, 4.366, 4.954, 90, 90, 120], 1),
    ("As", "A7", ["As"], [(0, 0, 0.2271)], 166, [3.76, 3.76, 10.548, 90, 90, 120], 1),
    (
        "In2O3",
        "bixbyite",
        ["In", "In", "O"],
        [(0.25, 0.25, 0.25), (-0.0335, 0, 0.25), (0.3905, 0.1529, 0.3832)],
        206,
        [10.117] * 3,
        1,
    ),
]

# pymatgen's bundled structures (pymatgen/util/structures/*.json) and their families;
# Si_SiO2_Interface (a slab) and TlBiSe2 (a 61 A primitive cell) are left out.
PYMATGEN_FAMILIES = {
    "BaNiO3": "hex-perovskite",
    "CsCl": "cscl",
    "Graphite": "honeycomb-layers",
    "He_BCC": "bcc",
    "K2O2": "K2O2",
    "La2CoO4F": "La2CoO4F",
    "Li10GeP2S12": "LGPS",
    "Li2O": "fluorite",
    "Li2O2": "Li2O2",
    "Li3V2(PO4)3": "NASICON",
    "LiFePO4": "olivine",
    "NaFePO4": "olivine",
    "Pb2TiZrO6": "perovskite",
    "Si": "diamond",
    "SiO2": "quartz",
    "Sn": "diamond",
    "SrTiO3": "perovskite",
    "TiO2": "TiO2-B",
    "VO2": "rutile",
}


def _ase_structures(folder: Path) -> list[CrystalStructure]:
    from ase.io import write
    from ase.spacegroup import crystal

    out = []
    for name, family, symbols, basis, sg, cellpar, setting in ASE_PROTOTYPES:
        cp = list(cellpar) if len(cellpar) == 6 else [*cellpar, 90, 90, 90]
        atoms = crystal(symbols, basis, spacegroup=sg, cellpar=cp, setting=setting)
        path = folder / f"{name}.cif"
        write(path, atoms)
        out.append(replace(load_cif(path, name, family), source=f"ase.spacegroup.crystal:{name}"))
    return out


def _pymatgen_structures(folder: Path) -> list[CrystalStructure]:
    import warnings

    import pymatgen.core
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    src = Path(pymatgen.core.__file__).parent.parent / "util" / "structures"
    out = []
    for stem, family in PYMATGEN_FAMILIES.items():
        f = src / f"{stem}.json"
        if not f.is_file():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_file(f)
            with contextlib.suppress(Exception):  # disordered cells stay as they are
                s = SpacegroupAnalyzer(s).get_conventional_standard_structure()
            path = folder / f"pmg_{stem.replace('(', '').replace(')', '')}.cif"
            CifWriter(s).write_file(path)
        out.append(replace(load_cif(path, f"pmg-{stem}", family), source=f"pymatgen:{f.name}"))
    return out


def _lattice_parameters(lattice: np.ndarray) -> np.ndarray:
    a, b, c = lattice
    lengths = np.linalg.norm(lattice, axis=1)

    def angle(u, v):
        return np.degrees(np.arccos(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))))

    return np.array([*lengths, angle(b, c), angle(a, c), angle(a, b)])


def _same_crystal(s: CrystalStructure, t: CrystalStructure) -> bool:
    if sorted(s.elements) != sorted(t.elements):
        return False
    p, q = _lattice_parameters(s.lattice), _lattice_parameters(t.lattice)
    return bool(np.all(np.abs(p[:3] / q[:3] - 1) < 0.015) and np.all(np.abs(p[3:] - q[3:]) < 1))


def builtin_structures(
    energy_kev: float = DEFAULT_ENERGY_KEV, work_dir: Path | None = None
) -> list[CrystalStructure]:
    """Every crystal this module knows: Dans' CIFs, ase prototypes, pymatgen's structures.

    Duplicates (same elements, lattice within 1.5 %) are dropped, the first kept (Dans',
    then ase's, then pymatgen's), and so are crystals with fewer than MIN_REFLECTIONS
    reflections inside the limiting sphere at `energy_kev`.
    """
    found: list[CrystalStructure] = []
    for path in dans_cif_paths():
        stem = path.stem
        if stem in DANS_FAMILIES:
            found.append(load_cif(path, stem, DANS_FAMILIES[stem]))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        found += _ase_structures(Path(tmp))
        found += _pymatgen_structures(Path(tmp))
    kept: list[CrystalStructure] = []
    for s in found:
        if any(_same_crystal(s, k) for k in kept):
            continue
        if limiting_sphere_mask(s.lattice, energy_kev).sum() < MIN_REFLECTIONS:
            continue
        kept.append(s)
    return kept


def random_structure(rng: np.random.Generator, index: int = 0) -> CrystalStructure:
    """A synthetic crystal for training only: a random cell (3-9 A edges, angles 70-110
    deg or 90), 1-10 atoms of random elements (Li..Bi) at random positions at least 1.6 A
    apart, Uiso 0.003-0.015 A^2. Family "random"."""
    elements = [
        "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K",
        "Ca", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se",
        "Br", "Sr", "Y", "Zr", "Nb", "Mo", "Ru", "Pd", "Ag", "Cd", "Sn", "Sb", "Te", "I",
        "Ba", "La", "Ce", "W", "Pt", "Au", "Pb", "Bi",
    ]  # fmt: skip
    lengths = rng.uniform(3.0, 9.0, 3)
    angles = rng.uniform(70, 110, 3) if rng.random() < 0.5 else np.full(3, 90.0)
    from ase.geometry import cellpar_to_cell

    lattice = cellpar_to_cell([*lengths, *angles])
    if not np.isfinite(lattice).all() or abs(np.linalg.det(lattice)) < 5:
        lattice = cellpar_to_cell([*lengths, 90, 90, 90])
    n = int(rng.integers(1, 11))
    frac: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(frac) == n:
            break
        x = rng.random(3)
        d = (np.asarray(frac) - x + 0.5) % 1.0 - 0.5 if frac else np.zeros((0, 3))
        if not frac or np.min(np.linalg.norm(d @ lattice, axis=1)) >= 1.6:
            frac.append(x)
    k = len(frac)
    return CrystalStructure(
        name=f"random-{index}",
        family="random",
        lattice=lattice,
        frac=np.asarray(frac),
        elements=tuple(str(e) for e in rng.choice(elements, k)),
        occupancy=np.ones(k),
        uiso=rng.uniform(0.003, 0.015, k),
        source="random_structure",
    )
