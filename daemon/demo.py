"""`flakescan demo`: the whole system on the simulator, end to end, in one command.

Starts the daemon as a subprocess (as systemd would), scans the simulated chip through its
control socket while following the events, prints what was found next to the simulator's
ground truth, and stops the daemon cleanly. The database stays for `flakescan query`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .client import ControlClient, DaemonUnreachable
from .config import load_config, resolve_state_dir
from .follow import ScanFailed, run_remote_scan

__all__ = ["run_demo"]


def run_demo(config: Path | None, state_dir: Path, console: Console) -> int:
    cfg = load_config(config)
    if cfg.hardware.backend != "simulator":
        console.print("[red]the demo runs on the simulator: set [hardware] backend = 'simulator'")
        return 2
    state = resolve_state_dir(cfg, state_dir)
    log_path = state / "daemon.log"
    cmd = [sys.executable, "-m", "flakescan.daemon", "daemon", "--state-dir", str(state)]
    if config is not None:
        cmd += ["--config", str(config)]
    console.print(f"[bold]flakescan demo[/] - daemon log: {log_path}")
    t_start = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = ControlClient(cfg.zmq.control)
    try:
        try:
            status = client.wait_ready(120, alive=lambda: proc.poll() is None)
        except DaemonUnreachable as exc:
            console.print(f"[red]{exc}; last lines of the daemon's log:")
            console.print("\n".join(log_path.read_text().splitlines()[-15:]))
            return 1
        hw = status["hardware"]
        console.print(
            f"daemon up in {time.monotonic() - t_start:.1f} s: simulated {hw['camera']} "
            f"{hw['fov_um'][0]:.0f} x {hw['fov_um'][1]:.0f} um field, {hw['pixel_size_um']} um/px"
        )
        region = cfg.scan.region_um or hw["default_region_um"]
        console.print(
            f"scanning {cfg.simulator.chip.material} chip (seed {cfg.simulator.seed}), "
            f"region {region[2] - region[0]:.0f} x {region[3] - region[1]:.0f} um, "
            f"{cfg.scan.overlap_pct:g} % overlap"
        )
        try:
            outcome = run_remote_scan(cfg.zmq.control, cfg.zmq.events, {"name": "demo"}, console)
        except ScanFailed as exc:
            console.print(f"[red]scan failed: {exc}")
            return 1
        flakes = client.request("flakes", {"scan_id": outcome["scan_id"], "limit": 100000})[
            "flakes"
        ]
        _summary(console, cfg, outcome, flakes, region)
        db = status["database"].removeprefix("sqlite:///")
        console.print(
            f"\ncatalogue: {db}\n"
            f"  flakescan query --db {db} --class 1 --min-area 100\n"
            f"  sqlite3 {db} 'SELECT id, flake_class, x_um, y_um, area_um2 FROM flakes "
            "ORDER BY area_um2 DESC LIMIT 10'",
            soft_wrap=True,  # commands to copy: never broken across lines
        )
    finally:
        if proc.poll() is None:
            try:
                client.request("shutdown")
            except DaemonUnreachable:
                proc.terminate()
            proc.wait(timeout=60)
        console.print(f"daemon exited with code {proc.returncode}")
    return 0 if proc.returncode == 0 else 1


def _summary(console: Console, cfg, outcome: dict, flakes: list[dict], region) -> None:
    from flakescan.simulators.chip import generate_chip
    from flakescan.simulators.evaluate import match_hits

    table = Table(title=f"scan {outcome['scan_id']}: {outcome['status']}")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("tiles", f"{outcome['tiles_done']} / {outcome['tiles_planned']}")
    table.add_row("elapsed", f"{outcome['elapsed_s']:.1f} s")
    table.add_row("s per tile", f"{outcome['elapsed_s'] / max(outcome['tiles_done'], 1):.2f}")
    table.add_row("hits", str(outcome["flakes"]))
    for k, v in sorted(outcome["flakes_per_class"].items()):
        table.add_row(f"  class {k}", str(v))
    chip = generate_chip(cfg.simulator.chip, cfg.simulator.seed)
    report = match_hits(
        chip,
        [(f["x_um"], f["y_um"]) for f in flakes],
        region,
        min_area_um2=cfg.preselection.min_area_um2,
    )
    table.add_row(
        "found / findable (1-5 layers)",
        f"{report.truth_found} / {report.truth_total} ({report.recall:.0%})",
    )
    table.add_row(
        "hits on thin flakes",
        f"{report.hits_on_thin_flakes} / {report.hits_total} ({report.precision:.0%})",
    )
    console.print(table)
