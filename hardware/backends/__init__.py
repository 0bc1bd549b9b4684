"""Backends that build a `Microscope`: the simulator, or any Micro-Manager config file."""

from __future__ import annotations

from ..config import HardwareConfig, ObjectiveConfig, TravelLimits
from ..microscope import Microscope

__all__ = ["open_microscope"]


def open_microscope(
    hardware: HardwareConfig,
    objective: ObjectiveConfig,
    limits: TravelLimits,
    simulator: object | None = None,
) -> Microscope:
    """Open the configured backend; `simulator` is the SimulatorConfig for `simulator`."""
    if hardware.backend == "simulator":
        from .simulator import open_simulated_microscope

        return open_simulated_microscope(hardware, objective, limits, simulator)
    from .mmconfig import open_mmconfig_microscope

    return open_mmconfig_microscope(hardware, objective, limits)
