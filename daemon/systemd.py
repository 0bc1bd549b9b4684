"""Running under systemd: the shipped unit, `flakescan install-service`, journal logging.

The unit (`flakescan.service` beside this file) is `Type=notify` with a watchdog (see
`sd_notify`), restarts on failure (a scan killed mid-way is marked interrupted and can be
resumed), and gets its state, cache and log directories from systemd. Its sandbox keeps what
a microscope PC needs reachable: serial ports (dialout), cameras (video, /dev/bus/usb) and
GPUs (/dev/nvidia*, /dev/dri).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from .output import EXIT_FAIL, EXIT_OK, EXIT_USAGE, err

__all__ = ["JournalFormatter", "add_install_service_command", "render_unit", "use_journal"]

UNIT_NAME = "flakescan.service"

# syslog priorities journald reads from a "<N>" line prefix (sd-daemon(3)).
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`: journald stores the level and its own timestamp."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        # Every line of a traceback keeps the record's level.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def use_journal(stream: object = None) -> bool:
    """Whether stderr goes to the journal ($JOURNAL_STREAM names its device and inode)."""
    stream = sys.stderr if stream is None else stream
    spec = os.environ.get("JOURNAL_STREAM", "")
    if not spec or ":" not in spec:
        return False
    try:
        st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (OSError, AttributeError, ValueError):
        return False
    dev, ino = spec.split(":", 1)
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def render_unit(executable: str, config: Path, user: str) -> str:
    """The shipped unit with this installation's command, config and user filled in."""
    template = files("flakescan.daemon").joinpath(UNIT_NAME).read_text()
    return (
        template.replace("@EXEC@", executable)
        .replace("@CONFIG@", str(config))
        .replace("@USER@", user)
    )


def _flakescan_executable() -> str:
    """The `flakescan` script of this environment (the venv the unit must run)."""
    beside = Path(sys.executable).with_name("flakescan")
    if beside.is_file():
        return str(beside)
    found = shutil.which("flakescan")
    if found is None:
        raise FileNotFoundError("no flakescan command beside this Python or on PATH")
    return found


def cmd_install_service(args: argparse.Namespace) -> int:
    """Install the systemd unit that runs the daemon (then: systemctl enable --now flakescan).

    Writes flakescan.service into --unit-dir (default /etc/systemd/system) with this
    environment's flakescan command and the --config it must run with, checks it with
    `systemd-analyze verify` where that exists, and reloads systemd unless --no-reload.
    """
    if args.config is None:
        err("--config: give the service.toml the daemon is to run with")
        return EXIT_USAGE
    config = Path(args.config).expanduser().resolve()
    if not config.is_file():
        err(f"--config {config}: no such file")
        return EXIT_USAGE
    unit_dir = Path(args.unit_dir)
    try:
        text = render_unit(_flakescan_executable(), config, args.user)
        unit_dir.mkdir(parents=True, exist_ok=True)
        path = unit_dir / UNIT_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # never a half-written unit
    except OSError as exc:
        err(f"cannot write {unit_dir / UNIT_NAME}: {exc}")
        return EXIT_FAIL
    print(path)
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            err(f"systemd-analyze verify {path} failed:\n{check.stderr.strip()}")
            return EXIT_FAIL
    if not args.no_reload:
        reload = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
        if reload.returncode != 0:
            err(f"systemctl daemon-reload failed: {reload.stderr.strip()}")
            return EXIT_FAIL
    return EXIT_OK


def add_install_service_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("install-service", cmd_install_service)
    sp.add_argument("--unit-dir", default="/etc/systemd/system")
    sp.add_argument("--user", default="flakescan", help="the account the daemon runs as")
    sp.add_argument("--no-reload", action="store_true", help="skip systemctl daemon-reload")
    sp.set_defaults(func=cmd_install_service)
