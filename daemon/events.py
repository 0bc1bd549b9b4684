"""Events on the ZMQ PUB socket: multipart [topic, json], numbered per daemon.

Every event carries `seq` (1, 2, 3... for the life of the daemon, so a subscriber sees a gap
when it drops messages), `time` (ISO 8601, UTC), the instrument id, its topic and `data`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import zmq

__all__ = ["TOPICS", "EventPublisher", "make_event"]

TOPICS = (
    "daemon.heartbeat",
    "daemon.state",
    "chip.outline",
    "scan.started",
    "focus.point",
    "focus.surface",
    "focus.refocused",
    "tile.processed",
    "flake.found",
    "flake.updated",
    "flake.annotated",
    "scan.finished",
    "revisit.flake",
    "revisit.finished",
    "revisit.failed",
    "scan.failed",
)


def make_event(seq: int, topic: str, instrument: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "instrument": instrument,
        "topic": topic,
        "data": data,
    }


class EventPublisher:
    """Publishes events from any thread: sends are serialised by a lock.

    The PUB socket never blocks: a subscriber that stops reading has its own queue (the
    socket's SNDHWM) filled and then loses events, which its `seq` gaps show; the scan and
    every other subscriber go on unaffected.
    """

    def __init__(self, socket: zmq.Socket | None, instrument: str) -> None:
        self._socket = socket
        self._instrument = instrument
        self._lock = threading.Lock()
        self.seq = 0

    def publish(self, topic: str, data: dict[str, Any]) -> dict[str, Any]:
        if topic not in TOPICS:
            raise ValueError(f"unknown event topic {topic!r}")
        with self._lock:  # one sender at a time, and events leave in seq order
            self.seq += 1
            event = make_event(self.seq, topic, self._instrument, data)
            if self._socket is not None:
                self._socket.send_multipart(
                    [topic.encode(), json.dumps(event, default=str).encode()]
                )
        return event

    @contextmanager
    def hold(self) -> Iterator[int]:
        """No event leaves while held; yields the seq of the last one that left. A snapshot
        read under it is at least as new as that event: a late joiner applies the events
        after it (some may repeat what the snapshot holds: they are upserts by id)."""
        with self._lock:
            yield self.seq
