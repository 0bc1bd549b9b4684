"""The `mmconfig` backend: any Micro-Manager hardware configuration (.cfg) file."""

from __future__ import annotations

from pymmcore_plus import CMMCorePlus

from ..config import HardwareConfig, ObjectiveConfig, TravelLimits
from ..errors import HardwareError
from ..microscope import Microscope

__all__ = ["open_mmconfig_microscope"]


def open_mmconfig_microscope(
    hardware: HardwareConfig, objective: ObjectiveConfig, limits: TravelLimits
) -> Microscope:
    if hardware.mm_config is None or not hardware.mm_config.is_file():
        raise HardwareError(f"hardware.mm_config: no such file: {hardware.mm_config}")
    paths = [str(p) for p in hardware.adapter_paths]
    # Without adapter paths, pymmcore-plus finds an installed Micro-Manager itself.
    core = CMMCorePlus(mm_path=paths[0], adapter_paths=paths) if paths else CMMCorePlus()
    try:
        core.loadSystemConfiguration(str(hardware.mm_config))
    except Exception as exc:
        raise HardwareError(f"loading {hardware.mm_config} failed: {exc}") from exc
    core.setTimeoutMs(hardware.timeout_ms)
    if core.getPixelSizeUm() <= 0:
        # The .cfg defines no pixel size for this objective: take the configured one.
        core.definePixelSizeConfig(objective.name)
        core.setPixelSizeUm(objective.name, objective.pixel_size_um)
        core.setPixelSizeConfig(objective.name)
    return Microscope(core, limits, pixels_linear=hardware.pixels_linear)
