"""An ASGI app served by uvicorn in a thread: the daemon's HTTP analysis service and the
dashboard both run this way beside their ZMQ loops."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["UvicornThread"]


class UvicornThread:
    """uvicorn in a daemon thread; `start()` returns the URL once it listens."""

    def __init__(self, app: Any, host: str, port: int, name: str = "http") -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> str:
        """Serve; the URL once it listens. RuntimeError if it cannot (port taken...)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the HTTP server did not start on {self._server.config.host}:"
                    f"{self._server.config.port} (port in use?)"
                )
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (the `flakescan` commands)."""
        self._server.run()
