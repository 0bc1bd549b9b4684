"""Micro-Manager Python devices of the simulated microscope (pymmcore-plus UniMMCore).

They plug into the core exactly where a real stage, focus drive and camera would: the scan
daemon cannot tell them apart from hardware. The three share a `SimWorld`, the physical state
(chip, stage positions, clocks), the way real devices share one sample on one stand.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pymmcore_plus.experimental.unicore import (
    SimpleCameraDevice,
    StageDevice,
    XYStageDevice,
)

from .chip import Chip
from .config import FaultSpec, ImagingSpec, StageSpec
from .render import FieldRenderer
from .turret import SimObjective

__all__ = [
    "ExposureCamera",
    "SimCamera",
    "SimFocusStage",
    "SimWorld",
    "SimXYStage",
    "SimulatedFault",
    "SimulatedTimeout",
    "StageState",
]


class SimulatedFault(RuntimeError):
    """A fault injected by the simulator (configured in `[simulator.faults]`)."""


class SimulatedTimeout(SimulatedFault, TimeoutError):
    """An injected fault that is a timeout (a frame or a reply that never came)."""


@dataclass
class _Motion:
    """A linear move of one axis group: start, target and the times it begins and settles."""

    start: tuple[float, ...]
    target: tuple[float, ...]
    t0: float = 0.0
    t_arrive: float = 0.0
    t_settled: float = 0.0

    def position(self, now: float) -> tuple[float, ...]:
        if now >= self.t_arrive or self.t_arrive <= self.t0:
            return self.target
        f = (now - self.t0) / (self.t_arrive - self.t0)
        return tuple(a + f * (b - a) for a, b in zip(self.start, self.target, strict=True))

    def towards(self, target: tuple[float, ...], speed_um_s: float, settle_s: float) -> _Motion:
        """A new move from wherever the axes are now, at constant speed, then settling."""
        now = time.monotonic()
        start = self.position(now)
        dist = float(np.linalg.norm(np.subtract(target, start)))
        t_arrive = now + dist / speed_um_s
        return _Motion(start, tuple(float(v) for v in target), now, t_arrive, t_arrive + settle_s)

    def halted(self) -> _Motion:
        """Stopped where the axes are now."""
        here = self.position(time.monotonic())
        return _Motion(here, here)


@dataclass(kw_only=True)
class StageState:
    """What simulated stages share with the camera looking through them: positions,
    motion timing, counters and injected faults."""

    stage: StageSpec
    faults: FaultSpec
    xy: _Motion = field(default_factory=lambda: _Motion((0.0, 0.0), (0.0, 0.0)))
    z: _Motion = field(default_factory=lambda: _Motion((0.0,), (0.0,)))
    xy_moves: int = 0
    z_moves: int = 0
    xy_homes: int = 0
    frames: int = 0
    # The XY stage's injected motion fault of the move in progress ("stuck": arrived but
    # busy for ever; "stall": stopped part way, busy until stopped), and whether it is
    # latched until a home (`xy_fault_until_homed`) or spent by one.
    xy_fault: str | None = None
    xy_latched: str | None = None
    xy_fault_spent: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)  # the focus-drift clock
    _snaps_at: Counter = field(default_factory=Counter, repr=False)  # frames per spot
    # Every target the stages were commanded to ("xy", (x, y)) / ("z", (z,)), in order:
    # what the motion-safety tests audit.
    commanded: deque = field(default_factory=lambda: deque(maxlen=100_000), repr=False)

    def __post_init__(self) -> None:
        self.z = _Motion((self.stage.focus_z_um,), (self.stage.focus_z_um,))

    def next_frame(self) -> int:
        """Count a frame; raise the injected camera fault when its frame comes."""
        f = self.faults
        with self.lock:
            self.frames += 1
            n = self.frames
        if f.hits(n, f.snap_fail_on_frame, f.snap_fail_count):
            raise SimulatedTimeout(f"camera timeout: frame {n} never arrived")
        if f.hits(n, f.snap_hang_on_frame, f.snap_hang_count):
            time.sleep(f.snap_hang_s)  # the driver waits for the frame, then gives up
            raise SimulatedTimeout(f"camera timeout: frame {n} not delivered in {f.snap_hang_s} s")
        if f.hits(n, f.snap_error_on_frame, f.snap_error_count):
            raise SimulatedFault(f"camera error: transfer of frame {n} failed")
        return n

    def corrupt(self, n: int, buffer: np.ndarray) -> None:
        """Spoil frame n in place if a corrupt frame is injected for it, as cameras do:
        a dropped frame comes back black, a partial transfer leaves the rest of the buffer
        zero, a blown exposure is white but for its darkest corners."""
        f = self.faults
        if not f.hits(n, f.corrupt_on_frame, f.corrupt_count):
            return
        if f.corrupt_kind == "black":
            buffer[:] = 0
        elif f.corrupt_kind == "truncated":
            buffer[buffer.shape[0] // 3 :] = 0
        else:  # the exposure blown by a flash of stray light: 16 times the signal, clipped
            top = np.iinfo(buffer.dtype).max
            buffer[:] = np.minimum(buffer.astype(np.uint32) * 16, top).astype(buffer.dtype)

    def noise_draw(self, x_um: float, y_um: float, z_um: float) -> int:
        """The camera's noise draw for a frame taken here: keyed by the position (to the
        nanometre) and how often this spot was imaged before, so a frame is independent of
        every other frame, yet the first image of a spot is the same in every run of a
        seed: a scan resumed after a restart sees what the uninterrupted one saw."""
        spot = tuple(round(v * 1000) for v in (x_um, y_um, z_um))
        with self.lock:
            repeat = self._snaps_at[spot]
            self._snaps_at[spot] = repeat + 1
        digest = hashlib.blake2b(struct.pack("<4q", *spot, repeat), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def surface_z_um(self, x_um: float, y_um: float, now: float | None = None) -> float:
        """Height of the chip surface under the objective: tilted, bowed, and drifting."""
        s = self.stage
        now = time.monotonic() if now is None else now
        drift = s.focus_drift_um_per_min * (now - self.started) / 60.0
        tilt = (s.tilt_x_um_per_mm * x_um + s.tilt_y_um_per_mm * y_um) / 1000.0
        cx, cy = s.bow_centre_um
        bow = s.bow_um_per_mm2 * ((x_um - cx) ** 2 + (y_um - cy) ** 2) / 1e6
        return s.focus_z_um + tilt + bow + drift


@dataclass(kw_only=True)
class SimWorld(StageState):
    """The simulated microscope's state: stages plus the chip the camera renders."""

    chip: Chip
    imaging: ImagingSpec
    pixel_size_um: float  # of the scanning objective, in place at the start
    numerical_aperture: float
    seed: int = 0
    # The turret, true optics and offsets; empty: the scanning objective only, no offsets.
    objectives: list[SimObjective] = field(default_factory=list)
    objective: SimObjective | None = field(init=False, default=None)
    renderer: FieldRenderer = field(init=False)
    _renderers: dict[str, FieldRenderer] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.renderer = FieldRenderer(
            self.chip, self.imaging, self.pixel_size_um, self.numerical_aperture, seed=self.seed
        )
        scanning = [o for o in self.objectives if o.pixel_size_um == self.pixel_size_um]
        if scanning:
            self.objective = scanning[0]
            self._renderers[scanning[0].name] = self.renderer

    def select_objective(self, objective: SimObjective) -> None:
        """The turret turned: the camera now sees through this objective."""
        if objective.name not in self._renderers:
            self._renderers[objective.name] = FieldRenderer(
                self.chip,
                self.imaging,
                objective.pixel_size_um,
                objective.numerical_aperture,
                seed=self.seed,
            )
        with self.lock:
            self.objective = objective
            self.renderer = self._renderers[objective.name]

    def imaged_point(self, x_um: float, y_um: float) -> tuple[float, float, float]:
        """(x, y) of the chip at the image centre, and the focus offset, at a stage position."""
        o = self.objective
        if o is None:
            return x_um, y_um, 0.0
        return x_um + o.offset_x_um, y_um + o.offset_y_um, o.offset_z_um


class SimXYStage(XYStageDevice):
    """Motorised XY stage: constant speed, then a settle time during which it is busy."""

    def __init__(self, world: StageState) -> None:
        super().__init__()
        self._world = world

    def set_position_um(self, x: float, y: float) -> None:
        w, f = self._world, self._world.faults
        with w.lock:
            w.commanded.append(("xy", (x, y)))
            w.xy_moves += 1
            n = w.xy_moves
            if f.hits(n, f.xy_fail_on_move, f.xy_fail_count):
                raise SimulatedFault(
                    f"XY stage timeout: no position reply on move {n} to ({x:.1f}, {y:.1f}) um"
                )
            motion = w.xy.towards((x, y), w.stage.xy_speed_um_s, w.stage.xy_settle_ms / 1000)
            fault = w.xy_latched
            if fault is None and not w.xy_fault_spent:
                if f.hits(n, f.xy_stall_on_move, f.xy_stall_count):
                    fault = "stall"
                elif f.hits(n, f.xy_stuck_on_move, f.xy_stuck_count):
                    fault = "stuck"
            if fault is not None and f.xy_fault_until_homed:
                w.xy_latched = fault
            if fault == "stall":  # stops half way there and never says it arrived
                half = tuple((a + b) / 2 for a, b in zip(motion.start, motion.target, strict=True))
                t_half = (motion.t0 + motion.t_arrive) / 2
                motion = _Motion(motion.start, half, motion.t0, t_half, float("inf"))
            w.xy, w.xy_fault = motion, fault

    def get_position_um(self) -> tuple[float, float]:
        x, y = self._world.xy.position(time.monotonic())
        return (x, y)

    def busy(self) -> bool:
        w = self._world
        if w.xy_fault is not None:
            return True  # stuck or stalled: the controller never says it arrived
        return time.monotonic() < w.xy.t_settled

    def home(self) -> None:
        """Drive to the home position (0, 0) and reset the controller: a stuck or stalled
        motion fault is cleared, and one latched until homing is spent. Homing takes
        real time; the stage is busy until it is home."""
        w = self._world
        with w.lock:
            w.commanded.append(("xy", (0.0, 0.0)))
            w.xy_homes += 1
            if w.xy_latched is not None:
                w.xy_fault_spent = True
            w.xy_fault = w.xy_latched = None
            w.xy = w.xy.halted().towards(
                (0.0, 0.0), w.stage.xy_speed_um_s, w.stage.xy_settle_ms / 1000
            )

    def stop(self) -> None:
        w = self._world
        with w.lock:
            w.xy = w.xy.halted()
            if w.xy_fault == "stall":
                w.xy_fault = None  # a stalled motor stops; a stuck flag stays stuck

    def set_origin(self) -> None:
        raise NotImplementedError("the simulated stage keeps chip coordinates")

    def set_origin_x(self) -> None:
        raise NotImplementedError("the simulated stage keeps chip coordinates")

    def set_origin_y(self) -> None:
        raise NotImplementedError("the simulated stage keeps chip coordinates")


class SimFocusStage(StageDevice):
    """Focus drive (Z, um, up = away from the chip)."""

    def __init__(self, world: StageState) -> None:
        super().__init__()
        self._world = world

    def set_position_um(self, val: float) -> None:
        w, f = self._world, self._world.faults
        with w.lock:
            w.commanded.append(("z", (val,)))
            w.z_moves += 1
            if f.hits(w.z_moves, f.z_fail_on_move, f.z_fail_count):
                raise SimulatedFault(f"focus drive error: move {w.z_moves} to {val:.2f} um refused")
            w.z = w.z.towards((val,), w.stage.z_speed_um_s, 0.0)

    def get_position_um(self) -> float:
        return self._world.z.position(time.monotonic())[0]

    def busy(self) -> bool:
        return time.monotonic() < self._world.z.t_settled

    def home(self) -> None:
        self.set_position_um(self._world.stage.focus_z_um)

    def stop(self) -> None:
        with self._world.lock:
            self._world.z = self._world.z.halted()

    def set_origin(self) -> None:
        raise NotImplementedError("the simulated focus keeps absolute coordinates")


class ExposureCamera(SimpleCameraDevice):
    """A simulated camera's exposure: settable, positive, in ms (shared by every camera
    simulated here; what the exposure does to a frame is the subclass's business)."""

    def __init__(self, exposure_ms: float) -> None:
        super().__init__()
        self._exposure_ms = float(exposure_ms)

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        if exposure <= 0:
            raise ValueError(f"exposure must be positive, got {exposure} ms")
        self._exposure_ms = float(exposure)


class SimCamera(ExposureCamera):
    """Colour camera (RGB, 8 to 16 bits, linear unless configured otherwise) that renders
    the chip under the objective."""

    def __init__(self, world: SimWorld) -> None:
        super().__init__(world.imaging.exposure_ms)
        self._world = world

    def sensor_shape(self) -> tuple[int, int, int]:
        im = self._world.imaging
        return (im.height_px, im.width_px, 3)

    def dtype(self) -> type:
        return np.uint8 if self._world.imaging.bit_depth == 8 else np.uint16

    def snap(self, buffer: np.ndarray) -> Mapping:
        w = self._world
        n = w.next_frame()
        now = time.monotonic()
        sx, sy = w.xy.position(now)
        (z,) = w.z.position(now)
        draw = w.noise_draw(sx, sy, z)
        # Exposure takes real time, as on a real camera.
        time.sleep(self._exposure_ms / 1000.0)
        # The objective in place looks a little aside of the stage and focuses a little off.
        x, y, dz = w.imaged_point(sx, sy)
        defocus = z - dz - w.surface_z_um(x, y, now)
        buffer[:] = w.renderer.render(
            x, y, defocus_um=defocus, exposure_ms=self._exposure_ms, frame_index=draw
        )
        w.corrupt(n, buffer)
        return {
            "SimStageX_um": f"{x:.3f}",
            "SimStageY_um": f"{y:.3f}",
            "SimDefocus_um": f"{defocus:.3f}",
        }
