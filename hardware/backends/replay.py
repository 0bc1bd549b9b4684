"""The `replay` backend: simulated stages, and a camera answering from a recorded scan."""

from __future__ import annotations

import math
from pathlib import Path

from pymmcore_plus.experimental.unicore import UniMMCore

from flakescan.simulators import devices as devices_module
from flakescan.simulators.config import FaultSpec, ReplayConfig
from flakescan.simulators.devices import SimFocusStage, SimXYStage, StageState
from flakescan.simulators.mosaic import Mosaic
from flakescan.simulators.replay import ReplayCamera

from ..config import HardwareConfig, ObjectiveConfig, TravelLimits
from ..errors import HardwareError
from ..microscope import Microscope

__all__ = ["open_replay_microscope"]


def load_recording(replay: ReplayConfig) -> Mosaic:
    """The recorded mosaic, or the recorded tiles stitched by their positions."""
    try:
        if replay.mosaic is not None:
            return Mosaic.load(replay.mosaic)
        assert replay.tiles is not None
        return Mosaic.from_tiles(replay.tiles)
    except (OSError, ValueError, KeyError) as exc:
        raise HardwareError(f"replay: cannot read the recording: {exc}") from exc


def open_replay_microscope(
    hardware: HardwareConfig,
    objective: ObjectiveConfig,
    limits: TravelLimits,
    replay: ReplayConfig | None,
) -> Microscope:
    if replay is None:
        raise HardwareError("backend 'replay' needs a [replay] section (mosaic or tiles)")
    mosaic = load_recording(replay)
    if "pixel_size_um" in objective.model_fields_set and not math.isclose(
        objective.pixel_size_um, mosaic.um_per_px, rel_tol=0.01
    ):
        raise HardwareError(
            f"objective.pixel_size_um = {objective.pixel_size_um} but the recording has "
            f"{mosaic.um_per_px} um/px; replay serves the recording's pixels unscaled"
        )
    state = StageState(stage=replay.stage, faults=FaultSpec())
    core = UniMMCore(mm_path=str(Path(devices_module.__file__).parent))
    core.loadPyDevice("XY", SimXYStage(state))
    core.loadPyDevice("Z", SimFocusStage(state))
    core.loadPyDevice("Camera", ReplayCamera(state, mosaic, replay.width_px, replay.height_px))
    core.initializeAllDevices()
    core.setXYStageDevice("XY")
    core.setFocusDevice("Z")
    core.setCameraDevice("Camera")
    core.setTimeoutMs(hardware.timeout_ms)
    core.definePixelSizeConfig("recording")
    core.setPixelSizeUm("recording", mosaic.um_per_px)
    core.setPixelSizeConfig("recording")
    mic = Microscope(core, limits, pixels_linear=mosaic.linear)
    mic.default_region_um = mosaic.extent_um
    return mic
