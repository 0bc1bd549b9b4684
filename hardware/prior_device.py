"""`PriorXYStage`: the ProScan driver as a Micro-Manager XY stage for pymmcore-plus UniMMCore.

Loaded from a hardware configuration file like any device (see docs/serial-stage.md)::

    #py pyDevice,XY,flakescan.hardware.prior_device,PriorXYStage
    #py Property,XY,Port,/dev/ttyUSB0
    #py Property,XY,LimitXMinUm,-1000
    ...
    Property,Core,Initialize,1
    #py Property,Core,XYStage,XY

Pre-initialization properties configure the port and the software travel limits; they cannot
change once the port is open. An initialization that fails (no controller answering, wrong
port) is remembered, and every later call raises it as a `DeviceError`, because UniMMCore only
logs a failed Python-device initialization.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pymmcore_plus.experimental.unicore import XYStageDevice, pymm_property

from .errors import DeviceError
from .prior import BAUD_RATES, ProScanStage, XYLimits

if TYPE_CHECKING:
    from pymmcore_plus.experimental.unicore.devices._properties import PropertyController

__all__ = ["PriorXYStage"]

_LIMITS = ("LimitXMinUm", "LimitXMaxUm", "LimitYMinUm", "LimitYMaxUm")


def _number(name: str, value: object) -> float:
    """A property value (the .cfg gives strings) as a float, or an error naming both."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _limit_property(name: str) -> PropertyController:
    """A pre-init software travel limit (um); NaN, the default, leaves the axis unlimited."""

    def get(self: PriorXYStage) -> float:
        return self._limits[name]

    def set_(self: PriorXYStage, value: float) -> None:
        self._before_init(name)
        limit = _number(name, value)
        if math.isinf(limit):
            raise ValueError(
                f"{name} must be a finite number of um (or NaN for none), got {value!r}"
            )
        self._limits[name] = limit

    get.__doc__ = _limit_property.__doc__
    return pymm_property(name=name, is_pre_init=True, property_type=float)(get).setter(set_)


class PriorXYStage(XYStageDevice):
    """Prior ProScan II/III or OptiScan XY stage on a serial port (ASCII protocol)."""

    def __init__(self) -> None:
        super().__init__()
        self._port = ""
        self._baud = 9600
        self._timeout_ms = 500.0
        self._step_um = 0.0  # 0: read the resolution from the controller (RES,s)
        self._limits = dict.fromkeys(_LIMITS, math.nan)  # NaN: no software limit
        self._stage: ProScanStage | None = None
        self._init_error: Exception | None = None

    # -- pre-initialization properties -------------------------------------------------
    @pymm_property(name="Port", is_pre_init=True)
    def port(self) -> str:
        """Serial device of the controller, e.g. /dev/ttyUSB0 (or a simulator's pty)."""
        return self._port

    @port.setter
    def port(self, value: str) -> None:
        self._before_init("Port")
        if not str(value).strip():
            raise ValueError(f"Port must name a serial device, got {value!r}")
        self._port = str(value).strip()

    @pymm_property(name="BaudRate", is_pre_init=True)
    def baud_rate(self) -> int:
        """Baud rate set on the controller (BAUD command); 9600 out of the box."""
        return self._baud

    @baud_rate.setter
    def baud_rate(self, value: int) -> None:
        self._before_init("BaudRate")
        baud = _number("BaudRate", value)
        if baud not in BAUD_RATES:
            raise ValueError(f"BaudRate must be one of {BAUD_RATES}, got {value!r}")
        self._baud = int(baud)

    @pymm_property(name="TimeoutMs", is_pre_init=True)
    def timeout_ms(self) -> float:
        """How long to wait for each reply before the command counts as failed."""
        return self._timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, value: float) -> None:
        self._before_init("TimeoutMs")
        ms = _number("TimeoutMs", value)
        if not 10 <= ms <= 60000:
            raise ValueError(f"TimeoutMs must be from 10 to 60000, got {value!r}")
        self._timeout_ms = ms

    @pymm_property(name="StepSizeUm", is_pre_init=True)
    def step_size_um(self) -> float:
        """Um per position unit: 0 reads it from the controller (RES,s), >0 sets it there."""
        return self._stage.step_size_um if self._stage is not None else self._step_um

    @step_size_um.setter
    def step_size_um(self, value: float) -> None:
        self._before_init("StepSizeUm")
        step = _number("StepSizeUm", value)
        if not (step == 0 or 0 < step <= 100):
            raise ValueError(
                f"StepSizeUm must be 0 (ask the controller) or in (0, 100], got {value!r}"
            )
        self._step_um = step

    limit_x_min_um = _limit_property("LimitXMinUm")
    limit_x_max_um = _limit_property("LimitXMaxUm")
    limit_y_min_um = _limit_property("LimitYMinUm")
    limit_y_max_um = _limit_property("LimitYMaxUm")

    # -- runtime property --------------------------------------------------------------
    @pymm_property(name="MaxSpeedPercent", limits=(1, 100))
    def max_speed_percent(self) -> int:
        """Maximum stage speed, percent of its top speed (SMS)."""
        return self._connected().max_speed()

    @max_speed_percent.setter
    def max_speed_percent(self, value: int) -> None:
        if float(value) != int(float(value)):
            raise ValueError(f"MaxSpeedPercent must be a whole percentage, got {value!r}")
        self._connected().set_max_speed(int(float(value)))

    # -- lifecycle ---------------------------------------------------------------------
    def initialize(self) -> None:
        """Open the port and check that a ProScan answers; a failure is kept and re-raised."""
        self._init_error = None
        try:
            stage = ProScanStage(
                self._port,
                baudrate=self._baud,
                timeout_s=self._timeout_ms / 1000,
                step_size_um=self._step_um or None,
                limits=self._software_limits(),
                name=self.get_label() or "PriorXYStage",
            )
            stage.connect()
        except Exception as exc:
            self._init_error = exc
            raise
        self._stage = stage

    def shutdown(self) -> None:
        stage, self._stage = self._stage, None
        if stage is not None:
            stage.close()

    def _software_limits(self) -> XYLimits | None:
        given = {k: v for k, v in self._limits.items() if not math.isnan(v)}
        if not given:
            return None
        if len(given) != len(_LIMITS):
            missing = ", ".join(k for k in _LIMITS if k not in given)
            raise ValueError(f"set all four software limits or none; missing: {missing}")
        try:
            return XYLimits(*(given[k] for k in _LIMITS))
        except ValueError as exc:
            raise ValueError(f"software limits {given}: {exc}") from None

    def _before_init(self, prop: str) -> None:
        if self._stage is not None:
            raise ValueError(f"{prop} is a pre-initialization property; the port is already open")

    def _connected(self) -> ProScanStage:
        if self._stage is None:
            why = (
                f"initialization failed: {self._init_error}"
                if self._init_error
                else "not initialized"
            )
            raise DeviceError(f"{self.get_label() or 'PriorXYStage'}: {why}")
        return self._stage

    # -- XY stage API --------------------------------------------------------------------
    def set_position_um(self, x: float, y: float) -> None:
        self._connected().move_to(x, y)

    def set_relative_position_um(self, dx: float, dy: float) -> None:
        self._connected().move_by(dx, dy)

    def get_position_um(self) -> tuple[float, float]:
        return self._connected().position_um()

    def busy(self) -> bool:
        return self._connected().busy()

    def stop(self) -> None:
        self._connected().stop()

    def home(self) -> None:
        raise NotImplementedError(
            "PriorXYStage does not home: the ProScan's SIS command drives the stage into its "
            "limit switches, outside any software travel limit, and re-zeroes the counters "
            "under the configured limits; home it with Prior's own software before a run"
        )

    def set_origin(self) -> None:
        self._connected().set_origin()

    def set_origin_x(self) -> None:
        self._connected().set_origin_x()

    def set_origin_y(self) -> None:
        self._connected().set_origin_y()
