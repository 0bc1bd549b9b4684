"""`flakescan dashboard`: a web page that follows the daemon's scans as they happen.

A small server beside the daemon (same machine, same state directory): it subscribes to
the daemon's ZMQ events and relays them to every open page as server-sent events, reads
the catalogue (read-only) for a page that joins mid-scan, and serves the tile previews and
hit thumbnails the scan writes. The page (`dashboard.html`, no outside assets) draws the
overview as the tiles arrive, outlines each hit in its class colour, lists the hits with
their thumbnails, and shows the state, progress and rates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import zmq
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from flakescan.db.engine import open_database
from flakescan.db.models import Flake, Scan, Tile, row_dict

from .client import ControlClient, DaemonUnreachable, current_security
from .config import DashboardConfig, ServiceConfig, images_dir, with_address
from .http_token import read_token, require_token
from .overview import preview_path, scan_folder
from .uvicorn_thread import UvicornThread

__all__ = ["EventRelay", "create_dashboard", "run_dashboard"]

log = logging.getLogger(__name__)
_PAGE = Path(__file__).with_name("dashboard.html")


class EventRelay:
    """One ZMQ subscriber, many page streams: every daemon event goes to every page."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._queues: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-relay", daemon=True)
        self.received = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=10000)
        with self._lock:
            self._queues.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._queues = {(lp, q) for lp, q in self._queues if q is not queue}

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if (curve := current_security().curve) is not None:
            curve.apply(sock)
        sock.setsockopt_string(zmq.SUBSCRIBE, "")
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                _topic, body = sock.recv_multipart()
                text = body.decode()
                self.received += 1
                with self._lock:
                    targets = list(self._queues)
                for loop, queue in targets:
                    loop.call_soon_threadsafe(_offer, queue, text)
        finally:
            sock.close()


def _offer(queue: asyncio.Queue, text: str) -> None:
    if not queue.full():  # a page that stopped reading never slows the others
        queue.put_nowait(text)


def _snapshot(engine: Engine, scan_id: int | None) -> dict[str, Any]:
    """The scan a page should show (the given one, else the latest) with its tiles and
    flakes so far: a page that joins mid-scan starts from here."""
    with Session(engine) as s:
        scan = (
            s.get(Scan, scan_id)
            if scan_id
            else s.scalars(select(Scan).order_by(Scan.id.desc()).limit(1)).first()
        )
        if scan is None:
            return {"scan": None, "tiles": [], "flakes": []}
        tiles = s.scalars(select(Tile).where(Tile.scan_id == scan.id).order_by(Tile.tile_index))
        flakes = s.scalars(select(Flake).where(Flake.scan_id == scan.id).order_by(Flake.id))
        return {
            "scan": {**row_dict(scan, exclude=("settings_json",)), **_plan(scan)},
            "tiles": [{"tile_index": t.tile_index, "x_um": t.x_um, "y_um": t.y_um} for t in tiles],
            "flakes": [f.as_dict() for f in flakes],
        }


def _plan(scan: Scan) -> dict[str, Any]:
    settings = json.loads(scan.settings_json or "{}")
    outline = (settings.get("chip_outline") or {}).get("vertices_um")
    return {"chip_outline_um": outline}


def create_dashboard(
    events_endpoint: str,
    control_endpoint: str,
    database_url: str,
    images_root: Path,
    token: str | None = None,
) -> tuple[FastAPI, EventRelay]:
    """The dashboard app and its relay (started with the app, stopped with it); with a
    token, every request must present it (http_token.py)."""
    relay = EventRelay(events_endpoint)
    engine = open_database(database_url, create=False)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        relay.start()
        try:
            yield
        finally:
            relay.stop()
            engine.dispose()

    app = FastAPI(title="flakescan dashboard", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return _PAGE.read_text()

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        try:
            return await asyncio.to_thread(
                ControlClient(control_endpoint, timeout_s=3).request, "status"
            )
        except DaemonUnreachable as exc:
            return {"success": False, "state": "unreachable", "msg": str(exc)}

    @app.get("/api/snapshot")
    async def snapshot(scan_id: int | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(_snapshot, engine, scan_id)

    @app.get("/api/events")
    async def events() -> StreamingResponse:
        queue = relay.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        text = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {text}\n\n"
            finally:
                relay.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/preview/{scan_id}/{tile_index}.png")
    async def preview(scan_id: int, tile_index: int) -> FileResponse:
        path = preview_path(scan_folder(images_root, scan_id), tile_index)
        if not path.is_file():
            raise HTTPException(404, f"no preview of tile {tile_index} of scan {scan_id}")
        return FileResponse(path, media_type="image/png")

    @app.get("/thumbnail/{flake_id}.png")
    async def thumbnail(flake_id: int) -> FileResponse:
        def find() -> Path | None:
            with Session(engine) as s:
                f = s.get(Flake, flake_id)
                return Path(f.thumbnail_path).resolve() if f and f.thumbnail_path else None

        path = await asyncio.to_thread(find)
        root = images_root.resolve()
        # Served only from the images folder, whatever a row says.
        if path is None or not path.is_file() or root not in path.parents:
            raise HTTPException(404, f"no thumbnail of flake {flake_id}")
        return FileResponse(path, media_type="image/png")

    if token is not None:
        require_token(app, token)
    return app, relay


def run_dashboard(cfg: ServiceConfig, state_dir: Path, host: str | None, port: int | None) -> None:
    """Serve the dashboard until interrupted (`flakescan dashboard`)."""
    d = with_address(cfg.dashboard, host, port)
    assert isinstance(d, DashboardConfig)
    token = read_token(d.token_file) if d.token_file is not None else None
    app, _ = create_dashboard(
        cfg.zmq.events, cfg.zmq.control, cfg.database_url(state_dir), images_dir(state_dir), token
    )
    server = UvicornThread(app, d.host, d.port, name="dashboard")
    log.info("dashboard on http://%s:%s", d.host, d.port)
    server.serve_forever()
