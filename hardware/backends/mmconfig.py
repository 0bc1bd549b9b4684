"""The `mmconfig` backend: any Micro-Manager hardware configuration (.cfg) file.

Loaded by UniMMCore, so the file may also name Python devices (`#py pyDevice,...` lines),
such as flakescan's serial stage drivers, beside the C++ device adapters.
"""

from __future__ import annotations

import math

from pymmcore_plus import DeviceInitializationState
from pymmcore_plus.experimental.unicore import UniMMCore

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
    core = UniMMCore(mm_path=paths[0], adapter_paths=paths) if paths else UniMMCore()
    try:
        core.loadSystemConfiguration(str(hardware.mm_config))
    except Exception as exc:
        raise HardwareError(f"loading {hardware.mm_config} failed: {exc}") from exc
    # pymmcore-plus only logs a Python device whose initialisation failed: check them all.
    failed = [
        label
        for label in core.getLoadedDevices()
        if label != "Core"
        and core.getDeviceInitializationState(label)
        != DeviceInitializationState.InitializedSuccessfully
    ]
    if failed:
        core.unloadAllDevices()
        raise HardwareError(f"{hardware.mm_config}: devices failed to initialise: {failed}")
    core.setTimeoutMs(hardware.timeout_ms)
    from_cfg = core.getPixelSizeUm()
    if from_cfg <= 0:
        # The .cfg defines no pixel size for this objective: take the configured one.
        core.definePixelSizeConfig(objective.name)
        core.setPixelSizeUm(objective.name, objective.pixel_size_um)
        core.setPixelSizeConfig(objective.name)
    elif "pixel_size_um" in objective.model_fields_set and not math.isclose(
        from_cfg, objective.pixel_size_um, rel_tol=0.01
    ):
        # Both say something, and they disagree: positions of hits would be wrong.
        raise HardwareError(
            f"objective.pixel_size_um = {objective.pixel_size_um} but {hardware.mm_config} "
            f"calibrates {from_cfg} um/px for the current objective; fix one of them"
        )
    return Microscope(core, limits, pixels_linear=hardware.pixels_linear)
