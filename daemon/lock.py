"""One process per state directory: a second daemon, or a `scan --local` beside a running
daemon, would drive the same microscope and mark the live scan `interrupted`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StateDirBusy", "StateDirLock"]


class StateDirBusy(RuntimeError):
    """Another flakescan process holds the state directory."""


class StateDirLock:
    """An exclusive `flock` on `<state_dir>/flakescan.lock`, released by the OS if we die."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "flakescan.lock"
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirBusy(
                f"another flakescan process (pid {holder}) is using {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
