"""Per-chip conditions: no two chips, lamps or days look quite the same.

A data set drawn from one set of imaging parameters teaches a network one microscope. Here
each chip draws its own oxide thickness (wafer-to-wafer spread), illumination profile,
flare, white balance, exposure and tilt from its seed, within ranges a lab sees, so a set
of chips is diverse and every draw can be made again.
"""

from __future__ import annotations

import numpy as np

from .config import SimulatorConfig

__all__ = ["draw_conditions"]


def draw_conditions(sim: SimulatorConfig, seed: int) -> SimulatorConfig:
    """A copy of `sim` with this chip's conditions drawn from `seed` (nominal values kept
    as the centre of each range)."""
    rng = np.random.default_rng([seed, 0xC0DE])
    u = rng.uniform
    chip = sim.chip.model_dump()
    chip["oxide_nm"] = sim.chip.oxide_nm * u(0.98, 1.02)  # +-2 % across wafers
    im = sim.imaging.model_dump()
    im.update(
        vignetting=u(0.04, 0.22),
        illumination_offset=(u(-0.2, 0.2), u(-0.2, 0.2)),
        illumination_gradient=u(0.0, 0.06),
        flare=u(0.08, 0.22),
        white_balance=tuple(u(0.9, 1.1, size=3).tolist()),
        exposure_ms=sim.imaging.exposure_ms * u(0.8, 1.15),
    )
    stage = sim.stage.model_dump()
    stage.update(tilt_x_um_per_mm=u(-2.0, 2.0), tilt_y_um_per_mm=u(-2.0, 2.0))
    return SimulatorConfig.model_validate(
        {
            **sim.model_dump(),
            "seed": seed,
            "vary_conditions": False,  # drawn: do not draw again
            "chip": chip,
            "imaging": im,
            "stage": stage,
        }
    )
