"""The daemon's state machine: states and allowed transitions in one table.

Every transition is checked against the table and logged, after bluesky's run engine: a
state the table does not allow raises, so a race between a stop request and a finishing
scan cannot leave the daemon in a state nobody meant.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

__all__ = ["TRANSITIONS", "DaemonState", "InvalidTransition", "StateMachine"]

log = logging.getLogger(__name__)


class DaemonState(StrEnum):
    IDLE = "idle"
    SCANNING = "scanning"
    REVISITING = "revisiting"  # back at flakes at a higher magnification
    STOPPING = "stopping"
    ERROR = "error"


TRANSITIONS: dict[DaemonState, frozenset[DaemonState]] = {
    DaemonState.IDLE: frozenset({DaemonState.SCANNING, DaemonState.REVISITING}),
    DaemonState.SCANNING: frozenset({DaemonState.IDLE, DaemonState.STOPPING, DaemonState.ERROR}),
    DaemonState.REVISITING: frozenset({DaemonState.IDLE, DaemonState.STOPPING, DaemonState.ERROR}),
    DaemonState.STOPPING: frozenset({DaemonState.IDLE, DaemonState.ERROR}),
    # A new scan may start after a failure; its start clears the error.
    DaemonState.ERROR: frozenset({DaemonState.SCANNING, DaemonState.REVISITING}),
}


class InvalidTransition(RuntimeError):
    pass


class StateMachine:
    """Thread-safe current state, with a listener called on every change."""

    def __init__(
        self, on_change: Callable[[DaemonState, DaemonState, str], None] | None = None
    ) -> None:
        self._state = DaemonState.IDLE
        self._lock = threading.Lock()
        self._on_change = on_change
        self.reason = ""

    @property
    def state(self) -> DaemonState:
        return self._state

    def can(self, new: DaemonState) -> bool:
        return new in TRANSITIONS[self._state]

    def set(self, new: DaemonState, reason: str = "") -> None:
        """Move to `new`; InvalidTransition if the table does not allow it from here."""
        if not self.try_set(new, reason):
            raise InvalidTransition(f"cannot go from {self._state} to {new}")

    def try_set(self, new: DaemonState, reason: str = "") -> bool:
        """Move to `new` if allowed from the current state (checked and done atomically).

        The listener runs under the lock, so state events leave in the order of the changes.
        """
        with self._lock:
            old = self._state
            if new not in TRANSITIONS[old]:
                return False
            self._state = new
            self.reason = reason
            log.info("state %s -> %s%s", old, new, f" ({reason})" if reason else "")
            if self._on_change is not None:
                self._on_change(old, new, reason)
        return True
