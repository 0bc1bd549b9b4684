"""A Prior ProScan controller with an XY stage, served on a pseudo-terminal.

The driver opens `ProScanSimulator.port` (the pty's slave side, e.g. ``/dev/pts/5``) exactly as
it opens a USB-serial adapter, so tests run the real driver, pyserial and termios code. The
simulator speaks the subset of the ProScan III ASCII protocol that `flakescan.hardware.prior`
uses (Prior Scientific, ProScan III Manual v1.12, June 2017, Section 4), plus faults on demand.

Choices where the manual leaves the simulator free, all documented in docs/serial-stage.md:

- ``R`` for ``G``/``GR`` is sent when the move is accepted (as the Micro-Manager adapter expects);
  the move then takes real time at the set speed and ``$`` reports it until it arrives.
- A move whose target lies outside the stage's travel is refused with ``E,8`` (VALUE OUT OF
  RANGE) and nothing moves; a new ``G`` during a move retargets from where the stage is.
- Unknown commands answer ``E,5`` (COMMAND NOT FOUND), malformed arguments ``E,4``.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ProScanSimulator"]

FaultKind = Literal["silent", "garble", "late", "drop"]
GARBAGE = b"\x8f\xfeR?\x00#"  # what a wrong baud rate or a noisy line looks like


@dataclass
class _Move:
    """Straight-line motion from `start` to `target` (um), arriving at `t_end`."""

    start: tuple[float, float]
    target: tuple[float, float]
    t0: float = 0.0
    t_end: float = 0.0

    def at(self, now: float) -> tuple[float, float]:
        if now >= self.t_end:
            return self.target
        f = (now - self.t0) / (self.t_end - self.t0)
        (x0, y0), (x1, y1) = self.start, self.target
        return (x0 + f * (x1 - x0), y0 + f * (y1 - y0))

    def status(self, now: float) -> int:
        """``$`` bits: 1 = X moving, 2 = Y moving."""
        if now >= self.t_end:
            return 0
        return (self.start[0] != self.target[0]) | (self.start[1] != self.target[1]) << 1


@dataclass
class _Fault:
    kind: FaultKind
    after: str | None  # armed once a command with this name has been answered
    armed: bool = False
    delay_s: float = 0.0  # for "late": how long each reply is held back
    times: int = 1  # how many `after` commands must be answered before it arms
    lasting: int | None = None  # how many commands it spoils before it heals (None: for ever)


@dataclass
class _ErrorReply:
    code: int
    on: str | None
    times: int


@dataclass
class _State:
    move: _Move
    res_um: float
    speed_pct: int = 50
    accel_pct: int = 50
    compat: int = 0
    received: list[str] = field(default_factory=list)
    fault: _Fault | None = None
    errors: list[_ErrorReply] = field(default_factory=list)
    late_sent: int = 0
    origin_um: tuple[float, float] = (0.0, 0.0)  # where the counters read zero (set by PS,x,y)


class ProScanSimulator:
    """ProScan controller + XY stage behind a pty, served from a background thread.

    The stage moves in um over its mechanical range `travel_um` (from its power-on zero);
    the controller reports positions in resolution units (``RES,s``) from its counters' origin.
    """

    def __init__(
        self,
        *,
        step_size_um: float = 0.1,
        travel_um: tuple[tuple[float, float], tuple[float, float]] = ((-5000.0, 80000.0),) * 2,
        top_speed_um_s: float = 20000.0,
        speed_percent: int = 50,
        version: str = "100",
    ) -> None:
        if step_size_um <= 0 or top_speed_um_s <= 0:
            raise ValueError(
                f"step_size_um and top_speed_um_s must be positive, got {step_size_um} "
                f"and {top_speed_um_s}"
            )
        self.travel_um = travel_um
        self.top_speed_um_s = top_speed_um_s
        self.version = version
        self._state = _State(_Move((0.0, 0.0), (0.0, 0.0)), step_size_um, speed_percent)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation: bytes pass as sent
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._serve, name="proscan-sim", daemon=True)
        self._thread.start()

    # -- test-side API -----------------------------------------------------------------
    @property
    def received(self) -> list[str]:
        """Every command line the controller has received, in order."""
        with self._lock:
            return list(self._state.received)

    @property
    def position_um(self) -> tuple[float, float]:
        """Where the stage is, in um of the controller's counters (what ``PS`` reports)."""
        with self._lock:
            (x, y), (ox, oy) = self._state.move.at(time.monotonic()), self._state.origin_um
        return (x - ox, y - oy)

    @property
    def moving(self) -> bool:
        with self._lock:
            return self._state.move.status(time.monotonic()) != 0

    @property
    def late_replies_sent(self) -> int:
        """How many replies a ``late`` fault has held back and then sent."""
        with self._lock:
            return self._state.late_sent

    def inject(
        self,
        kind: FaultKind,
        *,
        after: str | None = None,
        delay_s: float = 0.5,
        times: int = 1,
        lasting: int | None = None,
    ) -> None:
        """Fail every command from the next one on, or from the one after the `times`-th
        `after` command has been answered (say, the 3rd ``G``: a link lost mid-scan): no
        reply (``silent``), noise (``garble``), the right reply but `delay_s` late
        (``late``), or the line closed for good (``drop``; closing the pty discards what is
        in flight, so it happens when the next command arrives). With `lasting`, a
        silent, garbling or late line heals by itself after that many commands (a link that
        glitches and comes back); a dropped line never does."""
        if times < 1 or (lasting is not None and lasting < 1):
            raise ValueError(f"times and lasting must be at least 1, got {times}, {lasting}")
        with self._lock:
            self._state.fault = _Fault(
                kind, after, armed=after is None, delay_s=delay_s, times=times, lasting=lasting
            )

    def reply_error(self, code: int, *, on: str | None = None, times: int = 1) -> None:
        """Answer the next `times` commands named `on` (any, if None) with ``E,code``."""
        with self._lock:
            self._state.errors.append(_ErrorReply(code, on, times))

    def recover(self) -> None:
        """Clear a silent or garbling fault (a dropped line stays dropped)."""
        with self._lock:
            self._state.fault = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_fds()

    def __enter__(self) -> ProScanSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving -----------------------------------------------------------------------
    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def _serve(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except (OSError, ValueError):
                return  # the line was dropped
            buffer += data.replace(b"\n", b"")
            while b"\r" in buffer:
                line, buffer = buffer.split(b"\r", 1)
                reply, delay_s = self._handle(line.decode("ascii", errors="replace").strip())
                if reply is None:
                    continue
                if reply == b"":  # the line was dropped while handling this command
                    return
                if delay_s and self._stop.wait(delay_s):
                    return
                try:
                    os.write(self._master, reply)
                except OSError:
                    return
                if delay_s:
                    with self._lock:
                        self._state.late_sent += 1

    def _handle(self, line: str) -> tuple[bytes | None, float]:
        """The reply to one command line and how long to hold it back.

        A reply of None sends nothing; b"" means the line has just been dropped.
        """
        if not line:
            return None, 0.0
        name = re.split(r"[,\s;:]+", line, maxsplit=1)[0].upper()
        with self._lock:
            st = self._state
            st.received.append(line)
            fault = st.fault
            delay_s = 0.0
            if fault is not None and fault.armed:
                if fault.lasting is not None and fault.kind != "drop":
                    fault.lasting -= 1
                    if fault.lasting <= 0:
                        st.fault = None  # this command is the last one it spoils
                if fault.kind == "drop":
                    self._close_fds()
                    return b"", 0.0
                if fault.kind == "silent":
                    return None, 0.0
                if fault.kind == "garble":
                    return GARBAGE + b"\r", 0.0
                delay_s = fault.delay_s  # "late": the right reply, too late
            for err in st.errors:
                if err.on is None or err.on.upper() == name:
                    err.times -= 1
                    if err.times <= 0:
                        st.errors.remove(err)
                    return f"E,{err.code}\r".encode(), 0.0
            reply = self._execute(name, line)
            if fault is not None and fault.after is not None and fault.after.upper() == name:
                fault.times -= 1
                fault.armed = fault.times <= 0
        return reply.encode("ascii") + b"\r", delay_s

    def _execute(self, name: str, line: str) -> str:
        """Run one command on the state (lock held) and return its reply text."""
        st, now = self._state, time.monotonic()
        args = [a for a in re.split(r"[,\s;:]+", line)[1:] if a]
        here = st.move.at(now)
        if name == "COMP":
            if not args:
                return str(st.compat)
            if args[0] not in ("0", "1"):
                return "E,10"
            st.compat = int(args[0])
            return "0"
        if name == "VERSION":
            return self.version
        if name == "RES":
            return self._res(args)
        if name in ("P", "PS", "PX", "PY"):
            return self._position(name, args, here, now)
        if name in ("G", "GR"):
            return self._go(name, args, here, now)
        if name == "$":
            return str(st.move.status(now))
        if name in ("I", "K"):
            st.move = _Move(here, here)
            return "R"
        if name in ("SMS", "SAS"):
            attr = "speed_pct" if name == "SMS" else "accel_pct"
            if not args:
                return str(getattr(st, attr))
            if not re.fullmatch(r"\d+", args[0]) or not 1 <= int(args[0]) <= 100:
                return "E,10"
            setattr(st, attr, int(args[0]))
            return "0"
        return "E,5"

    def _res(self, args: list[str]) -> str:
        st = self._state
        if not args or args[0].upper() != "S":
            return "E,10"  # only the stage axis exists here
        if len(args) == 1:
            return f"{st.res_um:g}"
        try:
            value = float(args[1])
        except ValueError:
            return "E,4"
        if value <= 0:
            return "E,11"
        st.res_um = value
        return "0"

    def _position(self, name: str, args: list[str], here: tuple[float, float], now: float) -> str:
        st = self._state
        steps = [round((v - o) / st.res_um) for v, o in zip(here, st.origin_um, strict=True)]
        if not args:
            replies = {"P": f"{steps[0]},{steps[1]},0", "PS": f"{steps[0]},{steps[1]}"}
            replies |= {"PX": str(steps[0]), "PY": str(steps[1])}
            return replies[name]
        if len(args) != (1 if name in ("PX", "PY") else 2) or not all(_is_int(a) for a in args):
            return "E,4"  # STRING PARSE
        if st.move.status(now):
            return "E,2"  # NOT IDLE
        axes = {"PX": (0,), "PY": (1,)}.get(name, (0, 1))
        origin = list(st.origin_um)
        for axis, value in zip(axes, args, strict=True):
            # The counters now read `value` here: the stage stays, its frame moves.
            origin[axis] = here[axis] - int(value) * st.res_um
        st.origin_um = (origin[0], origin[1])
        return "0"

    def _go(self, name: str, args: list[str], here: tuple[float, float], now: float) -> str:
        st = self._state
        if len(args) != 2 or not all(_is_int(a) for a in args):
            return "E,4"  # STRING PARSE
        dx, dy = (int(a) * st.res_um for a in args)
        base = here if name == "GR" else st.origin_um
        target = (base[0] + dx, base[1] + dy)
        (xlo, xhi), (ylo, yhi) = self.travel_um
        if not (xlo <= target[0] <= xhi and ylo <= target[1] <= yhi):
            return "E,8"  # VALUE OUT OF RANGE: the stage stays where it is
        speed = self.top_speed_um_s * st.speed_pct / 100
        dist = ((target[0] - here[0]) ** 2 + (target[1] - here[1]) ** 2) ** 0.5
        st.move = _Move(here, target, now, now + dist / speed)
        return "R"


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None
