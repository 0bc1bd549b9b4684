"""What the microscope does when a device call fails: `[hardware.fault_policy]`.

A fault is one of a few kinds (where it happened, not what the device said), and each kind
has an action: `retry` (bounded: `max_retries` more attempts, `retry_delay_s` apart),
`rehome` (home the XY stage, then try again, at most `max_retries` times) or `fail` (raise
at once). Whatever the action, a fault that is not cured within its budget is raised as a
`FaultError` naming the device, the kind, the tile and the retries made: the scan fails
with that reason, it never goes on with a tile missing. Every retry and re-home is logged
(warning) and counted, so the scan can record what it took to finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import DeviceError, HardwareError, TravelLimitError

__all__ = ["FAULT_KINDS", "FaultAction", "FaultError", "FaultKind", "FaultPolicy", "FaultRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")

FaultKind = Literal["xy_move", "xy_timeout", "z", "snap_error", "snap_timeout", "corrupt_frame"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "xy_move",
    "xy_timeout",
    "z",
    "snap_error",
    "snap_timeout",
    "corrupt_frame",
)
# What each kind is, for messages and the docs.
DESCRIPTIONS: dict[str, str] = {
    "xy_move": "XY move command failed",
    "xy_timeout": "XY stage did not arrive (timeout or stuck busy)",
    "z": "focus move failed",
    "snap_error": "camera error",
    "snap_timeout": "camera timeout",
    "corrupt_frame": "corrupt frame",
}


class FaultAction(BaseModel):
    """The action for one kind of fault and its budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["retry", "rehome", "fail"] = "retry"
    max_retries: int = Field(2, ge=0, le=20)
    retry_delay_s: float = Field(0.2, ge=0, le=60)

    @property
    def budget(self) -> int:
        """How many more attempts after the first one fails."""
        return 0 if self.action == "fail" else self.max_retries


def _retry(n: int = 2) -> FaultAction:
    return FaultAction(action="retry", max_retries=n)


class FaultPolicy(BaseModel):
    """One action per kind of fault. The defaults retry twice: transient faults (a lost
    reply, a dropped frame) heal, permanent ones still fail the scan after the retries.
    `rehome` only suits the XY kinds, and only stages that can home (the simulator's; the
    Prior driver refuses to home, so there it fails naming why)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    xy_move: FaultAction = _retry()
    xy_timeout: FaultAction = _retry(1)
    z: FaultAction = _retry()
    snap_error: FaultAction = _retry()
    snap_timeout: FaultAction = _retry()
    corrupt_frame: FaultAction = _retry()
    # Where homing takes the XY stage (the controller's home, stage um): checked against
    # the travel limits before a re-home is commanded.
    home_xy_um: tuple[float, float] = (0.0, 0.0)

    @model_validator(mode="after")
    def _rehome_only_for_xy(self) -> FaultPolicy:
        for kind in ("z", "snap_error", "snap_timeout", "corrupt_frame"):
            if getattr(self, kind).action == "rehome":
                raise ValueError(f"{kind}: action 'rehome' only applies to xy_move and xy_timeout")
        return self

    def rule(self, kind: FaultKind) -> FaultAction:
        return getattr(self, kind)

    @classmethod
    def failing(cls) -> FaultPolicy:
        """Every fault fails at once (the behaviour before fault policies)."""
        fail = FaultAction(action="fail")
        return cls(**dict.fromkeys(FAULT_KINDS, fail))


class FaultError(DeviceError):
    """A device fault the policy could not cure; says which, where and what was tried."""

    def __init__(
        self, message: str, *, device: str, kind: FaultKind, retries: int, tile: int | None
    ) -> None:
        super().__init__(message)
        self.device, self.kind, self.retries, self.tile = device, kind, retries, tile


class FaultRunner:
    """Runs device calls under a `FaultPolicy`, counting what it retried (thread-safe)."""

    def __init__(self, policy: FaultPolicy) -> None:
        self.policy = policy
        self.tile: int | None = None  # what the scan is imaging, for messages
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        """Retries per kind (`<kind>_retries`) and re-homes (`rehomes`), nonzero only."""
        with self._lock:
            return {k: v for k, v in sorted(self._counts.items()) if v}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def run(
        self,
        kind: FaultKind | Callable[[Exception], FaultKind],
        device: str,
        action: str,
        call: Callable[[], T],
        *,
        recover: Callable[[], None] | None = None,
        rehome: Callable[[], None] | None = None,
    ) -> T:
        """`call()`, retried under the policy for `kind` (or for the kind `kind(fault)`
        says a fault is, when one call can fail in several ways: a snap).

        Before each retry: `rehome()` when the action is rehome, then `recover()` (say, stop
        the stage and command the move again). A travel-limit refusal is never retried (it
        is a planning fault, not a device one). A fault in `recover` or `rehome` ends the
        retries: it is raised, naming the first fault too.
        """
        retries = 0
        while True:
            try:
                return call()
            except TravelLimitError:
                raise
            except Exception as exc:
                fault = exc
            kind_now = kind(fault) if callable(kind) else kind
            rule = self.policy.rule(kind_now)
            if retries >= rule.budget:
                raise self._give_up(kind_now, device, action, fault, retries, rule) from fault
            retries += 1
            log.warning(
                "%s: %s during %s%s: %s; %s %d of %d",
                device,
                DESCRIPTIONS[kind_now],
                action,
                self._where(),
                fault,
                "re-homing, then retry" if rule.action == "rehome" else "retry",
                retries,
                rule.budget,
            )
            self.count(f"{kind_now}_retries")
            if rule.retry_delay_s:
                time.sleep(rule.retry_delay_s)
            try:
                if rule.action == "rehome":
                    if rehome is None:
                        raise HardwareError(f"{device} cannot be re-homed")
                    self.count("rehomes")
                    rehome()
                if recover is not None:
                    recover()
            except TravelLimitError:
                raise
            except Exception as exc:
                what = "re-homing" if rule.action == "rehome" else "recovering"
                raise self._give_up(
                    kind_now, device, action, fault, retries, rule, f"; {what} failed: {exc}"
                ) from exc

    def _where(self) -> str:
        return f" at tile {self.tile}" if self.tile is not None else ""

    def _give_up(
        self,
        kind: FaultKind,
        device: str,
        action: str,
        fault: Exception,
        retries: int,
        rule: FaultAction,
        extra: str = "",
    ) -> FaultError:
        text = str(fault)
        if not text.startswith(f"{device}:"):
            text = f"{device}: {action} failed: {text}"
        tried = (
            "policy 'fail': no retry"
            if rule.action == "fail"
            else f"{retries} {'re-homes' if rule.action == 'rehome' else 'retries'} made"
        )
        message = f"{text} [{DESCRIPTIONS[kind]} ({kind}){self._where()}, {tried}{extra}]"
        return FaultError(message, device=device, kind=kind, retries=retries, tile=self.tile)
