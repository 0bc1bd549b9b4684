"""One facade over a Micro-Manager core: XY stage, focus, camera and pixel size.

Everything above the hardware layer moves and images through this class, so the two rules
of hardware safety live here once: no move leaves the configured travel limits (checked
before anything is commanded), and no device fault is swallowed (every failure of the core
or a device is raised as a `HardwareError` naming the device). The fault policy
(`[hardware.fault_policy]`) applies here too, where the device calls are made: a failed
move, a stage that does not arrive, a camera error or timeout, a corrupt frame is retried or
the stage re-homed within a bound, counted, and raised once the bound is spent.
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

from .config import HardwareConfig, ObjectiveConfig, ParkConfig, TravelLimits
from .errors import DeviceError, HardwareError, TravelLimitError
from .fault_policy import FaultKind, FaultPolicy, FaultRunner
from .frame import Frame
from .frame_check import frame_problem
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


class CorruptFrame(DeviceError):
    """A frame came back, but not as an image (black, partial, saturated, wrong shape)."""


def _is_timeout(exc: BaseException) -> bool:
    """Whether a fault is a timeout: by type where the device keeps it, else by its text
    (Micro-Manager reports a camera that never delivered as "... timed out" / "timeout")."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, TimeoutError):
            return True
        chain = chain.__cause__
    text = str(exc).lower()
    return "timeout" in text or "timed out" in text


def _snap_fault_kind(exc: Exception) -> FaultKind:
    if isinstance(exc, CorruptFrame):
        return "corrupt_frame"
    return "snap_timeout" if _is_timeout(exc) else "snap_error"


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
        self.faults = FaultRunner(FaultPolicy())
        self.check_frames = True
        self.park_config = ParkConfig()
        # Where the stages were last sent: a retry after a timeout commands it again.
        self._xy_target: tuple[float, float] | None = None
        self._z_target: float | None = None

    def configure(self, hardware: HardwareConfig) -> None:
        """Take the fault policy, the frame check and the park position from the config;
        a park position or re-home target outside the travel limits is refused
        (HardwareError)."""
        try:
            hardware.check_against(self.limits)
        except ValueError as exc:
            raise HardwareError(str(exc)) from None
        self.faults = FaultRunner(hardware.fault_policy)
        self.check_frames = hardware.check_frames
        self.park_config = hardware.park

    def fault_counts(self) -> dict[str, int]:
        """Retries per kind of fault and re-homes since the last reset (nonzero only)."""
        return self.faults.counts()

    def reset_fault_counts(self) -> None:
        self.faults.reset()

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
        """Move the stage to (x, y) um; refused before commanding if outside the limits.
        A failed command is retried (or the stage re-homed first) under the policy."""
        self.check_xy(x_um, y_um)
        self._xy_target = (float(x_um), float(y_um))
        self.faults.run(
            "xy_move",
            self.xy_label,
            f"move to ({x_um:.1f}, {y_um:.1f}) um",
            lambda: self._command_xy(x_um, y_um),
            rehome=self.home_xy,
        )
        if wait:
            self.wait_xy()

    def move_z(self, z_um: float, *, wait: bool = True) -> None:
        """Move focus to z um; refused before commanding if outside the limits."""
        self.check_z(z_um)
        self._z_target = float(z_um)
        self.faults.run(
            "z", self.z_label, f"move to z {z_um:.2f} um", lambda: self._command_z(z_um)
        )
        if wait:
            self.wait_z()

    def _command_xy(self, x_um: float, y_um: float) -> None:
        self.check_xy(x_um, y_um)
        with _device_call(self.xy_label, f"move to ({x_um:.1f}, {y_um:.1f}) um"):
            self.core.setXYPosition(float(x_um), float(y_um))

    def _command_z(self, z_um: float) -> None:
        self.check_z(z_um)
        with _device_call(self.z_label, f"move to z {z_um:.2f} um"):
            self.core.setZPosition(float(z_um))

    def _stop_and_resend(self, label: str) -> None:
        """Before retrying a move that did not arrive: stop the stage, send it again."""
        with _device_call(label, "stop"):
            self.core.stop(label)
        if label == self.xy_label and self._xy_target is not None:
            self._command_xy(*self._xy_target)
        elif label == self.z_label and self._z_target is not None:
            self._command_z(self._z_target)

    def wait_xy(self) -> None:
        """Wait for the XY stage to arrive; a stage that does not (timeout, stuck busy
        flag) is stopped and sent again, or re-homed and sent again, under the policy."""
        label = self.xy_label
        target = self._xy_target
        where = "" if target is None else f" to ({target[0]:.1f}, {target[1]:.1f}) um"
        self.faults.run(
            "xy_timeout",
            label,
            f"wait for the move{where}",
            lambda: self._wait_device(label, f"wait for the move{where}"),
            recover=lambda: self._stop_and_resend(label),
            rehome=self.home_xy,
        )

    def wait_z(self) -> None:
        label = self.z_label
        self.faults.run(
            "z",
            label,
            "wait for the focus move",
            lambda: self._wait_device(label),
            recover=lambda: self._stop_and_resend(label),
        )

    def wait(self, label: str) -> None:
        """Block until a device is idle; a device stuck busy past the timeout raises
        (for the stages, after what the fault policy allows)."""
        if label == self.xy_label:
            self.wait_xy()
        elif label == self.z_label:
            self.wait_z()
        else:
            self._wait_device(label)

    def _wait_device(self, label: str, action: str = "wait for device") -> None:
        with _device_call(label, action):
            self.core.waitForDevice(label)

    def home_xy(self) -> None:
        """Re-home the XY stage (the controller's homing run), then leave it idle at home.

        Refused, nothing commanded, if the configured home position lies outside the
        travel limits; a stage that cannot home (the Prior driver) raises saying so.
        """
        label = self.xy_label
        hx, hy = self.faults.policy.home_xy_um
        if not self.limits.contains_xy(hx, hy):
            raise HardwareError(
                f"{label}: re-homing refused: home ({hx}, {hy}) um lies outside the travel "
                "limits; nothing was commanded"
            )
        log.warning("%s: re-homing the stage", label)
        with _device_call(label, "stop"):
            self.core.stop(label)
        with _device_call(label, "home"):
            self.core.home(label)
        self._wait_device(label)

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
        return self.frame_from(self.snap_image(), index=index)

    def snap_image(self) -> np.ndarray:
        """Snap one image, checked (`frame_check`); a camera error, timeout or corrupt
        frame is snapped again under the fault policy, and raised once it is spent."""
        label = self.camera_label
        return self.faults.run(_snap_fault_kind, label, "snap", self._snap_once)

    def _snap_once(self) -> np.ndarray:
        label = self.camera_label
        with _device_call(label, "snap"):
            self.core.snapImage()
            image = self.core.getImage()
        if self.check_frames and (problem := frame_problem(image, self.frame_shape)):
            raise CorruptFrame(f"{label}: corrupt frame: {problem}")
        return image

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

    def park(self) -> dict[str, Any]:
        """Leave the stage where it is safe: motion stopped, Z up to the park plane (away
        from the chip), then XY to the park position if one is configured.

        Meant for shutdown (SIGTERM), after a scan was cancelled, with the stage perhaps in
        a fault: it never raises for a device fault, it logs it and says what it did. Every
        target is checked against the travel limits first; XY does not move unless Z got
        to the park plane (the objective is clear of the chip only then).
        """
        done: dict[str, Any] = {"stopped": [], "z": None, "xy": None, "problems": []}
        for label in (self.xy_label, self.z_label):
            try:
                with _device_call(label, "stop"):
                    self.core.stop(label)
                done["stopped"].append(label)
            except HardwareError as exc:
                log.error("park: %s", exc)
                done["problems"].append(str(exc))
        cfg, z_ok = self.park_config, False
        try:
            z = cfg.target_z(self.limits)
            self.check_z(z)
            self._command_z(z)
            self._wait_device(self.z_label)
            done["z"], z_ok = z, True
        except HardwareError as exc:
            log.error("park: Z not parked: %s", exc)
            done["problems"].append(f"Z not parked: {exc}")
        if cfg.xy_um is not None:
            if not z_ok:
                done["problems"].append("XY not parked: Z is not at the park plane")
            else:
                try:
                    self.check_xy(*cfg.xy_um)
                    self._command_xy(*cfg.xy_um)
                    self._wait_device(self.xy_label)
                    done["xy"] = list(cfg.xy_um)
                except HardwareError as exc:
                    log.error("park: XY not parked: %s", exc)
                    done["problems"].append(f"XY not parked: {exc}")
        log.info("parked: %s", done)
        return done

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
