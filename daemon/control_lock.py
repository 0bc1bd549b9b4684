"""The optional control lock (`[zmq] control_lock`): one controlling client at a time.

A client takes the lock (`lock`), gets a token, and sends it with each request that moves
the stage or changes the catalogue; others may still read (status, flakes, snapshot ...).
A holder that goes quiet for `lock_idle_s` loses it, so a crashed dashboard cannot keep the
microscope; `steal` takes it over on purpose (logged, with who had it).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CONTROLLING_METHODS", "ControlLock", "LockRefused"]

log = logging.getLogger(__name__)

# Methods that act on the microscope or write the catalogue; the rest only read.
CONTROLLING_METHODS = frozenset(
    {
        "scan_start",
        "scan_resume",
        "scan_stop",
        "goto_flake",
        "revisit",
        "flake_annotate",
        "shutdown",
    }
)


class LockRefused(RuntimeError):
    """The lock is someone else's; the message says whose and since when."""


@dataclass
class _Holder:
    name: str
    key_name: str | None
    token: str
    since: float
    last_used: float


class ControlLock:
    """Who holds control, checked for every controlling request."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self._clock = clock
        self._holder: _Holder | None = None
        self._mutex = threading.Lock()

    def _current(self) -> _Holder | None:
        h = self._holder
        if h is not None and self._clock() - h.last_used > self.idle_s:
            log.warning("control lock of %r expired after %.0f s idle", h.name, self.idle_s)
            self._holder = h = None
        return h

    def describe(self) -> dict[str, object] | None:
        with self._mutex:
            h = self._current()
            if h is None:
                return None
            now = self._clock()
            return {
                "holder": h.name,
                "key": h.key_name,
                "held_s": round(now - h.since, 1),
                "idle_s": round(now - h.last_used, 1),
                "expires_in_s": round(self.idle_s - (now - h.last_used), 1),
            }

    def acquire(self, name: str, key_name: str | None, *, steal: bool = False) -> str:
        with self._mutex:
            h = self._current()
            if h is not None and not steal:
                raise LockRefused(self._held_by(h))
            if h is not None:
                log.warning("control lock taken from %r by %r (steal)", h.name, name)
            now = self._clock()
            token = secrets.token_urlsafe(24)
            self._holder = _Holder(name, key_name, token, now, now)
            log.info("control lock taken by %r%s", name, f" (key {key_name})" if key_name else "")
            return token

    def release(self, token: str | None) -> None:
        with self._mutex:
            h = self._current()
            if h is None:
                raise LockRefused("the control lock is not held")
            if token != h.token:
                raise LockRefused("unlock: this token does not hold the control lock")
            log.info("control lock released by %r", h.name)
            self._holder = None

    def check(self, method: str, token: str | None) -> None:
        """Raise LockRefused when `method` controls and the token is not the holder's."""
        if method not in CONTROLLING_METHODS:
            return
        with self._mutex:
            h = self._current()
            if h is None:
                raise LockRefused(
                    f"{method}: the control lock is on and nobody holds it; take it first "
                    "(`lock` request, `flakescan lock`)"
                )
            if token != h.token:
                raise LockRefused(f"{method}: {self._held_by(h)}")
            h.last_used = self._clock()

    def _held_by(self, h: _Holder) -> str:
        now = self._clock()
        key = f" (key {h.key_name})" if h.key_name else ""
        return (
            f"the control lock is held by {h.name!r}{key} for {now - h.since:.0f} s; it "
            f"expires after {self.idle_s:.0f} s without a request from them, or take it with "
            "steal"
        )
