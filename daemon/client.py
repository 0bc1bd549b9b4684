"""Talking to a running daemon: control requests (REQ) and the event stream (SUB).

With CURVE (`[zmq] curve`), every socket carries the client's key pair and the daemon's
public key; `use_security` sets them (and the control lock's token) for a whole process,
as the CLI does from its options and config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .keys import ClientCurve

__all__ = [
    "ClientSecurity",
    "ControlClient",
    "DaemonUnreachable",
    "EventSubscriber",
    "current_security",
    "use_security",
]


class DaemonUnreachable(ConnectionError):
    """No daemon answered on the control endpoint in time."""


@dataclass(frozen=True)
class ClientSecurity:
    curve: ClientCurve | None = None
    lock_token: str | None = None


_security = ClientSecurity()


def use_security(security: ClientSecurity) -> None:
    """The keys and lock token every client of this process uses unless given its own."""
    global _security
    _security = security


def current_security() -> ClientSecurity:
    return _security


_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _refusal(monitor: zmq.Socket, endpoint: str, curve: ClientCurve | None) -> str | None:
    """Why the daemon turned this socket away, if the handshake says so."""
    while monitor.poll(0):
        ev = recv_monitor_message(monitor)["event"]
        if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"the daemon on {endpoint} refused this client's key: it is not on the "
                "daemon's allow-list (`flakescan keys add NAME` on the microscope PC)"
            )
        if ev & _HANDSHAKE_FAILED:
            return (
                f"the daemon on {endpoint} wants CURVE keys (--client-key, --server-key)"
                if curve is None
                else f"the security handshake with {endpoint} failed: is --server-key the "
                "daemon's server.key, and is CURVE on there?"
            )
    return None


class ControlClient:
    """Sends `{"method", "params"}` requests; one fresh REQ socket per request, so a
    timed-out request never leaves the socket stuck in the wrong REQ/REP state."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = 10.0,
        *,
        curve: ClientCurve | None = None,
        lock_token: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.curve = curve or _security.curve
        self.lock_token = lock_token or _security.lock_token
        self._ctx = zmq.Context.instance()

    def request(
        self, method: str, params: dict[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        if self.lock_token and "token" not in fields:
            fields["token"] = self.lock_token
        return self.send_raw(
            json.dumps({"method": method, "params": params or {}, **fields}).encode()
        )

    def send_raw(self, payload: bytes) -> dict[str, Any]:
        return self._exchange([payload])[0]

    def request_frames(
        self, method: str, params: dict[str, Any], frames: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        """A request with binary frames after its JSON (arrays, files: never pickled);
        the reply and its own binary frames (e.g. `analyze`'s PNG pictures)."""
        envelope: dict[str, Any] = {"method": method, "params": params}
        if self.lock_token:
            envelope["token"] = self.lock_token
        return self._exchange([json.dumps(envelope).encode(), *frames])

    def _exchange(self, frames: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        try:
            sock.connect(self.endpoint)
            sock.send_multipart(frames)
            if not sock.poll(int(self.timeout_s * 1000)):
                why = _refusal(monitor, self.endpoint, self.curve)
                raise DaemonUnreachable(
                    why or f"no daemon answered on {self.endpoint} within {self.timeout_s:g} s"
                )
            answer, *extra = sock.recv_multipart()
            return json.loads(answer), extra
        finally:
            sock.disable_monitor()
            monitor.close()
            sock.close()

    def wait_ready(
        self, timeout_s: float = 60.0, alive: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Poll `status` until the daemon answers (it answers only once fully up).

        `alive` (e.g. "the daemon's process has not exited") ends the wait early.
        """
        deadline = time.monotonic() + timeout_s
        short = ControlClient(self.endpoint, timeout_s=0.5, curve=self.curve)
        while True:
            if alive is not None and not alive():
                raise DaemonUnreachable(f"the daemon for {self.endpoint} exited")
            try:
                return short.request("status")
            except DaemonUnreachable:
                if time.monotonic() > deadline:
                    raise DaemonUnreachable(
                        f"daemon on {self.endpoint} not ready after {timeout_s:g} s"
                    ) from None


class EventSubscriber:
    """A SUB socket on the daemon's events, as a context manager and an iterator.

    `connect()` returns only after the first heartbeat arrived, so nothing published after
    it returns is missed (ZMQ's slow-joiner problem). Heartbeats are passed on only when
    asked for.
    """

    def __init__(
        self,
        endpoint: str,
        topics: tuple[str, ...] = ("",),
        *,
        heartbeats: bool = False,
        curve: ClientCurve | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.heartbeats = heartbeats
        self.curve = curve or _security.curve
        self._sock: zmq.Socket | None = None
        # With every topic: the seq numbers this subscriber never saw (it read too slowly,
        # or joined late), so a dashboard knows to ask for a snapshot.
        self.last_seq: int | None = None
        self.missed = 0

    def connect(self, wait_s: float = 10.0) -> EventSubscriber:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        sock.connect(self.endpoint)
        for t in {*self.topics, "daemon.heartbeat"}:
            sock.setsockopt_string(zmq.SUBSCRIBE, t)
        self._sock = sock
        deadline = time.monotonic() + wait_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000)):
                    why = _refusal(monitor, self.endpoint, self.curve)
                    self.close()
                    raise DaemonUnreachable(
                        why or f"no events from {self.endpoint} within {wait_s:g} s"
                    )
                topic, body = sock.recv_multipart()
                if topic == b"daemon.heartbeat":
                    self._count(body)
                    return self
        finally:
            if self._sock is not None:
                sock.disable_monitor()
            monitor.close()

    def next(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next event, or None after `timeout_s` without one (heartbeats do not count)."""
        if self._sock is None:
            raise RuntimeError("EventSubscriber is not connected")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if deadline is not None:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                if not self._sock.poll(left_ms):
                    return None
            topic, body = self._sock.recv_multipart()
            if self.topics == ("",) or topic == b"daemon.heartbeat":
                event = self._count(body)
                if topic != b"daemon.heartbeat" or self.heartbeats:
                    return event
                continue
            if topic == b"daemon.heartbeat" and not self.heartbeats:
                continue
            if not any(topic.decode().startswith(t) for t in self.topics):
                continue
            return json.loads(body)

    def _count(self, body: bytes) -> dict[str, Any]:
        event = json.loads(body)
        seq = event.get("seq")
        if isinstance(seq, int):
            if self.last_seq is not None and seq > self.last_seq + 1 and self.topics == ("",):
                self.missed += seq - self.last_seq - 1
            self.last_seq = seq
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self.next()) is not None:
            yield event

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> EventSubscriber:
        return self if self._sock is not None else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
