"""Backends that build a `Microscope`: the simulator, or any Micro-Manager config file."""

from __future__ import annotations

from ..config import HardwareConfig, ObjectiveConfig, TravelLimits
from ..errors import HardwareError
from ..microscope import Microscope

__all__ = ["check_field_of_view", "open_microscope"]


def open_microscope(
    hardware: HardwareConfig,
    objective: ObjectiveConfig,
    limits: TravelLimits,
    simulator: object | None = None,
    replay: object | None = None,
    objectives: list[ObjectiveConfig] | None = None,
) -> Microscope:
    """Open the configured backend; `simulator` / `replay` are those backends' sections,
    `objectives` the other objectives with their calibrated offsets (`[[objectives]]`)."""
    if hardware.backend == "simulator":
        from .simulator import open_simulated_microscope

        mic = open_simulated_microscope(hardware, objective, limits, simulator, objectives)
    elif hardware.backend == "replay":
        from .replay import open_replay_microscope

        mic = open_replay_microscope(hardware, objective, limits, replay)
    else:
        from .mmconfig import open_mmconfig_microscope

        mic = open_mmconfig_microscope(hardware, objective, limits)
    try:
        mic.configure(hardware)
        if hardware.backend == "replay":
            # A recording is served zero beyond its edges: that is no transfer fault.
            mic.check_frames = False
        if hardware.backend == "mmconfig":
            mic.set_objectives(objective, list(objectives or []), hardware.objective_device)
        check_field_of_view(mic, objective)
    except HardwareError:
        mic.close()
        raise
    return mic


def check_field_of_view(mic: Microscope, objective: ObjectiveConfig) -> None:
    """The configured field of view, if given, must be what camera and pixel size give."""
    if objective.field_of_view_um is None:
        return
    actual = mic.fov_um
    if any(abs(a - b) > 0.02 * b for a, b in zip(actual, objective.field_of_view_um, strict=True)):
        h, w = mic.frame_shape
        raise HardwareError(
            f"objective.field_of_view_um = {list(objective.field_of_view_um)} does not match "
            f"the camera: {w} x {h} px at {mic.pixel_size_um} um/px is "
            f"{[round(a, 1) for a in actual]} um"
        )
