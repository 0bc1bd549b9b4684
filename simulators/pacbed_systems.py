"""The register of PACBED material systems: what a library is simulated from, by integer ID.

This is the seed's Register.csv role on the simulation side: a trained model names the system
it belongs to by ID, so the structure, zone axis, beam energy, supercell and sampling that made
its training library must be fixed data, not arguments scattered over scripts. IDs follow the
seed's example data (0 rutile, 1 strontium titanate); new systems take the next free ID.

Sampling choices follow physics-notes.md ("PACBED"): gpts of the form 2^a·3^b (a prime grid
is several times slower), an 8x8 probe scan of one unit cell (4x4 is not converged), one
multislice per tilt with the thickness series from exit planes.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["SYSTEMS", "MaterialSystem", "Symmetry", "get_system", "is_smooth_23"]

# In-plane point group of the zero-tilt PACBED (whole-pattern symmetry). "4mm": the
# 8 operations of the square (zone axis [001] of a tetragonal or cubic crystal); "2mm":
# two perpendicular mirrors; "1": none.
Symmetry = Literal["4mm", "2mm", "1"]


def is_smooth_23(n: int) -> bool:
    """True if n = 2^a·3^b: grids FFTW transforms fast (a prime like 293 costs 2.7x)."""
    if n < 1:
        return False
    for p in (2, 3):
        while n % p == 0:
            n //= p
    return n == 1


class MaterialSystem(BaseModel):
    """One crystal at one zone axis, with the defaults its library is simulated at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0)
    name: str = Field(min_length=1, description="short name, used in folder names")
    material: str = Field(min_length=1, description="what the seed's Material column holds")
    # The crystal as ase.spacegroup.crystal builds it: symbols and basis of the asymmetric
    # unit, space group number, cell parameters (Å, degrees).
    symbols: tuple[str, ...]
    basis: tuple[tuple[float, float, float], ...]
    spacegroup: int = Field(ge=1, le=230)
    cellpar: tuple[float, float, float, float, float, float]
    direction: tuple[int, int, int] = (0, 0, 1)
    energy_kev: float = Field(gt=0, le=1000)
    conv_angle_mrad: float = Field(gt=0, le=100)
    repeat: tuple[int, int] = Field(description="lateral supercell, unit cells in x and y")
    gpts: int = Field(gt=0, description="grid points across the supercell, 2^a·3^b")
    slices_per_cell: int = Field(2, ge=1, description="multislice slices per cell along z")
    scan_gpts: int = Field(8, ge=1, description="probe positions per cell edge")
    symmetry: Symmetry = "4mm"
    # Root-mean-square thermal displacement per element (Å), used only with frozen phonons.
    sigmas: dict[str, float] = {}
    note: str = ""

    @field_validator("gpts")
    @classmethod
    def _fast_grid(cls, value: int) -> int:
        if not is_smooth_23(value):
            raise ValueError(f"gpts = {value} is not 2^a·3^b (e.g. 288, 324): FFTs get slow")
        return value

    @field_validator("basis")
    @classmethod
    def _basis_matches(cls, value, info):
        symbols = info.data.get("symbols")
        if symbols is not None and len(symbols) != len(value):
            raise ValueError(f"basis has {len(value)} sites for {len(symbols)} symbols")
        return value

    @cached_property
    def _unit_cell(self):
        from ase.build import surface
        from ase.spacegroup import crystal

        atoms = crystal(
            list(self.symbols),
            basis=[list(b) for b in self.basis],
            spacegroup=self.spacegroup,
            cellpar=list(self.cellpar),
        )
        if self.direction != (0, 0, 1):
            atoms = surface(atoms, self.direction, layers=1, periodic=True)
        cell = np.asarray(atoms.cell)
        if not np.allclose(cell, np.diag(np.diag(cell)), atol=1e-8):
            raise ValueError(
                f"{self.name} along {list(self.direction)} gives a non-orthogonal cell; "
                "only orthogonal cells with the beam along z are supported"
            )
        return atoms

    def atoms(self):
        """The unit cell (ase.Atoms) with the zone axis along z; a fresh copy each call."""
        return self._unit_cell.copy()

    @property
    def cell_lengths(self) -> tuple[float, float, float]:
        """Edges of the orthogonal unit cell along x, y and the beam (Å)."""
        cell = np.asarray(self._unit_cell.cell)
        return float(cell[0, 0]), float(cell[1, 1]), float(cell[2, 2])

    @property
    def direction_label(self) -> str:
        """The zone axis as the Direction column writes it, e.g. "[001]"."""
        return "[" + "".join(str(i) for i in self.direction) + "]"


SYSTEMS: dict[int, MaterialSystem] = {
    s.id: s
    for s in (
        MaterialSystem(
            id=0,
            name="TiO2-rutile",
            material="Rutile",
            symbols=("Ti", "O"),
            basis=((0.0, 0.0, 0.0), (0.3053, 0.3053, 0.0)),
            spacegroup=136,
            cellpar=(4.594, 4.594, 2.959, 90, 90, 90),
            energy_kev=200,
            conv_angle_mrad=15,
            repeat=(5, 5),
            gpts=288,  # 22.97 Å at 0.080 Å: the same real-space sampling as SrTiO3's
            sigmas={"Ti": 0.072, "O": 0.081},  # approximate room-temperature values
            note=(
                "P4_2/mnm: the 4-fold axis is a 4_2 screw and the axial mirrors are glides, "
                "so 4mm maps a slab onto the one starting half a cell deeper (the other "
                "termination); only the diagonal mirrors and the 2-fold hold exactly"
            ),
        ),
        MaterialSystem(
            id=1,
            name="SrTiO3",
            material="Strontium titanate",
            symbols=("Sr", "Ti", "O"),
            basis=((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0)),
            spacegroup=221,
            cellpar=(3.905, 3.905, 3.905, 90, 90, 90),
            energy_kev=300,
            conv_angle_mrad=20,
            repeat=(6, 6),
            gpts=288,  # 23.43 Å at 0.081 Å, detector 0.84 mrad/px at 300 kV
            sigmas={"Sr": 0.083, "Ti": 0.071, "O": 0.091},  # approximate room-temperature values
        ),
    )
}


def get_system(key: int | str) -> MaterialSystem:
    """A system by ID or by name (case-insensitive); KeyError lists what exists."""
    if isinstance(key, int) and key in SYSTEMS:
        return SYSTEMS[key]
    if isinstance(key, str):
        if key.isdigit() and int(key) in SYSTEMS:
            return SYSTEMS[int(key)]
        for s in SYSTEMS.values():
            if s.name.lower() == key.lower():
                return s
    known = ", ".join(f"{s.id} ({s.name})" for s in SYSTEMS.values())
    raise KeyError(f"no PACBED system {key!r}; known: {known}")
