"""Telling systemd how the daemon is doing (sd_notify(3)), without libsystemd.

Under a `Type=notify` unit systemd passes a datagram socket in $NOTIFY_SOCKET: READY=1 when
the daemon can take requests, STATUS= lines that `systemctl status` shows, WATCHDOG=1
pings (at least every $WATCHDOG_USEC / 2), EXTEND_TIMEOUT_USEC= during a long start, and
STOPPING=1. Outside systemd (no $NOTIFY_SOCKET) every call does nothing, so the daemon runs
the same in a terminal, in tests and in CI.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """One daemon's channel to systemd; every method is a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address:
            # An abstract socket is written with a leading "@" (a NUL on the wire).
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # systemd's own advice: ping at half the timeout.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if watched else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send KEY=value lines; False (logged) if systemd could not be told."""
        if self._address is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify %s: %s", message.decode(errors="replace"), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def extend_timeout(self, seconds: float, why: str) -> None:
        """More time for the step in hand (loading models, building engines, homing)."""
        self.send(extend_timeout_usec=int(seconds * 1e6), status=why)

    def stopping(self, status: str) -> None:
        self.send(stopping=1, status=status)

    def watchdog_due(self, now: float | None = None) -> bool:
        if self.watchdog_interval_s is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_ping >= self.watchdog_interval_s

    def watchdog(self, now: float | None = None) -> None:
        self._last_ping = time.monotonic() if now is None else now
        self.send(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
