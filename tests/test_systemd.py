"""The daemon under systemd: the unit it ships, and what it tells systemd over a real
$NOTIFY_SOCKET (a datagram socket this test binds, as systemd does)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from flakescan.daemon.cli import main
from flakescan.daemon.client import EventSubscriber
from flakescan.daemon.sd_notify import Notifier
from flakescan.daemon.systemd import JournalFormatter, use_journal

ROOT = Path(__file__).resolve().parents[1]
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


class NotifySocket:
    """What systemd would receive: every datagram, with the time it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 60) -> float:
        """The time the first message with key (=value) came."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for t, m in list(self.messages):
                if key in m and (value is None or re.search(value, m[key])):
                    return t
            time.sleep(0.05)
        seen = [m for _, m in self.messages if "WATCHDOG" not in m]
        raise AssertionError(f"no {key}={value} in {seen}")

    def pings(self, since: float, until: float | None = None) -> int:
        until = time.monotonic() if until is None else until
        return sum(1 for t, m in self.messages if since <= t <= until and "WATCHDOG" in m)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def systemd_env(ns: NotifySocket, watchdog_s: float) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}


# -- the unit -----------------------------------------------------------------------------
@needs_systemd_analyze
def test_the_installed_unit_passes_systemd_analyze_verify_and_security(tmp_path, capsys):
    units = tmp_path / "units"
    assert main(["install-service", "--config", str(ROOT / "service.toml"), "--unit-dir",
                 str(units), "--no-reload"]) == 0  # fmt: skip
    unit = (units / "flakescan.service").read_text()
    assert f"--config {ROOT / 'service.toml'}" in unit
    assert not re.search(r"@(EXEC|CONFIG|USER)@", unit)  # every placeholder filled in
    exec_start = re.search(r"^ExecStart=(\S+) daemon", unit, re.M)
    assert exec_start and Path(exec_start.group(1)).is_file()
    for line in ("Type=notify", "WatchdogSec=60", "Restart=on-failure", "StateDirectory=flakescan"):
        assert line in unit.splitlines()
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "flakescan.service")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "flakescan.service" not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(units / "flakescan.service")],
        capture_output=True,
        text=True,
    )
    score = re.search(r"Overall exposure level for flakescan.service: ([\d.]+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    assert float(score.group(1)) <= 2.0  # docs/reliability.md: 1.7 "OK"


def test_install_service_refuses_a_missing_config(tmp_path, capsys):
    assert main(["install-service", "--config", str(tmp_path / "nope.toml"), "--unit-dir",
                 str(tmp_path), "--no-reload"]) == 2  # fmt: skip
    assert "nope.toml: no such file" in capsys.readouterr().err
    assert not (tmp_path / "flakescan.service").exists()


# -- sd_notify ----------------------------------------------------------------------------
def test_the_daemon_is_ready_only_when_it_answers_pings_and_reports_its_scan(
    start_daemon, notify_socket
):
    ns = notify_socket
    d = start_daemon(
        {"scan": {"region_um": [1000.0, 1000.0, 2100.0, 1800.0]}},
        env=systemd_env(ns, watchdog_s=0.5),
    )
    extend = ns.wait_for("EXTEND_TIMEOUT_USEC")
    ready = ns.wait_for("READY", "1")
    assert extend < ready  # more time asked for while models and hardware load
    assert d.client.request("status")["state"] == "idle"  # READY meant it
    time.sleep(1.5)
    assert ns.pings(ready) >= 4  # every 0.25 s (half of WatchdogSec) while idle
    with EventSubscriber(d.events, ("scan.",)) as sub:
        assert d.client.request("scan_start")["success"]
        while (ev := sub.next(timeout_s=60)) is not None and ev["topic"] != "scan.finished":
            pass
    ns.wait_for("STATUS", r"scanning: scan 1, [1-3]/4 tiles, \d+ flakes")
    ns.wait_for("STATUS", "idle: scan 1 completed")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=60) == 0
    ns.wait_for("STOPPING", "1")


def test_a_scan_stuck_on_a_busy_stage_stops_the_watchdog_pings(start_daemon, notify_socket):
    ns = notify_socket
    config = {
        "hardware": {"timeout_ms": 600000},  # the stage never times out: the scan hangs
        "simulator": {
            "stage": {"xy_speed_um_s": 50000, "xy_settle_ms": 5},
            "faults": {"xy_stuck_on_move": 3},
        },
        "systemd": {"scan_stall_s": 1.0},
        "scan": {"region_um": [1000.0, 1000.0, 2100.0, 1800.0]},
    }
    d = start_daemon(config, env=systemd_env(ns, watchdog_s=0.4))
    ns.wait_for("READY", "1")
    assert d.client.request("scan_start")["success"]
    stalled = ns.wait_for("STATUS", r"scan stalled for \d+ s", timeout_s=30)
    time.sleep(2.0)
    assert ns.pings(stalled + 0.05) == 0  # systemd would now restart the daemon
    assert d.client.request("status")["state"] == "scanning"  # the control loop is alive
    assert "watchdog pings withheld" in d.log()


def test_the_notifier_is_silent_outside_systemd_and_honours_watchdog_pid(tmp_path):
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.send(ready=1) and not quiet.watchdog_due()
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None  # the watchdog is another process's
    ns = NotifySocket(tmp_path / "n.sock")
    try:
        n = Notifier({"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "2000000"})
        assert n.watchdog_interval_s == 1.0 and n.watchdog_due()
        n.watchdog()
        assert not n.watchdog_due()
        n.extend_timeout(90, "building a TensorRT engine")
        ns.wait_for("EXTEND_TIMEOUT_USEC", "^90000000$")
        n.close()
    finally:
        ns.close()


# -- the journal --------------------------------------------------------------------------
def test_log_lines_carry_journal_priorities_when_stderr_is_the_journal(tmp_path, monkeypatch):
    record = logging.LogRecord("flakescan.x", logging.ERROR, "f", 1, "tile %d lost", (3,), None)
    assert JournalFormatter().format(record) == "<3>flakescan.x: tile 3 lost"
    warn = logging.LogRecord("a", logging.WARNING, "f", 1, "two\nlines", (), None)
    assert JournalFormatter().format(warn) == "<4>a: two\n<4>lines"
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert use_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not use_journal(stream)


def test_sigterm_mid_scan_keeps_the_tiles_parks_the_stage_and_exits_0(start_daemon):
    d = start_daemon(
        {
            "scan": {"region_um": [1000.0, 1000.0, 3500.0, 3000.0]},
            "hardware": {"park": {"xy_um": [500.0, 600.0]}},
        }
    )
    with EventSubscriber(d.events, ("tile.processed",)) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        for _ in range(2):
            assert sub.next(timeout_s=60) is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=60) == 0
    log = d.log()
    parked = re.search(r"parked: (\{.*\})", log)
    assert parked, log
    assert "'z': 500.0" in parked.group(1)  # the top of the Z travel: away from the chip
    assert "'xy': [500.0, 600.0]" in parked.group(1) and "'problems': []" in parked.group(1)
    con = sqlite3.connect(d.db_path)
    try:
        status, done = con.execute(
            "SELECT status, tiles_done FROM scans WHERE id = ?", (scan_id,)
        ).fetchone()
        tiles = con.execute("SELECT COUNT(*) FROM tiles WHERE scan_id = ?", (scan_id,)).fetchone()
    finally:
        con.close()
    assert status == "stopped" and done == tiles[0] >= 2
