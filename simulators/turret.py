"""The simulated objective turret: a Micro-Manager state device whose positions are the
objectives, each with its own optics and its own small misalignment.

Real objectives are neither co-centred nor parfocal: changing from 5x to 50x moves the
image by some micrometres and the focus by some more. The simulator knows the true
offsets (`SimObjective`), the lab's configuration holds what was calibrated, and the test
of a revisit is whether image registration finds the flake despite the difference.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymmcore_plus.experimental.unicore import StateDevice

__all__ = ["SimObjective", "SimTurret", "calibrated", "default_turret"]


class SimObjective(BaseModel):
    """One objective on the simulated turret, as it really is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1)
    magnification: float = Field(..., gt=0)
    numerical_aperture: float = Field(..., gt=0, lt=1.6)
    pixel_size_um: float = Field(..., gt=0)
    # Where this objective looks, and where it focuses, against the scanning objective.
    offset_x_um: float = 0.0
    offset_y_um: float = 0.0
    offset_z_um: float = 0.0


def default_turret(scanning: SimObjective) -> list[SimObjective]:
    """1x for finding the chip, the scanning objective, 20x and 50x for revisits (pixel
    sizes for the same camera; offsets of a few to tens of micrometres, as measured on
    commercial turrets)."""
    scale = scanning.pixel_size_um * scanning.magnification
    return [
        SimObjective(
            name="1x", magnification=1.0, numerical_aperture=0.03, pixel_size_um=scale,
            offset_x_um=-18.0, offset_y_um=11.0, offset_z_um=-45.0,
        ),
        scanning,
        SimObjective(
            name="20x", magnification=20.0, numerical_aperture=0.45, pixel_size_um=scale / 20,
            offset_x_um=6.5, offset_y_um=-4.0, offset_z_um=3.2,
        ),
        SimObjective(
            name="50x", magnification=50.0, numerical_aperture=0.8, pixel_size_um=scale / 50,
            offset_x_um=9.0, offset_y_um=7.5, offset_z_um=4.1,
        ),
    ]  # fmt: skip


def calibrated(turret: list[SimObjective], scanning_name: str) -> list[dict]:
    """What a lab's calibration of this turret would have measured: the true offsets to
    within a few micrometres, differently for each objective (a calibration a while ago,
    the turret since knocked), so that a revisit must re-centre by registration. As
    `[[objectives]]` entries (`hardware.config.ObjectiveConfig` fields)."""
    rng = np.random.default_rng(20)  # fixed, so runs are reproducible
    out = []
    for o in turret:
        if o.name == scanning_name:
            continue
        ex, ey = rng.uniform(3.0, 6.0, 2) * rng.choice([-1.0, 1.0], 2)
        out.append(
            {
                "name": o.name,
                "magnification": o.magnification,
                "numerical_aperture": o.numerical_aperture,
                "pixel_size_um": o.pixel_size_um,
                "offset_x_um": round(o.offset_x_um + ex, 2),
                "offset_y_um": round(o.offset_y_um + ey, 2),
                "offset_z_um": round(o.offset_z_um + rng.uniform(-0.3, 0.3), 2),
            }
        )
    return out


class SimTurret(StateDevice):
    """Objective turret: state i is objective i; changing it takes `switch_s` seconds."""

    def __init__(self, objectives: list[SimObjective], on_change, current: int) -> None:
        super().__init__({i: o.name for i, o in enumerate(objectives)})
        self._objectives = objectives
        self._state = current
        self._on_change = on_change

    def get_state(self) -> int:
        return self._state

    def set_state(self, position: int) -> None:
        if not 0 <= int(position) < len(self._objectives):
            raise ValueError(f"turret has no position {position}")
        self._state = int(position)
        self._on_change(self._objectives[self._state])
