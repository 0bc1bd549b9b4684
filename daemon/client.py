"""Talking to a running daemon: control requests (REQ) and the event stream (SUB)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

__all__ = ["ControlClient", "DaemonUnreachable", "EventSubscriber"]


class DaemonUnreachable(ConnectionError):
    """No daemon answered on the control endpoint in time."""


class ControlClient:
    """Sends `{"method", "params"}` requests; one fresh REQ socket per request, so a
    timed-out request never leaves the socket stuck in the wrong REQ/REP state."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.Context.instance()

    def request(
        self, method: str, params: dict[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
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
        payload = json.dumps({"method": method, "params": params}).encode()
        return self._exchange([payload, *frames])

    def _exchange(self, frames: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.endpoint)
            sock.send_multipart(frames)
            if not sock.poll(int(self.timeout_s * 1000)):
                raise DaemonUnreachable(
                    f"no daemon answered on {self.endpoint} within {self.timeout_s:g} s"
                )
            answer, *extra = sock.recv_multipart()
            return json.loads(answer), extra
        finally:
            sock.close()

    def wait_ready(
        self, timeout_s: float = 60.0, alive: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Poll `status` until the daemon answers (it answers only once fully up).

        `alive` (e.g. "the daemon's process has not exited") ends the wait early.
        """
        deadline = time.monotonic() + timeout_s
        short = ControlClient(self.endpoint, timeout_s=0.5)
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
        self, endpoint: str, topics: tuple[str, ...] = ("",), *, heartbeats: bool = False
    ) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.heartbeats = heartbeats
        self._sock: zmq.Socket | None = None

    def connect(self, wait_s: float = 10.0) -> EventSubscriber:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        for t in {*self.topics, "daemon.heartbeat"}:
            sock.setsockopt_string(zmq.SUBSCRIBE, t)
        self._sock = sock
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                self.close()
                raise DaemonUnreachable(f"no events from {self.endpoint} within {wait_s:g} s")
            topic, _ = sock.recv_multipart()
            if topic == b"daemon.heartbeat":
                return self

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
            if topic == b"daemon.heartbeat" and not self.heartbeats:
                continue
            if not any(topic.decode().startswith(t) for t in self.topics):
                continue
            return json.loads(body)

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
