"""Prior ProScan XY stage over a serial line (pyserial), ASCII protocol of the ProScan III.

Protocol source: Prior Scientific, *ProScan III Manual*, Version 1.12, June 2017,
Section 4 "Software Commands" (4.1 "ASCII commands for RS232 or Virtual COM control"):
9600 baud by default, 8 data bits, no parity, 1 stop bit; every command and every reply ends
with a carriage return; arguments are separated by commas (or spaces, tabs, semicolons,
colons); the controller answers an error with ``E,n``. The same command set is spoken by the
ProScan II and OptiScan controllers, and is what Micro-Manager's C++ ``Prior`` adapter uses.

Subset used here (command -> reply; positions in resolution units, "steps"):

- ``COMP,0`` -> ``0``: standard mode (not the legacy H128 compatibility mode)
- ``VERSION`` -> ``nnn``: firmware version; the first sign that a ProScan is listening
- ``RES,s`` -> ``r`` and ``RES,s,r`` -> ``0``: stage resolution, micrometres per step
- ``PS`` -> ``x,y``: stage position
- ``G,x,y`` / ``GR,dx,dy`` -> ``R``: absolute / relative move
- ``$`` -> ``n``: motion status, a decimal bit field (1 = X moving, 2 = Y moving)
- ``I`` -> ``R``: controlled stop (decelerates and empties the move queue)
- ``PS,0,0`` / ``PX,0`` / ``PY,0`` -> ``0``: zero the position counters
- ``SMS[,n]`` / ``SAS[,n]`` -> ``n`` / ``0``: maximum speed / acceleration, percent (1-100)

When ``R`` comes: Section 4.1 says movement commands answer ``R`` "at the end of move". The
Micro-Manager adapter (and other open drivers) read ``R`` right after ``G`` and then poll ``$``;
so does this driver. Against a controller that holds ``R`` back until a long move ends, the
move command times out (a `ProScanTimeout` naming it) rather than passing unnoticed.

Hardware safety: a move outside the configured `XYLimits` raises `TravelLimitError` before a
byte is written. Faults are never guessed around: a missing, garbled or unexpected reply, an
``E,n`` error reply or a lost link raises a `ProScanError` (a `DeviceError`) naming the port and
the command.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import threading
import time
from dataclasses import dataclass

import serial

from .errors import DeviceError, HardwareError, TravelLimitError

__all__ = [
    "ERROR_CODES",
    "ProScanError",
    "ProScanErrorReply",
    "ProScanLinkLost",
    "ProScanReplyError",
    "ProScanStage",
    "ProScanTimeout",
    "XYLimits",
]

log = logging.getLogger(__name__)

BAUD_RATES = (9600, 19200, 38400, 57600, 115200)
# ProScan III Manual (v1.12), Section 4, error codes returned as "E,n".
ERROR_CODES: dict[int, str] = {
    1: "NO STAGE",
    2: "NOT IDLE",
    3: "NO DRIVE",
    4: "STRING PARSE",
    5: "COMMAND NOT FOUND",
    6: "INVALID SHUTTER",
    7: "NO FOCUS",
    8: "VALUE OUT OF RANGE",
    9: "INVALID WHEEL",
    10: "ARG1 OUT OF RANGE",
    11: "ARG2 OUT OF RANGE",
    12: "ARG3 OUT OF RANGE",
    13: "ARG4 OUT OF RANGE",
    14: "ARG5 OUT OF RANGE",
    15: "ARG6 OUT OF RANGE",
    16: "INCORRECT STATE",
    17: "WHEEL NOT FITTED",
    18: "QUEUE FULL",
    19: "COMPATIBILITY MODE SET",
    20: "SHUTTER NOT FITTED",
    21: "INVALID CHECKSUM",
    60: "ENCODER ERROR",
    61: "ENCODER RUN OFF",
}
_ERROR = re.compile(r"E,?(\d+)")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_XY = re.compile(r"([+-]?\d+),([+-]?\d+)")
_MAX_STEPS = 2**31 - 1  # the controller's position counters are 32-bit signed


class ProScanError(DeviceError):
    """The controller failed one command; `command` is what was sent."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


class ProScanTimeout(ProScanError):
    """No complete reply arrived within the timeout (or the stage stayed busy too long)."""


class ProScanReplyError(ProScanError):
    """A reply arrived but is not what the manual says this command answers."""


class ProScanErrorReply(ProScanError):
    """The controller answered ``E,n``; `code` and `meaning` come from the manual."""

    def __init__(self, message: str, command: str, code: int) -> None:
        super().__init__(message, command)
        self.code = code
        self.meaning = ERROR_CODES.get(code, "unknown error code")


class ProScanLinkLost(ProScanError):
    """The serial port failed (cable pulled, controller switched off, port closed)."""


@dataclass(frozen=True)
class XYLimits:
    """Software travel limits in um; a move outside them is refused before it is sent."""

    x_min_um: float
    x_max_um: float
    y_min_um: float
    y_max_um: float

    def __post_init__(self) -> None:
        for axis in "xy":
            lo, hi = getattr(self, f"{axis}_min_um"), getattr(self, f"{axis}_max_um")
            for name, value in ((f"{axis}_min_um", lo), (f"{axis}_max_um", hi)):
                _finite(name, value)
            if lo >= hi:
                raise ValueError(f"{axis}_min_um ({lo}) must be below {axis}_max_um ({hi})")

    def contains(self, x_um: float, y_um: float) -> bool:
        return self.x_min_um <= x_um <= self.x_max_um and self.y_min_um <= y_um <= self.y_max_um


def _finite(name: str, value: object) -> float:
    """`value` as a float, or a ValueError naming the field: NaN and inf are never targets."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


class ProScanStage:
    """The XY stage of one ProScan controller, on its own serial port.

    Thread-safe: each command and its reply are one exchange under a lock, so two threads never
    read each other's replies. Positions are micrometres at this interface and resolution
    units ("steps") on the wire; `step_size_um` converts. `name` (the device label, say) and
    the port start every error message.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        timeout_s: float = 0.5,
        step_size_um: float | None = None,
        limits: XYLimits | None = None,
        name: str = "ProScan",
    ) -> None:
        if not isinstance(port, str) or not port.strip():
            raise ValueError(f"port must name a serial device, got {port!r}")
        if baudrate not in BAUD_RATES:
            raise ValueError(f"baudrate must be one of {BAUD_RATES}, got {baudrate!r}")
        if _finite("timeout_s", timeout_s) <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if step_size_um is not None and _finite("step_size_um", step_size_um) <= 0:
            raise ValueError(f"step_size_um must be positive, got {step_size_um!r}")
        self.port = port
        self.name = name
        self.baudrate = baudrate
        self.timeout_s = float(timeout_s)
        self.limits = limits
        self._wanted_step_um = step_size_um
        self._step_um = 0.0
        self._version = ""
        self._serial: serial.Serial | None = None
        self._lock = threading.RLock()

    # -- connection --------------------------------------------------------------------
    def connect(self) -> None:
        """Open the port and check that a ProScan answers; sets standard mode, reads RES."""
        with self._lock:
            if self._serial is not None:
                return
            try:
                # exclusive: a second program on the same port would steal replies.
                self._serial = serial.Serial(
                    self.port,
                    self.baudrate,
                    timeout=self.timeout_s,
                    write_timeout=self.timeout_s,
                    exclusive=True,
                )
            except (serial.SerialException, OSError) as exc:
                raise ProScanLinkLost(f"{self}: cannot open the port: {exc}", "") from exc
            try:
                self._expect("COMP,0", "0")  # standard mode (Section 4.1)
                self._version = self._query("VERSION", _INT, "a version number")
                if self._wanted_step_um is not None:
                    self._expect(f"RES,s,{self._wanted_step_um:g}", "0")
                self._step_um = float(self._query("RES,s", _FLOAT, "um per step"))
                if self._step_um <= 0:
                    raise ProScanReplyError(
                        f"{self}: the controller reports a stage resolution of "
                        f"{self._step_um} um; set step_size_um explicitly",
                        "RES,s",
                    )
                if self._wanted_step_um is not None and not math.isclose(
                    self._step_um, self._wanted_step_um, rel_tol=1e-6
                ):
                    raise ProScanReplyError(
                        f"{self}: asked for {self._wanted_step_um} um per step but the "
                        f"controller reports {self._step_um}",
                        "RES,s",
                    )
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Close the port (does not stop a move in progress: call `stop` first for that)."""
        with self._lock:
            port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                log.warning("%s: closing the port failed: %s", self, exc)

    def __enter__(self) -> ProScanStage:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{self.name} on {self.port}"

    @property
    def connected(self) -> bool:
        return self._serial is not None

    @property
    def step_size_um(self) -> float:
        """Micrometres per position unit, as the controller reports it (``RES,s``)."""
        self._require_connected("RES,s")
        return self._step_um

    @property
    def version(self) -> str:
        return self._version

    # -- motion ------------------------------------------------------------------------
    def position_steps(self) -> tuple[int, int]:
        text = self._query("PS", _XY, "'x,y' in steps")
        x, y = text.split(",")
        return (int(x), int(y))

    def position_um(self) -> tuple[float, float]:
        x, y = self.position_steps()
        return (x * self._step_um, y * self._step_um)

    def move_to(self, x_um: float, y_um: float) -> None:
        """Start an absolute move; returns once the controller has accepted it (``R``)."""
        x_um, y_um = _finite("x_um", x_um), _finite("y_um", y_um)
        with self._lock:
            self._check_limits(x_um, y_um)
            xs, ys = self._to_steps("x_um", x_um), self._to_steps("y_um", y_um)
            self._check_limits(xs * self._step_um, ys * self._step_um)  # after rounding
            self._expect(f"G,{xs},{ys}", "R")

    def move_by(self, dx_um: float, dy_um: float) -> None:
        """Start a relative move; refused while moving, as its target would be ambiguous."""
        dx_um, dy_um = _finite("dx_um", dx_um), _finite("dy_um", dy_um)
        with self._lock:  # held from the position query to the move: no command between
            if self.busy():
                raise ProScanError(
                    f"{self}: relative move ({dx_um}, {dy_um}) um refused while the stage "
                    "is moving (its target would depend on when it arrives)",
                    "GR",
                )
            x0, y0 = self.position_steps()
            dxs, dys = self._to_steps("dx_um", dx_um), self._to_steps("dy_um", dy_um)
            x, y = (x0 + dxs) * self._step_um, (y0 + dys) * self._step_um
            self._check_limits(x, y)
            self._expect(f"GR,{dxs},{dys}", "R")

    def busy(self) -> bool:
        """Whether X or Y is moving (``$`` bits 0 and 1)."""
        return bool(int(self._query("$", _INT, "a motion status number")) & 0b11)

    def wait_idle(self, timeout_s: float, poll_s: float = 0.02) -> None:
        """Poll ``$`` until the stage stops; a stage still moving after `timeout_s` raises."""
        deadline = time.monotonic() + _finite("timeout_s", timeout_s)
        while self.busy():
            if time.monotonic() > deadline:
                raise ProScanTimeout(f"{self}: still moving after {timeout_s} s", "$")
            time.sleep(poll_s)

    def stop(self) -> None:
        """Controlled stop (``I``): decelerates, so the position counters stay right."""
        self._expect("I", "R")

    def set_origin(self) -> None:
        """Make the current position (0, 0) in the controller's counters."""
        self._zero("PS,0,0")

    def set_origin_x(self) -> None:
        self._zero("PX,0")

    def set_origin_y(self) -> None:
        self._zero("PY,0")

    def _zero(self, command: str) -> None:
        """Re-zeroing shifts the frame the software limits are written in: refused then."""
        if self.limits is not None:
            raise HardwareError(
                f"{self}: {command!r} refused: re-zeroing would move the software travel "
                "limits with the origin; nothing was sent"
            )
        self._expect(command, "0")

    # -- speed -------------------------------------------------------------------------
    def max_speed(self) -> int:
        """Maximum speed, percent of the stage's top speed (``SMS``)."""
        return int(self._query("SMS", _INT, "a speed in percent"))

    def set_max_speed(self, percent: int) -> None:
        self._expect(f"SMS,{_percent('percent', percent)}", "0")

    def acceleration(self) -> int:
        """Acceleration, percent of the stage's maximum (``SAS``)."""
        return int(self._query("SAS", _INT, "an acceleration in percent"))

    def set_acceleration(self, percent: int) -> None:
        self._expect(f"SAS,{_percent('percent', percent)}", "0")

    # -- helpers -----------------------------------------------------------------------
    def _check_limits(self, x_um: float, y_um: float) -> None:
        lim = self.limits
        if lim is not None and not lim.contains(x_um, y_um):
            raise TravelLimitError(
                f"{self}: target ({x_um:.3f}, {y_um:.3f}) um is outside the stage limits "
                f"x [{lim.x_min_um}, {lim.x_max_um}], y [{lim.y_min_um}, {lim.y_max_um}]; "
                "nothing was sent"
            )

    def _to_steps(self, name: str, um: float) -> int:
        self._require_connected("RES,s")
        steps = round(um / self._step_um)
        if abs(steps) > _MAX_STEPS:
            raise ValueError(f"{name} = {um} um is beyond the controller's position range")
        return steps

    def _require_connected(self, command: str) -> serial.Serial:
        if self._serial is None:
            raise ProScanLinkLost(f"{self}: not connected (call connect() first)", command)
        return self._serial

    def _expect(self, command: str, expected: str) -> None:
        reply = self._exchange(command)
        if reply != expected:
            raise ProScanReplyError(
                f"{self}: unexpected reply to {command!r}: {reply!r} (expected {expected!r})",
                command,
            )

    def _query(self, command: str, pattern: re.Pattern[str], what: str) -> str:
        reply = self._exchange(command)
        if not pattern.fullmatch(reply):
            raise ProScanReplyError(
                f"{self}: unexpected reply to {command!r}: {reply!r} (expected {what})",
                command,
            )
        return reply

    def _exchange(self, command: str) -> str:
        """Send one command and read its one reply, under the lock; errors raise."""
        with self._lock:
            port = self._require_connected(command)
            try:
                if stale := port.read(port.in_waiting):
                    # A late reply to a command that timed out: drop it, or it would be
                    # taken for the reply to this one.
                    log.warning("%s: discarded unread bytes %r before %r", self, stale, command)
                port.write(command.encode("ascii") + b"\r")
                raw = port.read_until(b"\r")
            except (serial.SerialException, OSError) as exc:
                raise ProScanLinkLost(
                    f"{self}: serial link lost during {command!r}: {exc}", command
                ) from exc
        if not raw.endswith(b"\r"):
            got = f" (got {raw!r} before the timeout)" if raw else ""
            raise ProScanTimeout(
                f"{self}: no reply to {command!r} within {self.timeout_s} s{got}", command
            )
        try:
            reply = raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            reply = ""
        if not reply.isprintable() or not reply:
            raise ProScanReplyError(f"{self}: garbled reply to {command!r}: {raw!r}", command)
        if m := _ERROR.fullmatch(reply):
            code = int(m.group(1))
            meaning = ERROR_CODES.get(code, "unknown error code (not in the ProScan III manual)")
            raise ProScanErrorReply(
                f"{self}: {command!r} refused with {reply}: {meaning}", command, code
            )
        return reply


def _percent(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= 100:
        raise ValueError(f"{name} must be an integer from 1 to 100, got {value!r}")
    return int(value)
