"""The scan daemon: control socket, event socket, state machine, scans in a thread.

The main thread owns the control (REP) socket and the state machine; a scan runs in its
own thread (which in turn runs the MDA runner and a processing worker). Signals only set a
flag that the main loop acts on, so SIGTERM stops a scan at a tile boundary, keeps what was
written, and exits 0.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from sqlalchemy import Engine

from flakescan.db.queries import FlakeQuery, find_flakes, get_flake, list_scans, scan_tiles
from flakescan.hardware.errors import HardwareError
from flakescan.hardware.microscope import Microscope

from .assembly import Components, StartupError, open_components, scan_request, scan_settings
from .config import ServiceConfig, images_dir, keys_dir
from .control_lock import ControlLock, LockRefused
from .events import EventPublisher
from .keys import KeyStore, KeyStoreError
from .protocol import (
    AnalyzeInput,
    AnalyzeParams,
    FlakeAnnotateParams,
    FlakesParams,
    GotoFlakeParams,
    LockParams,
    ProtocolError,
    RevisitParams,
    ScanResumeParams,
    ScanStartParams,
    parse_envelope,
    reply,
)
from .resume import ResumePoint
from .revisit import revisit_flake
from .scan import ScanOutcome, ScanRequest, ScanRunner
from .scan_plan import ScanPlan
from .sd_notify import Notifier
from .state import DaemonState, StateMachine

__all__ = ["Daemon", "StartupError"]

if TYPE_CHECKING:
    from flakescan.inference.analysis import AnalysisService, Upload

    from .http_api import HttpServerThread
    from .zap import CurveGuard

log = logging.getLogger(__name__)
_POLL_MS = 100


@dataclass
class _ActiveScan:
    thread: threading.Thread
    scan_id: int
    outcome: ScanOutcome | None = None


class Daemon:
    """One microscope, one catalogue, one control socket."""

    def __init__(self, config: ServiceConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self._ctx = zmq.Context.instance()
        self._stop_requested = threading.Event()
        self._active: _ActiveScan | None = None
        self._started = time.time()
        self.last_outcome: dict[str, Any] | None = None
        self.state = StateMachine(on_change=self._state_changed)
        self.rep: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.events = EventPublisher(None, config.instrument)
        self.engine: Engine | None = None
        self.microscope: Microscope | None = None
        self.runner: ScanRunner | None = None
        self.components: Components | None = None
        self._analysis: AnalysisService | None = None  # built at the first `analyze`
        self._http: HttpServerThread | None = None
        self._revisit_cancel = threading.Event()
        self._revisit: threading.Thread | None = None
        self.notify = Notifier()  # systemd (Type=notify); silent outside it
        self._stall_logged = False
        self._status_line = ""  # the last progress line systemd was told
        self._curve: CurveGuard | None = None
        self.lock = ControlLock(config.zmq.lock_idle_s) if config.zmq.control_lock else None

    # -- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        """Database, model, hardware, then sockets: ready only when all are up."""
        cfg = self.config
        self.notify.extend_timeout(
            cfg.systemd.start_timeout_s, "starting: database, models (engine builds), hardware"
        )
        self.components = open_components(cfg, self.state_dir, self._publish)
        if self.components.interrupted_scans:
            log.warning(
                "scans %s were left running by a previous daemon: marked interrupted",
                self.components.interrupted_scans,
            )
        try:
            self._bind_sockets()
        except (zmq.ZMQError, KeyStoreError) as exc:
            self._close_sockets()
            self.components.close()
            raise StartupError(
                f"cannot listen on {cfg.zmq.control} / {cfg.zmq.events}: {exc}"
            ) from exc
        self.events = EventPublisher(self.pub, cfg.instrument)
        if cfg.http.enabled:
            self._start_http()
        self.engine = self.components.engine
        self.microscope = self.components.microscope
        self.runner = self.components.runner
        self._hardware_info = self.microscope.describe()
        log.info(
            "flakescan daemon ready: control %s, events %s, database %s",
            cfg.zmq.control,
            cfg.zmq.events,
            cfg.database_url(self.state_dir),
        )
        interrupted = self.components.interrupted_scans
        self.notify.ready(
            f"idle; control {cfg.zmq.control}"
            + (f"; scans {interrupted} interrupted, resumable" if interrupted else "")
        )

    def _bind_sockets(self) -> None:
        """Control (REP) and events (PUB); with `[zmq] curve` both are CURVE servers that
        let in only allow-listed keys. The PUB socket drops, never blocks, for a
        subscriber that stops reading (its queue: `events_queue`)."""
        cfg = self.config.zmq
        if cfg.curve:
            from .zap import CurveGuard

            self._curve = CurveGuard(self._ctx, KeyStore(keys_dir(self.config, self.state_dir)))
        self.rep = self._ctx.socket(zmq.REP)
        self.rep.setsockopt(zmq.LINGER, 0)
        self.pub = self._ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.setsockopt(zmq.SNDHWM, cfg.events_queue)
        if self._curve is not None:
            self._curve.secure(self.rep)
            self._curve.secure(self.pub)
        self.rep.bind(cfg.control)
        self.pub.bind(cfg.events)

    def _analysis_service(self) -> AnalysisService:
        from flakescan.inference.analysis import AnalysisService

        if self._analysis is None:
            self._analysis = AnalysisService(self.config.models, self.config.preselection)
        return self._analysis

    def _start_http(self) -> None:
        """`[http] enabled`: the analysis service over HTTP on the daemon's own models."""
        from .http_api import HttpServerThread

        try:
            self._http = HttpServerThread(self.config, self._analysis_service())
            url = self._http.start()
        except (RuntimeError, ValueError) as exc:
            self._http = None
            self._close_sockets()
            assert self.components is not None
            self.components.close()
            raise StartupError(str(exc)) from exc
        log.info("analysis service on %s", url)

    def _publish(self, topic: str, data: dict[str, Any]) -> dict[str, Any]:
        """The runner publishes through this, so the socket can be bound after assembly."""
        return self.events.publish(topic, data)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self._stop_requested.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def _close_sockets(self) -> None:
        for sock in (self.rep, self.pub):
            if sock is not None:
                sock.close()
        self.rep = self.pub = None
        if self._curve is not None:
            self._curve.stop()
            self._curve = None

    def close(self) -> None:
        """Stop a running scan or revisit (keeping what they wrote), release hardware and
        sockets."""
        self.notify.stopping(f"stopping ({self.state.state})")
        if self._active is not None:
            if self.runner is not None:
                self.runner.cancel()
            self._reap_scan()
        if self._revisit is not None and self._revisit.is_alive():
            self._revisit_cancel.set()  # after the flake in hand: its image is kept whole
            self.notify.extend_timeout(150, "stopping: finishing the flake in hand")
            self._revisit.join(timeout=120)
            if self._revisit.is_alive():
                log.error("the revisit did not end within 120 s; closing the hardware under it")
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self.components is not None:
            self._park()
            self.components.close()
            self.components = None
        self._close_sockets()
        self.notify.close()

    def _park(self) -> None:
        """The stage where it is safe before the daemon lets go of it: Z up to the park
        plane, XY to `[hardware.park] xy_um` if set. A device fault is logged, not raised:
        what was written is already committed, and the exit stays clean."""
        assert self.components is not None
        if self._revisit is not None and self._revisit.is_alive():
            log.error("not parking: the revisit still drives the stage")
            return
        self.notify.extend_timeout(60, "stopping: parking the stage")
        try:
            parked = self.components.microscope.park()
        except Exception:  # never let a broken stage keep the daemon from exiting
            log.exception("parking the stage failed")
            return
        if parked.get("problems"):
            log.error("stage not fully parked: %s", "; ".join(parked["problems"]))

    # -- main loop ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Answer control requests until shutdown or a signal."""
        assert self.rep is not None
        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        next_beat = 0.0
        while not self._stop_requested.is_set():
            if self._active is not None and not self._active.thread.is_alive():
                self._reap_scan()
            if time.monotonic() >= next_beat:
                self.events.publish("daemon.heartbeat", {"state": str(self.state.state)})
                self._scan_status_line()
                next_beat = time.monotonic() + self.config.zmq.heartbeat_s
            if self.notify.watchdog_due():
                self._watchdog()
            if not poller.poll(_POLL_MS):
                continue
            first, *rest = self.rep.recv_multipart(copy=False)
            answer, extra = self.handle_frames(
                first.bytes, [f.bytes for f in rest], peer=_peer_name(first)
            )
            self.rep.send_multipart([json.dumps(answer, default=str).encode(), *extra])

    def _watchdog(self) -> None:
        """Ping systemd's watchdog if the daemon is getting somewhere: the control loop is
        (it runs this), and a scan must have finished a tile or a focus point within
        `[systemd] scan_stall_s`. A scan stuck on a device that never answers stops the
        pings, and systemd restarts the daemon (the scan is then interrupted, resumable)."""
        runner = self.runner
        if self.state.state == DaemonState.SCANNING and runner is not None:
            stalled = time.monotonic() - runner.progressed_at
            if stalled > self.config.systemd.scan_stall_s:
                if not self._stall_logged:
                    log.error(
                        "scan %s has made no progress for %.0f s: watchdog pings withheld",
                        runner.current["scan_id"] if runner.current else "?",
                        stalled,
                    )
                    self.notify.status(f"scan stalled for {stalled:.0f} s")
                    self._stall_logged = True
                return
        self._stall_logged = False
        self.notify.watchdog()

    def _scan_status_line(self) -> None:
        """`systemctl status` shows the scan's progress."""
        cur = self.runner.current if self.runner is not None else None
        if cur is None or self.state.state != DaemonState.SCANNING or self._stall_logged:
            return
        line = (
            f"scanning: scan {cur['scan_id']}, {cur['tiles_done']}/{cur['tiles_planned']} "
            f"tiles, {cur['flakes']} flakes"
        )
        if line != self._status_line:
            self.notify.status(line)
            self._status_line = line

    def handle(self, raw: bytes) -> dict[str, Any]:
        """One single-frame control request to its JSON reply; never raises."""
        return self.handle_frames(raw, [])[0]

    def handle_frames(
        self, raw: bytes, frames: list[bytes], peer: str | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """One request (JSON, then any binary frames) to its reply and the reply's binary
        frames; never raises. `peer`: the client's key name, with CURVE."""
        try:
            req = parse_envelope(raw)
        except ProtocolError as exc:
            return reply(False, str(exc)), []
        method, params = req.method, req.params
        try:
            if method in ("lock", "unlock"):
                return self._lock_request(method, params, req.token, peer), []
            if self.lock is not None:
                self.lock.check(method, req.token)
        except LockRefused as exc:
            return reply(False, str(exc), lock=self.lock.describe() if self.lock else None), []
        handler = getattr(self, f"_do_{method}")  # looked up outside the try below
        try:
            if method == "analyze":
                return handler(params, frames)
            return handler(params), []
        except Exception as exc:  # a handler fault is a reply, not a dead daemon
            log.exception("%s failed", method)
            return reply(False, f"{method} failed: {type(exc).__name__}: {exc}"), []

    def _lock_request(
        self, method: str, params: object, token: str | None, peer: str | None
    ) -> dict[str, Any]:
        if self.lock is None:
            return reply(False, f"{method}: the control lock is off ([zmq] control_lock)")
        if method == "unlock":
            self.lock.release(token)
            return reply(True, "control lock released")
        assert isinstance(params, LockParams)
        new = self.lock.acquire(params.holder, peer, steal=params.steal)
        return reply(True, f"control lock held by {params.holder!r}", token=new)

    # -- state ----------------------------------------------------------------------------
    def _state_changed(self, old: DaemonState, new: DaemonState, reason: str) -> None:
        self.events.publish("daemon.state", {"from": str(old), "to": str(new), "reason": reason})
        self.notify.status(f"{new}: {reason}" if reason else str(new))

    def _settle(self, out: ScanOutcome | None, reason: str = "") -> None:
        """A scan ended: record its outcome and leave the scanning/stopping state."""
        self.last_outcome = out.as_dict() if out else None
        if out is None or out.status == "failed":
            self.state.set(DaemonState.ERROR, out.reason if out else reason)
        else:
            self.state.set(DaemonState.IDLE, f"scan {out.scan_id} {out.status}")

    def _reap_scan(self) -> None:
        active, self._active = self._active, None
        assert active is not None
        active.thread.join()
        if active.outcome is None and self.state.state in (
            DaemonState.SCANNING,
            DaemonState.STOPPING,
        ):
            self._settle(None, f"scan {active.scan_id} crashed; see the log")

    # -- handlers -------------------------------------------------------------------------
    def _do_status(self, _params: object) -> dict[str, Any]:
        assert self.runner is not None
        return reply(
            True,
            f"{self.state.state}",
            state=str(self.state.state),
            reason=self.state.reason,
            instrument=self.config.instrument,
            version=version("flakescan"),
            uptime_s=round(time.time() - self._started, 1),
            scan=self.runner.current,
            last_scan=self.last_outcome,
            hardware=self._hardware_info,
            models=self.components.describe_models() if self.components else None,
            database=self.config.database_url(self.state_dir),
            events_seq=self.events.seq,
            http=self._http.url if self._http is not None else None,
            curve=self._curve is not None,
            lock=self.lock.describe() if self.lock is not None else "off",
        )

    def _do_snapshot(self, _params: object) -> dict[str, Any]:
        """What a dashboard that joins late needs, and the seq it is as new as: it keeps
        the events after `seq` (subscribe first, then ask: nothing falls in between)."""
        assert self.runner is not None and self.engine is not None
        with self.events.hold() as seq:
            scan = self.runner.current
            scan_id = scan["scan_id"] if scan else None
            if scan_id is None and self.last_outcome is not None:
                scan_id = self.last_outcome.get("scan_id")
            flakes = (
                find_flakes(self.engine, FlakeQuery(scan_id=scan_id, order_by="id", limit=100000))
                if scan_id is not None
                else []
            )
            tiles = scan_tiles(self.engine, scan_id) if scan_id is not None else []
            return reply(
                True,
                f"snapshot at seq {seq}",
                seq=seq,
                state=str(self.state.state),
                reason=self.state.reason,
                instrument=self.config.instrument,
                scan=scan,
                scan_id=scan_id,
                last_scan=self.last_outcome,
                tiles=tiles,
                flakes=flakes,
            )

    def _do_scan_start(self, p: ScanStartParams) -> dict[str, Any]:
        assert self.runner is not None
        if not self.state.can(DaemonState.SCANNING):
            return reply(False, f"cannot start a scan while {self.state.state}")
        if self._active is not None:  # the last scan has settled; its thread is ending
            self._reap_scan()
        try:
            request = scan_request(self.config, p, self.runner.microscope)
            plan = self.runner.plan(request)
        except (HardwareError, ValueError) as exc:
            return reply(False, f"scan refused: {exc}")
        scan_id = self.runner.open_scan(request, plan, scan_settings(self.config))
        self.state.set(DaemonState.SCANNING, f"scan {scan_id}")
        self._run_scan(scan_id, request, plan)
        return reply(True, f"scan {scan_id} started", scan_id=scan_id, **plan.describe())

    def _do_scan_resume(self, p: ScanResumeParams) -> dict[str, Any]:
        assert self.runner is not None and self.engine is not None
        if not self.state.can(DaemonState.SCANNING):
            return reply(False, f"cannot resume a scan while {self.state.state}")
        if self._active is not None:
            self._reap_scan()
        scan_id = p.scan_id
        if scan_id is None:
            scans = list_scans(self.engine)
            if not scans:
                return reply(False, "scan_resume: there is no scan to resume")
            scan_id = scans[-1]["id"]
        try:
            request, point = self.runner.reopen_scan(scan_id)
        except KeyError:
            return reply(False, f"scan_resume: no scan {scan_id}")
        except (HardwareError, ValueError) as exc:
            return reply(False, f"scan_resume refused: {exc}")
        self.state.set(DaemonState.SCANNING, f"scan {scan_id} resumed")
        self._run_scan(scan_id, request, point.plan, point)
        return reply(
            True,
            f"scan {scan_id} resumed: {point.tiles_left} of {point.plan.n_tiles} tiles to do",
            scan_id=scan_id,
            resumed_from=point.status,
            tiles_done=len(point.done),
            **point.plan.describe(),
        )

    def _run_scan(
        self, scan_id: int, request: ScanRequest, plan: ScanPlan, resume: ResumePoint | None = None
    ) -> None:
        """The scan in its own thread; the control loop goes on answering."""
        active = _ActiveScan(thread=threading.Thread(), scan_id=scan_id)

        def run() -> None:
            assert self.runner is not None
            try:
                active.outcome = self.runner.run(
                    scan_id, request, plan, on_outcome=self._settle, resume=resume
                )
            except Exception:
                log.exception("scan %s crashed", scan_id)

        active.thread = threading.Thread(target=run, name=f"scan-{scan_id}", daemon=True)
        self._active = active
        active.thread.start()

    def _do_scan_stop(self, _params: object) -> dict[str, Any]:
        if self.state.state == DaemonState.REVISITING:
            self._revisit_cancel.set()  # after the flake in hand
            return reply(True, "the revisit stops after the current flake")
        # Atomic: the scan may end (and leave `scanning`) at any moment.
        if self.runner is None or not self.state.try_set(DaemonState.STOPPING, "stop requested"):
            return reply(False, f"no scan to stop (state {self.state.state})")
        self.runner.cancel()
        return reply(True, "stopping at the next tile boundary")

    def _do_goto_flake(self, p: GotoFlakeParams) -> dict[str, Any]:
        assert self.engine is not None and self.microscope is not None
        if self.state.state in (
            DaemonState.SCANNING,
            DaemonState.STOPPING,
            DaemonState.REVISITING,
        ):
            return reply(False, f"cannot move the stage while {self.state.state}")
        flake = get_flake(self.engine, p.flake_id)
        if flake is None:
            return reply(False, f"no flake with id {p.flake_id}")
        if p.objective is not None:
            return self._start_revisit([flake], p.objective)
        try:
            self.microscope.move_xy(flake["x_um"], flake["y_um"])
        except HardwareError as exc:
            return reply(False, f"goto_flake {p.flake_id}: {exc}")
        x, y = self.microscope.position()
        return reply(True, f"at flake {p.flake_id}", flake=flake, position_um=[x, y])

    def _do_revisit(self, p: RevisitParams) -> dict[str, Any]:
        assert self.engine is not None
        if p.flake_ids:
            q = FlakeQuery(ids=tuple(p.flake_ids), order_by="id")
        elif p.scan_id is not None:
            q = FlakeQuery(
                scan_id=p.scan_id, flake_class=p.flake_class, order_by=p.order_by, limit=p.top
            )
        else:
            return reply(False, "revisit: give flake_ids, or scan_id (with flake_class, top)")
        flakes = find_flakes(self.engine, q)
        if not flakes:
            return reply(False, "revisit: no flake matches")
        return self._start_revisit(flakes, p.objective)

    def _start_revisit(self, flakes: list[dict], objective: str) -> dict[str, Any]:
        """Revisit flakes in a thread (state `revisiting`); `revisit.*` events follow."""
        assert self.microscope is not None and self.components is not None
        mic = self.microscope
        if mic.turret is None:
            return reply(False, "revisit: no objectives are configured ([[objectives]])")
        try:
            mic.turret.get(objective)
        except HardwareError as exc:
            return reply(False, f"revisit: {exc}")
        if not self.state.try_set(DaemonState.REVISITING, f"{len(flakes)} flakes at {objective}"):
            return reply(False, f"cannot revisit while {self.state.state}")
        writer, images = self.components.writer, images_dir(self.state_dir)
        self._revisit_cancel.clear()

        def run() -> None:
            done: list[dict] = []
            try:
                for flake in flakes:
                    if self._revisit_cancel.is_set():
                        break
                    result = revisit_flake(mic, flake, objective, images).as_dict()
                    row = writer.add_flake_image(flake["id"], result)
                    done.append({**result, "image_id": row["id"]})
                    self._publish("revisit.flake", {**result, "image_id": row["id"]})
            except Exception as exc:
                log.exception("revisit failed")
                reason = f"revisit failed: {type(exc).__name__}: {exc}"
                self.state.set(DaemonState.ERROR, reason)
                self._publish("revisit.failed", {"reason": reason, "done": len(done)})
                return
            # The state first: whoever reacts to the last event finds the daemon settled.
            stopped = self._revisit_cancel.is_set()
            self.state.set(DaemonState.IDLE, f"revisited {len(done)} flakes")
            self._publish(
                "revisit.finished",
                {"objective": objective, "flakes": done, "stopped": stopped},
            )

        self._revisit = threading.Thread(target=run, name="revisit", daemon=True)
        self._revisit.start()
        return reply(
            True,
            f"revisiting {len(flakes)} flakes at {objective}",
            flake_ids=[f["id"] for f in flakes],
        )

    def _do_flakes(self, p: FlakesParams) -> dict[str, Any]:
        assert self.engine is not None
        rows = find_flakes(self.engine, p.query())
        return reply(True, f"{len(rows)} flakes", flakes=rows)

    def _do_flake_annotate(self, p: FlakeAnnotateParams) -> dict[str, Any]:
        assert self.components is not None
        fields = p.model_dump(exclude={"flake_id"})
        try:
            row = self.components.writer.annotate(p.flake_id, **fields)
        except KeyError:
            return reply(False, f"no flake with id {p.flake_id}")
        self._publish("flake.annotated", row)
        return reply(True, f"flake {p.flake_id} annotated", flake=row)

    def _do_scans(self, _params: object) -> dict[str, Any]:
        assert self.engine is not None
        rows = list_scans(self.engine)
        return reply(True, f"{len(rows)} scans", scans=rows)

    def _do_analyze(
        self, p: AnalyzeParams, frames: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        """An analysis (diffraction, or flake finding on an image) of the request's binary
        frames, by the same service as `flakescan analyze` and the HTTP API; pictures come
        back as PNG frames. It runs in the control loop: a flake image takes about 0.3 s."""
        from flakescan.inference.registry import ModelNotFound

        with tempfile.TemporaryDirectory(prefix="flakescan-analyze-") as tmp:
            try:
                uploads = [
                    _saved_input(i, inp, frames, Path(tmp)) for i, inp in enumerate(p.inputs)
                ]
                doc, pictures = self._analysis_service().analyze_uploads(
                    p.model, uploads, p.params, picture=p.picture
                )
            except (ModelNotFound, ValueError, OSError) as exc:
                return reply(False, f"analyze refused: {exc}"), []
        extra: list[bytes] = []
        for result, png in zip(doc["results"], pictures, strict=True):
            if png is not None:
                extra.append(png)
                result["picture_frame"] = len(extra)
        return reply(True, f"{len(doc['results'])} analysed", **doc), extra

    def _do_shutdown(self, _params: object) -> dict[str, Any]:
        self._stop_requested.set()
        return reply(True, "shutting down")


def _peer_name(frame: zmq.Frame) -> str | None:
    """The client's name on the CURVE allow-list (ZAP's User-Id), when there is one."""
    try:
        return frame.get("User-Id") or None
    except zmq.ZMQError:
        return None


def _saved_input(index: int, inp: AnalyzeInput, frames: list[bytes], folder: Path) -> Upload:
    """One `analyze` input written to `folder`: a file's bytes as they came, or a bare array
    (dtype and shape) as .npy; ValueError names the input and the fault."""
    import numpy as np

    from flakescan.inference.analysis import Upload, upload_path

    where = f"inputs[{index}]"
    if inp.frame > len(frames):
        raise ValueError(
            f"{where}.frame = {inp.frame}: the request has {len(frames)} binary frame(s)"
        )
    data = frames[inp.frame - 1]
    path = upload_path(folder, inp.name, index)
    if inp.dtype is None and inp.shape is None:
        path.write_bytes(data)
        return Upload(inp.name, path)
    if inp.dtype is None or inp.shape is None:
        raise ValueError(f"{where}: a bare array needs both dtype and shape")
    try:
        dtype = np.dtype(inp.dtype)
    except TypeError as exc:
        raise ValueError(f"{where}.dtype = {inp.dtype!r}: not a numpy dtype") from exc
    if not np.issubdtype(dtype, np.number) or any(n <= 0 for n in inp.shape):
        raise ValueError(f"{where}: dtype {inp.dtype!r} with shape {inp.shape} is not an image")
    expected = int(np.prod(inp.shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{where}: frame {inp.frame} has {len(data)} bytes, dtype {inp.dtype!r} with shape "
            f"{inp.shape} needs {expected}"
        )
    path = path.with_name(path.name + ".npy")
    np.save(path, np.frombuffer(data, dtype).reshape(inp.shape))
    return Upload(inp.name, path)
