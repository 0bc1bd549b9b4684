"""`flakescan`: the command line. Each subcommand is one function a test can call.

Exit codes: 0 success, 1 failure (scan failed, daemon unreachable, startup fault),
2 bad input (configuration, arguments, request refused).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from .analyze import ANALYSES
from .calibrate_cli import add_calibrate_command
from .catalogue_cli import add_catalogue_commands, database_url
from .config import ConfigError, ServiceConfig, load_config, resolve_state_dir
from .keys_cli import add_client_security_options, add_keys_command, configure_client
from .output import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from .output import err as _err
from .systemd import JournalFormatter, add_install_service_command, use_journal
from .tools import cmd_evaluate, cmd_evaluate_images, cmd_sim_truth, cmd_simulate

__all__ = ["build_parser", "main"]


def _console() -> Console:
    return Console(stderr=False, highlight=False)


def _config(args: argparse.Namespace) -> ServiceConfig:
    return load_config(args.config)


def _endpoints(args: argparse.Namespace) -> tuple[str, str]:
    """The daemon's endpoints; the clients of this process get their keys and lock token."""
    cfg = _config(args)
    configure_client(args, cfg)
    return (args.control or cfg.zmq.control, args.events or cfg.zmq.events)


# -- daemon -------------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    """Run the scan daemon in the foreground until shutdown or SIGTERM."""
    from .assembly import StartupError
    from .service import Daemon

    # A native crash (a driver, a library's thread) leaves its Python stacks in the log.
    faulthandler.enable()
    cfg = _config(args)
    state_dir = resolve_state_dir(cfg, args.state_dir)
    daemon = Daemon(cfg, state_dir)
    # Before start: a SIGTERM while hardware and model load ends in a clean exit 0 too.
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except StartupError as exc:
        _err(f"cannot start: {exc}")
        return EXIT_FAIL
    try:
        daemon.serve_forever()
    finally:
        daemon.close()
    log = logging.getLogger(__name__)
    if left := [t.name for t in threading.enumerate() if t is not threading.main_thread()]:
        log.warning("threads still running at exit: %s", ", ".join(left))
    log.info("daemon stopped")
    return EXIT_OK


# -- scan ---------------------------------------------------------------------------------
def _scan_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.region is not None:
        params["region_um"] = args.region
    if args.overlap is not None:
        params["overlap_pct"] = args.overlap
    if args.chip_id is not None:
        params["chip_id"] = args.chip_id
    if args.name:
        params["name"] = args.name
    if args.autofocus is not None:
        params["autofocus"] = args.autofocus
    if args.keep_tiles:
        params["keep_tiles"] = True
    if args.find_chip:
        params["find_chip"] = True
    if args.preset:
        params["preset"] = args.preset
    return params


def _print_outcome(console: Console, outcome: dict[str, Any]) -> None:
    per_class = outcome.get("flakes_per_class") or {}
    classes = ", ".join(f"class {k}: {v}" for k, v in sorted(per_class.items())) or "none"
    console.print(
        f"scan {outcome.get('scan_id')} {outcome.get('status')}: "
        f"{outcome.get('tiles_done')}/{outcome.get('tiles_planned')} tiles, "
        f"{outcome.get('flakes')} flakes ({classes}) in {outcome.get('elapsed_s', 0):.1f} s"
        + (f" - {outcome['reason']}" if outcome.get("reason") else "")
    )


def cmd_scan(args: argparse.Namespace) -> int:
    """Scan a chip region: through the running daemon, or in-process with --local."""
    console = _console()
    if args.local:
        return _scan_local(args, console)
    from .client import DaemonUnreachable
    from .follow import ScanFailed, run_remote_scan

    control, events = _endpoints(args)
    method, params = "scan_start", _scan_params(args)
    if args.resume is not None:
        method, params = "scan_resume", {} if args.resume == _NEWEST else {"scan_id": args.resume}
    try:
        outcome = run_remote_scan(
            control, events, params, console, show_progress=not args.no_progress, method=method
        )
    except DaemonUnreachable as exc:
        _err(str(exc))
        return EXIT_FAIL
    except ScanFailed as exc:
        if exc.outcome.get("refused"):
            _err(str(exc))
            return EXIT_USAGE
        _print_outcome(console, exc.outcome)
        return EXIT_FAIL
    _print_outcome(console, outcome)
    return EXIT_OK


_NEWEST = -1  # `scan --resume` without an id: the newest scan


def _newest_scan(engine: Any) -> int:
    from flakescan.db.queries import list_scans

    scans = list_scans(engine)
    if not scans:
        raise KeyError("there is no scan to resume")
    return int(scans[-1]["id"])


def _scan_local(args: argparse.Namespace, console: Console) -> int:
    from flakescan.hardware.errors import HardwareError

    from .assembly import StartupError, open_components, scan_request, scan_settings
    from .follow import progress_bar, progress_updater
    from .protocol import ProtocolError, ScanStartParams

    cfg = _config(args)
    state_dir = resolve_state_dir(cfg, args.state_dir)
    try:
        p = ScanStartParams.model_validate(_scan_params(args))
    except Exception as exc:
        raise ProtocolError(str(exc)) from exc
    bar = None if args.no_progress else progress_bar(console)
    task = None

    def update(t, d):
        return None

    if bar is not None:
        task = bar.add_task("scan", total=None, scan_id="", flakes=0)
        update = progress_updater(bar, task)
    try:
        parts = open_components(cfg, state_dir, lambda topic, data: update(topic, data))
    except StartupError as exc:
        _err(f"cannot start: {exc}")
        return EXIT_FAIL
    try:
        resume = None
        try:
            if args.resume is not None:
                scan_id = _newest_scan(parts.engine) if args.resume == _NEWEST else args.resume
                request, resume = parts.runner.reopen_scan(scan_id)
                plan = resume.plan
            else:
                request = scan_request(cfg, p, parts.microscope)
                plan = parts.runner.plan(request)
                settings = {**scan_settings(cfg), "local": True}
                scan_id = parts.runner.open_scan(request, plan, settings)
        except KeyError as exc:
            _err(f"scan refused: {exc.args[0]}")
            return EXIT_USAGE
        except (HardwareError, ValueError) as exc:
            _err(f"scan refused: {exc}")
            return EXIT_USAGE
        if bar is not None and task is not None:
            done = len(resume.done) if resume is not None else 0
            bar.update(task, total=plan.n_tiles, completed=done, scan_id=scan_id)
            bar.start()
        try:
            outcome = parts.runner.run(scan_id, request, plan, resume=resume)
        finally:
            if bar is not None:
                bar.stop()
    finally:
        parts.close()
    _print_outcome(console, outcome.as_dict())
    return EXIT_OK if outcome.status == "completed" else EXIT_FAIL


# -- control ------------------------------------------------------------------------------
def _control_call(args: argparse.Namespace, method: str, params: dict | None = None) -> int:
    from .client import ControlClient, DaemonUnreachable

    control, _ = _endpoints(args)
    try:
        answer = ControlClient(control, timeout_s=args.timeout).request(method, params)
    except DaemonUnreachable as exc:
        _err(str(exc))
        return EXIT_FAIL
    print(json.dumps(answer, indent=1, default=str))
    return EXIT_OK if answer.get("success") else EXIT_USAGE


def cmd_status(args: argparse.Namespace) -> int:
    """Print the daemon's status as JSON."""
    return _control_call(args, "status")


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the running scan at the next tile boundary."""
    return _control_call(args, "scan_stop")


def cmd_shutdown(args: argparse.Namespace) -> int:
    """Ask the daemon to exit (a running scan stops and keeps its hits)."""
    return _control_call(args, "shutdown")


def cmd_lock(args: argparse.Namespace) -> int:
    """Take the control lock ([zmq] control_lock); prints the token that later commands
    pass as --lock-token (or $FLAKESCAN_LOCK_TOKEN)."""
    return _control_call(args, "lock", {"holder": args.holder, "steal": args.steal})


def cmd_unlock(args: argparse.Namespace) -> int:
    """Release the control lock (give its token with --lock-token)."""
    return _control_call(args, "unlock")


def cmd_goto(args: argparse.Namespace) -> int:
    """Drive the stage to a flake of the catalogue; with --objective, image it there,
    re-centred by registration, and keep the image with the flake."""
    if args.objective is None:
        return _control_call(args, "goto_flake", {"flake_id": args.flake_id})
    return _revisit_job(
        args, "goto_flake", {"flake_id": args.flake_id, "objective": args.objective}
    )


def cmd_revisit(args: argparse.Namespace) -> int:
    """Revisit the best N hits of a scan at a higher magnification (images kept with them)."""
    params: dict[str, Any] = {
        "scan_id": args.scan_id,
        "objective": args.objective,
        "top": args.top,
        "order_by": args.order_by,
    }
    if args.flake_class is not None:
        params["flake_class"] = args.flake_class
    return _revisit_job(args, "revisit", params)


def _revisit_job(args: argparse.Namespace, method: str, params: dict[str, Any]) -> int:
    """Start a revisit and follow its events to the end; print what it took."""
    from .client import ControlClient, DaemonUnreachable, EventSubscriber

    control, events = _endpoints(args)
    try:
        with EventSubscriber(events, ("revisit.",)) as sub:
            answer = ControlClient(control, timeout_s=args.timeout).request(method, params)
            if not answer.get("success"):
                print(json.dumps(answer, indent=1, default=str))
                return EXIT_USAGE
            while True:
                ev = sub.next(timeout_s=args.job_timeout)
                if ev is None:
                    _err(f"no revisit event for {args.job_timeout} s")
                    return EXIT_FAIL
                if ev["topic"] == "revisit.flake":
                    r = ev["data"]
                    _err(
                        f"flake {r['flake_id']} at {r['objective']}: {r['image_path']} "
                        f"(focus {r['focus']}, registered {r['registered']})"
                    )
                elif ev["topic"] in ("revisit.finished", "revisit.failed"):
                    print(json.dumps(ev["data"], indent=1, default=str))
                    return EXIT_OK if ev["topic"] == "revisit.finished" else EXIT_FAIL
    except DaemonUnreachable as exc:
        _err(str(exc))
        return EXIT_FAIL


def cmd_events(args: argparse.Namespace) -> int:
    """Print the daemon's events as JSON lines."""
    from .client import DaemonUnreachable, EventSubscriber

    _, events = _endpoints(args)
    topics = tuple(args.topic) if args.topic else ("",)
    try:
        with EventSubscriber(events, topics, heartbeats=args.heartbeats) as sub:
            for n, ev in enumerate(sub, start=1):
                print(json.dumps(ev), flush=True)
                if args.count and n >= args.count:
                    break
    except DaemonUnreachable as exc:
        _err(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:
        pass
    return EXIT_OK


# -- catalogue ----------------------------------------------------------------------------
def cmd_scans(args: argparse.Namespace) -> int:
    """List the scans in the catalogue as JSON."""
    from flakescan.db.engine import open_database
    from flakescan.db.queries import list_scans

    engine = open_database(database_url(args), create=False)
    try:
        print(json.dumps(list_scans(engine), indent=1, default=str))
    finally:
        engine.dispose()
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """List the models the daemon can load by name: the registry folders, then the shipped."""
    from rich.table import Table

    from flakescan.inference.registry import ModelRegistry

    cfg = _config(args)
    registry = ModelRegistry([*args.registry, *cfg.models.registry])
    entries = [e.summary() for e in registry.entries(args.task)]
    if args.format == "json":
        print(json.dumps({"folders": [str(f) for f in registry.folders], "models": entries}))
        return EXIT_OK
    table = Table(title="models (first folder wins): " + ", ".join(map(str, registry.folders)))
    for col in ("name", "task", "architecture", "parameters", "sha256"):
        table.add_column(col, no_wrap=True)
    for e in entries:
        arch = e["architecture"].split(" (")[0]
        table.add_row(e["name"], e["task"], arch, f"{e['parameters']:,}", e["sha256"][:12])
    _console().print(table)
    return EXIT_OK


# -- simulator and training -----------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Start a daemon on the simulator, scan the chip through it, print a summary."""
    from .demo import run_demo

    return run_demo(args.config, args.state_dir, _console())


_TRAINERS = {
    "classifier": "flakescan.training.train_classifier",
    "clr": "flakescan.training.clr",
    "axis": "flakescan.training.train_axis",
    "xrd": "flakescan.training.train_xrd",
    "pacbed": "flakescan.training.train_pacbed",
    "phase": "flakescan.training.train_phase",
}
_TESTERS = {"axis": "flakescan.training.test_axis"}


def _run_training_module(module: str, argv: list[str]) -> int:
    """Import a training or simulation entry point lazily: torch is only in the `train`
    extra, the diffraction simulators only in `diffraction`."""
    import importlib

    try:
        entry = importlib.import_module(module).main
    except ImportError as exc:
        if exc.name == module:
            _err(f"{module} is not part of this flakescan installation")
        else:
            _err(
                f"{module} needs {exc.name}, which is not installed: "
                f"pip install 'flakescan[train,diffraction]' ({exc})"
            )
        return EXIT_FAIL
    return int(entry(argv) or 0)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model: the flake classifier, contrastive pre-training, or the axis regressor
    (needs the `train` extra: torch). Arguments may come from a file: @config.txt."""
    return _run_training_module(_TRAINERS[args.model], args.train_args)


def cmd_test(args: argparse.Namespace) -> int:
    """Test a trained model on a held-out set in the seed's convention (needs torch)."""
    return _run_training_module(_TESTERS[args.model], args.test_args)


def cmd_evaluate_model(args: argparse.Namespace) -> int:
    """Evaluate ONNX models on labelled sets: metrics across thresholds, plots, a report."""
    return _run_training_module("flakescan.training.evaluate_model", args.eval_args)


def cmd_pacbed_library(args: argparse.Namespace) -> int:
    """Simulate a PACBED library on abTEM (resumable; hours on one core; needs the
    diffraction extra). `flakescan pacbed-library --help` lists the options."""
    return _run_training_module("flakescan.simulators.pacbed_cli", args.library_args)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the live dashboard (a web page following the daemon's scans) until
    interrupted; loopback unless [dashboard] allow_remote."""
    from .dashboard import run_dashboard

    cfg = _config(args)
    configure_client(args, cfg)  # its relay and status calls reach a CURVE daemon too
    run_dashboard(cfg, resolve_state_dir(cfg, args.state_dir), args.host, args.port)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the analysis models over HTTP (the registry, POST /v1/analyze/MODEL, OpenAPI
    at /docs) until interrupted; loopback unless [http] allow_remote."""
    from .http_api import run_server

    run_server(_config(args), args.host, args.port)
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse diffraction data with a served model: powder-XRD phase identification with
    anomaly detection, PACBED thickness and mistilt, structure-factor phases and the charge
    density. Prints JSON; --plot-dir writes a validation picture per file."""
    from flakescan.inference.backends import BackendUnavailable
    from flakescan.inference.registry import ModelNotFound

    from .analyze import RemoteError, run_analysis

    try:
        print(run_analysis(args, _config(args)))
    except ModelNotFound as exc:
        _err(str(exc))
        return EXIT_USAGE
    except BackendUnavailable as exc:
        _err(f"backend unavailable: {exc}")
        return EXIT_FAIL
    except RemoteError as exc:
        _err(str(exc))
        return EXIT_FAIL
    except ImportError as exc:
        _err(f"analysis needs the diffraction extra: pip install 'flakescan[diffraction]' ({exc})")
        return EXIT_FAIL
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan",
        description="Automated flake hunting: scan a chip through Micro-Manager, find thin "
        "flakes, keep a catalogue.",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, **kw: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__, **kw)
        sp.set_defaults(func=func)
        sp.add_argument(
            "--config", type=Path, default=None, help="service.toml (default: built-in)"
        )
        return sp

    def endpoints(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--control", help="control endpoint (default: from config)")
        sp.add_argument("--events", help="events endpoint (default: from config)")
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
        add_client_security_options(sp)

    sp = add("daemon", cmd_daemon)
    sp.add_argument("--state-dir", type=Path, help="state directory (database, thumbnails)")

    sp = add("scan", cmd_scan)
    endpoints(sp)
    sp.add_argument("--region", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="um")
    sp.add_argument("--overlap", type=float, help="tile overlap in percent")
    sp.add_argument("--chip-id")
    sp.add_argument("--name", default="")
    focus = sp.add_mutually_exclusive_group()
    focus.add_argument(
        "--autofocus",
        dest="autofocus",
        action="store_const",
        const=True,
        default=None,
        help="focus map and surface first, refocus during the scan (default: [focus] enabled)",
    )
    focus.add_argument("--no-autofocus", dest="autofocus", action="store_const", const=False)
    sp.add_argument("--keep-tiles", action="store_true", help="keep full-resolution tiles")
    sp.add_argument("--preset", help="a preselection preset from `flakescan calibrate`")
    sp.add_argument(
        "--find-chip",
        action="store_true",
        help="find the chip at the lowest magnification first; scan its outline only",
    )
    sp.add_argument(
        "--resume",
        nargs="?",
        type=int,
        const=_NEWEST,
        metavar="SCAN_ID",
        help="go on with an unfinished scan (interrupted, stopped, failed) from its first "
        "tile not done; without an id, the newest scan",
    )
    sp.add_argument("--local", action="store_true", help="run in this process, no daemon")
    sp.add_argument("--state-dir", type=Path, help="with --local: state directory")
    sp.add_argument("--no-progress", action="store_true")

    for name, func in (("status", cmd_status), ("stop", cmd_stop), ("shutdown", cmd_shutdown)):
        endpoints(add(name, func))
    sp = add("lock", cmd_lock)
    endpoints(sp)
    sp.add_argument("--holder", required=True, help="who takes control (a name people know)")
    sp.add_argument("--steal", action="store_true", help="take it from whoever holds it")
    endpoints(add("unlock", cmd_unlock))
    add_keys_command(add)
    sp = add("goto", cmd_goto)
    endpoints(sp)
    sp.add_argument("flake_id", type=int)
    sp.add_argument("--objective", help="image the flake with this objective (e.g. 50x)")
    sp.add_argument("--job-timeout", type=float, default=120.0, help="s between revisit events")

    sp = add("revisit", cmd_revisit)
    endpoints(sp)
    sp.add_argument("scan_id", type=int)
    sp.add_argument("--objective", required=True, help="e.g. 50x")
    sp.add_argument("--class", dest="flake_class", type=int, choices=[1, 2, 3])
    sp.add_argument("--top", type=int, default=5, help="how many flakes")
    sp.add_argument(
        "--order-by",
        choices=["area", "rect_width", "inscribed_diameter", "score", "id"],
        default="area",
        help="best first by this",
    )
    sp.add_argument("--job-timeout", type=float, default=120.0, help="s between revisit events")

    sp = add("events", cmd_events)
    endpoints(sp)
    sp.add_argument("--topic", action="append", help="topic prefix (repeatable)")
    sp.add_argument("--count", type=int, default=0, help="stop after N events")
    sp.add_argument("--heartbeats", action="store_true", help="also print heartbeats")

    sp = add("scans", cmd_scans)
    sp.add_argument("--db", help="database file or SQLAlchemy URL (default: from config)")
    sp.add_argument("--state-dir", type=Path)
    add_catalogue_commands(add)
    add_calibrate_command(add)
    add_install_service_command(add)

    sp = add("sim-truth", cmd_sim_truth)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("simulate", cmd_simulate)
    sp.add_argument(
        "what",
        choices=["chip", "classifier-set", "axis-set", "xrd"],
        help="a chip (mosaic, truth, preview), a training set in a seed's file convention, or "
        "powder XRD patterns (.xy)",
    )
    sp.add_argument("--seed", type=int, required=True, help="chip seed (sets: the first)")
    sp.add_argument("--out", type=Path, required=True, help="output folder")
    sp.add_argument("--chips", type=int, default=1, help="sets: how many chips; xrd: patterns")
    sp.add_argument("--phase", action="append", help="xrd: a phase (repeat for a mixture)")
    sp.add_argument("--test-chips", type=int, default=0, help="axis-set: chips for test/")
    sp.add_argument(
        "--label",
        default="edges",
        choices=["edges", "lattice"],
        help="axis-set: label with what the straight edges agree on, or the lattice axis",
    )
    sp.add_argument("--no-terraces", action="store_true", help="axis-set: whole crystals only")
    sp.add_argument("--size-um", type=float, nargs=2, metavar=("W", "H"), help="chip size (um)")
    sp.add_argument("--pixel-size", type=float, help="um/px (default: the objective's)")
    sp.add_argument("--vary", action="store_true", help="draw each chip's imaging conditions")

    sp = add("evaluate", cmd_evaluate)
    sp.add_argument("--scan", type=int, required=True)
    sp.add_argument("--truth", type=Path, required=True, help="truth.json of the chip")
    sp.add_argument("--db", help="database file or SQLAlchemy URL (default: from config)")
    sp.add_argument("--state-dir", type=Path)
    sp.add_argument("--format", choices=["table", "json"], default="table")

    sp = add("evaluate-images", cmd_evaluate_images)
    sp.add_argument("--coco", type=Path, required=True, help="a COCO annotation file")
    sp.add_argument("--pixel-size", type=float, required=True, help="um/px of the images")
    sp.add_argument("--material", choices=["graphene", "hBN", "MoS2", "WSe2"], default="hBN")
    sp.add_argument("--oxide", type=float, default=285.0, help="SiO2 thickness, nm")
    sp.add_argument("--max-layers", type=int, help="thickest flake the preset looks for")
    sp.add_argument("--flare", type=float, default=0.15)
    sp.add_argument("--min-contrast", type=float, default=0.04)
    sp.add_argument("--min-cover", type=float, default=0.3, help="share of a label to find it")
    sp.add_argument("--pixels-linear", action="store_true", help="do not decode sRGB")
    sp.add_argument("--no-classifier", action="store_true")
    sp.add_argument("--format", choices=["table", "json"], default="table")

    sp = add("models", cmd_models)
    sp.add_argument("--registry", type=Path, action="append", default=[], help="a folder")
    sp.add_argument("--task", help="only models of this task (flake-classifier, ...)")
    sp.add_argument("--format", choices=["table", "json"], default="table")

    sp = add("demo", cmd_demo)
    sp.add_argument("--state-dir", type=Path, default=Path("demo-state"))

    sp = add("train", cmd_train)
    sp.add_argument("model", choices=sorted(_TRAINERS))
    sp.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of the trainer")

    sp = add("test", cmd_test)
    sp.add_argument("model", choices=sorted(_TESTERS))
    sp.add_argument("test_args", nargs=argparse.REMAINDER, help="arguments of the tester")

    sp = add("analyze", cmd_analyze)
    sp.add_argument("kind", choices=ANALYSES, help="what the files hold")
    sp.add_argument(
        "files", nargs="+", type=Path, help="measured files (.xy/.csv, .npy/.tif/.dm4, .hkl)"
    )
    sp.add_argument("--model", help="model name in the registry, or a .onnx path")
    sp.add_argument("--plot-dir", type=Path, help="write <file>.<kind>.png pictures here")
    sp.add_argument("--server", help="a running `flakescan serve`, e.g. http://127.0.0.1:8765")
    sp.add_argument(
        "--system",
        help="pacbed: material system (register ID or name, e.g. 1 or SrTiO3); picks its model",
    )
    sp.add_argument("--conv-angle-mrad", type=float, help="pacbed: the probe's convergence angle")
    sp.add_argument(
        "--energy-kev", type=float, help="pacbed: acceleration voltage (checked against the model)"
    )
    sp.add_argument("--zone-axis", help="pacbed: e.g. [001] (checked against the model)")
    sp.add_argument("--library", type=Path, help="pacbed: a library, for the best-match picture")
    sp.add_argument("--dtype", help="pacbed, raw files: numpy dtype, e.g. '<u2'")
    sp.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="raw files")
    sp.add_argument("--pixel-size-um", type=float, help="flake: micrometres per image pixel")
    sp.add_argument(
        "--linear", action="store_true", help="flake: the image is linear (not sRGB-encoded)"
    )

    sp = add("dashboard", cmd_dashboard)
    sp.add_argument("--host", help="address (default: [dashboard] host, loopback)")
    sp.add_argument("--port", type=int, help="port (default: [dashboard] port, 8766)")
    sp.add_argument("--state-dir", type=Path, help="the daemon's state directory")
    add_client_security_options(sp)

    sp = add("serve", cmd_serve)
    sp.add_argument("--host", help="address (default: [http] host, loopback)")
    sp.add_argument("--port", type=int, help="port (default: [http] port)")

    sp = add("pacbed-library", cmd_pacbed_library, add_help=False)
    sp.add_argument("library_args", nargs=argparse.REMAINDER, help="arguments of the generator")

    sp = add("evaluate-model", cmd_evaluate_model, add_help=False)
    sp.add_argument("eval_args", nargs=argparse.REMAINDER, help="arguments of the evaluator")
    return p


# Commands whose arguments belong to another program (a trainer, an evaluator), and how
# many words (the command, its model) flakescan itself reads before handing over the rest.
_PASS_THROUGH = {
    "train": ("train_args", 2),
    "test": ("test_args", 2),
    "evaluate-model": ("eval_args", 1),
    "pacbed-library": ("library_args", 1),
}
_TOP_LEVEL_VALUE_OPTIONS = {"--log-level"}


def _split_pass_through(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(words for flakescan's parser, the pass-through command or None, words for it).

    argparse's REMAINDER cannot start with an option ("evaluate-model --classifier M"), and
    parse_known_args would reorder the words, so the hand-over is cut out by position.
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _PASS_THROUGH:
            n = _PASS_THROUGH[word][1]
            return argv[: i + n], word, argv[i + n :]
        if not word.startswith("-"):
            break  # another command
        i += 2 if word in _TOP_LEVEL_VALUE_OPTIONS else 1
    return argv, None, []


def main(argv: list[str] | None = None) -> int:
    head, command, rest = _split_pass_through(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(head)
    if command is not None:
        setattr(args, _PASS_THROUGH[command][0], rest)
    handler = logging.StreamHandler(sys.stderr)
    if use_journal():  # under systemd: levels as journal priorities, its own timestamps
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    logging.getLogger("pymmcore-plus").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ValueError as exc:  # bad arguments that argparse cannot see (e.g. a region)
        _err(str(exc))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
