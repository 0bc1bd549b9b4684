"""Replaying a recorded scan: a camera that serves the field of view from a mosaic.

A lab replays a scan it recorded (a stitched mosaic, or its tiles with their positions)
through the daemon to tune preselection thresholds or try a new model, with the stages
simulated and the camera answering from the recording at wherever the stage is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from .devices import ExposureCamera, StageState
from .mosaic import Mosaic

__all__ = ["ReplayCamera"]


class ReplayCamera(ExposureCamera):
    """Colour camera whose frames are crops of a mosaic at the stage position."""

    def __init__(self, state: StageState, mosaic: Mosaic, width_px: int, height_px: int) -> None:
        super().__init__(exposure_ms=10.0)
        self._state = state
        self._mosaic = mosaic
        self._shape = (height_px, width_px, 3)

    def sensor_shape(self) -> tuple[int, int, int]:
        return self._shape

    def dtype(self) -> type:
        return self._mosaic.image.dtype.type

    def snap(self, buffer: np.ndarray) -> Mapping:
        n = self._state.next_frame()
        x, y = self._state.xy.position(time.monotonic())
        buffer[:] = self._mosaic.crop(x, y, self._shape[:2])
        return {"ReplayFrame": str(n), "ReplayStageX_um": f"{x:.3f}", "ReplayStageY_um": f"{y:.3f}"}
