"""One facade over a Micro-Manager core: XY stage, focus, camera and pixel size.

Everything above the hardware layer moves and images through this class, so the two rules
of hardware safety live here once: no move leaves the configured travel limits (checked
before anything is commanded), and no device fault is swallowed (every failure of the core
or a device is raised as a `HardwareError` naming the device).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import pymmcore
from pymmcore_plus import CMMCorePlus

from .config import ObjectiveConfig, TravelLimits
from .errors import DeviceError, HardwareError, TravelLimitError
from .frame import Frame
from .objectives import ObjectiveTurret

__all__ = ["Microscope"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextmanager
def _device_call(device: str, action: str) -> Iterator[None]:
    """Re-raise anything a device or the core throws as a DeviceError that names both."""
    try:
        yield
    except HardwareError:
        raise
    except Exception as exc:
        raise DeviceError(f"{device}: {action} failed: {exc}") from exc


class Microscope:
    """XY stage, focus and camera of one Micro-Manager core, with travel limits enforced."""

    def __init__(
        self,
        core: CMMCorePlus,
        limits: TravelLimits,
        *,
        pixels_linear: bool = True,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.limits = limits
        self.pixels_linear = pixels_linear
        self._on_close = on_close
        # What a scan covers when nobody says: the chip (simulator), the recording (replay).
        self.default_region_um: tuple[float, float, float, float] | None = None
        for role, label in (
            ("XY stage", core.getXYStageDevice()),
            ("focus", core.getFocusDevice()),
            ("camera", core.getCameraDevice()),
        ):
            if not label:
                raise HardwareError(f"the Micro-Manager configuration has no {role} device")
        if self.pixel_size_um <= 0:
            raise HardwareError("no pixel size is defined for the current objective")
        # One objective unless a backend sets up the turret (`set_objectives`).
        self.turret: ObjectiveTurret | None = None

    def set_objectives(
        self,
        scanning: ObjectiveConfig,
        others: list[ObjectiveConfig],
        device: str | None,
    ) -> None:
        """Tell the microscope its objectives (calibrated offsets) and its turret device."""
        self.turret = ObjectiveTurret(self.core, scanning, others, device)

    @property
    def objective(self) -> ObjectiveConfig | None:
        return self.turret.current() if self.turret is not None else None

    def set_objective(self, name: str) -> None:
        """Change objective, keeping the chip point at the centre of view and in focus
        (stage and focus moved by the calibrated offsets). Every target is checked against
        the travel limits before the turret turns."""
        if self.turret is None:
            raise HardwareError("this microscope has no objectives configured")
        new, cur = self.turret.get(name), self.turret.current()
        if new.name == cur.name:
            return
        x, y = self.position()
        z = self.z()
        tx, ty = x - (new.offset_x_um - cur.offset_x_um), y - (new.offset_y_um - cur.offset_y_um)
        tz = z + (new.offset_z_um - cur.offset_z_um)
        self.check_xy(tx, ty)
        self.check_z(tz)
        device = self.turret.device
        assert device is not None  # a turret with several objectives has one
        with _device_call(device, f"turn to {new.turret_label}"):
            self.core.setStateLabel(device, new.turret_label)
        self.wait(device)
        if new.name in self.core.getAvailablePixelSizeConfigs():
            with _device_call("core", f"pixel size config {new.name}"):
                self.core.setPixelSizeConfig(new.name)
        actual = self.pixel_size_um
        if abs(actual - new.pixel_size_um) > 0.02 * new.pixel_size_um:
            raise HardwareError(
                f"objective {new.name}: Micro-Manager's pixel size is {actual} um, the "
                f"configuration says {new.pixel_size_um} um"
            )
        self.move_xy(tx, ty)
        self.move_z(tz)

    def look_at(self, x_um: float, y_um: float, *, wait: bool = True) -> None:
        """Move so that the objective in place images the chip point (x, y) at its centre."""
        o = self.objective
        dx, dy = (o.offset_x_um, o.offset_y_um) if o is not None else (0.0, 0.0)
        self.move_xy(x_um - dx, y_um - dy, wait=wait)

    # -- devices -----------------------------------------------------------------------
    @property
    def xy_label(self) -> str:
        return self.core.getXYStageDevice()

    @property
    def z_label(self) -> str:
        return self.core.getFocusDevice()

    @property
    def camera_label(self) -> str:
        return self.core.getCameraDevice()

    @property
    def pixel_size_um(self) -> float:
        return float(self.core.getPixelSizeUm())

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(height, width) of camera frames in pixels."""
        return (int(self.core.getImageHeight()), int(self.core.getImageWidth()))

    @property
    def fov_um(self) -> tuple[float, float]:
        """(width, height) of the field of view in um."""
        h, w = self.frame_shape
        return (w * self.pixel_size_um, h * self.pixel_size_um)

    # -- limits ------------------------------------------------------------------------
    def check_xy(self, x_um: float, y_um: float) -> None:
        """Raise TravelLimitError if (x, y) lies outside the travel limits."""
        lim = self.limits
        if not (np.isfinite(x_um) and np.isfinite(y_um)) or not lim.contains_xy(x_um, y_um):
            raise TravelLimitError(
                f"XY target ({x_um:.1f}, {y_um:.1f}) um is outside the travel limits "
                f"x [{lim.x_min_um}, {lim.x_max_um}], y [{lim.y_min_um}, {lim.y_max_um}]"
            )

    def check_z(self, z_um: float) -> None:
        """Raise TravelLimitError if z lies outside the travel limits."""
        lim = self.limits
        if not np.isfinite(z_um) or not lim.contains_z(z_um):
            raise TravelLimitError(
                f"Z target {z_um:.2f} um is outside the travel limits "
                f"[{lim.z_min_um}, {lim.z_max_um}]"
            )

    # -- motion ------------------------------------------------------------------------
    def position(self) -> tuple[float, float]:
        with _device_call(self.xy_label, "read position"):
            x, y = self.core.getXYPosition()
        return (float(x), float(y))

    def z(self) -> float:
        with _device_call(self.z_label, "read position"):
            return float(self.core.getZPosition())

    def move_xy(self, x_um: float, y_um: float, *, wait: bool = True) -> None:
        """Move the stage to (x, y) um; refused before commanding if outside the limits."""
        self.check_xy(x_um, y_um)
        with _device_call(self.xy_label, f"move to ({x_um:.1f}, {y_um:.1f}) um"):
            self.core.setXYPosition(float(x_um), float(y_um))
        if wait:
            self.wait(self.xy_label)

    def move_z(self, z_um: float, *, wait: bool = True) -> None:
        """Move focus to z um; refused before commanding if outside the limits."""
        self.check_z(z_um)
        with _device_call(self.z_label, f"move to z {z_um:.2f} um"):
            self.core.setZPosition(float(z_um))
        if wait:
            self.wait(self.z_label)

    def wait(self, label: str) -> None:
        """Block until a device is idle; a device stuck busy past the timeout raises."""
        with _device_call(label, "wait for device"):
            self.core.waitForDevice(label)

    def stop(self) -> list[str]:
        """Stop stage motion (after a fault, or when the daemon stops).

        Tries every stage even if one fails, and returns what failed, for the caller to
        report: a stop that did not happen must not pass unnoticed.
        """
        problems = []
        for label in (self.xy_label, self.z_label):
            try:
                self.core.stop(label)
            except Exception as exc:
                log.error("stopping %s failed: %s", label, exc)
                problems.append(f"{label}: stop failed: {exc}")
        return problems

    # -- imaging -----------------------------------------------------------------------
    def snap(self, index: int = 0) -> Frame:
        """Snap one image at the current position and return it as a Frame."""
        with _device_call(self.camera_label, "snap"):
            self.core.snapImage()
            image = self.core.getImage()
        return self.frame_from(image, index=index)

    def frame_from(
        self, image: np.ndarray, *, index: int = 0, metadata: dict | None = None
    ) -> Frame:
        """Wrap an image just taken with the stage position read now, pixel size and time."""
        x, y = self.position()
        return self._frame(image, x, y, self.z(), index, metadata)

    def frame_from_mda(self, image: np.ndarray, event: Any, meta: dict, *, index: int) -> Frame:
        """Wrap an MDA frame with the position the engine recorded when it was taken."""
        pos = meta.get("position") or {}
        x = pos.get("x", event.x_pos)
        y = pos.get("y", event.y_pos)
        if x is None or y is None:
            raise DeviceError(f"frame {index}: no stage position was recorded with the image")
        z = pos.get("z", event.z_pos)
        return self._frame(image, x, y, self.z() if z is None else z, index, None)

    def _frame(
        self, image: np.ndarray, x: float, y: float, z: float, index: int, metadata: dict | None
    ) -> Frame:
        # The chip point at the centre of view: the stage plus the objective's offset.
        o = self.objective
        dx, dy = (o.offset_x_um, o.offset_y_um) if o is not None else (0.0, 0.0)
        return Frame(
            image=image,
            x_um=float(x) + dx,
            y_um=float(y) + dy,
            z_um=float(z),
            pixel_size_um=self.pixel_size_um,
            timestamp=time.time(),
            linear=self.pixels_linear,
            index=index,
            metadata=dict(metadata or {}),
        )

    def close(self) -> None:
        """Release the devices (unload them from the core) and stop the core calling back.

        MMCore delivers some notifications from a thread of its own; one arriving while
        the interpreter exits cannot take the GIL, and the forced unwind that follows is
        swallowed by MMCore's catch-all, which aborts the process (SIGABRT, "exception not
        rethrown"). pymmcore-plus unregisters its relay only when the core is collected,
        which at exit may be too late: it is done here, once the devices are gone.
        """
        try:
            self.core.unloadAllDevices()
        finally:
            pymmcore.CMMCore.registerCallback(self.core, None)
            if self._on_close is not None:
                self._on_close()

    def describe(self) -> dict[str, Any]:
        """What status reports about the hardware."""
        w, h = self.fov_um
        return {
            "xy_stage": self.xy_label,
            "focus": self.z_label,
            "camera": self.camera_label,
            "pixel_size_um": self.pixel_size_um,
            "fov_um": [round(w, 2), round(h, 2)],
            "limits": self.limits.model_dump(),
            "pixels_linear": self.pixels_linear,
            "objectives": self.turret.describe() if self.turret is not None else None,
            "default_region_um": list(self.default_region_um) if self.default_region_um else None,
        }
