"""Shared fixtures: simulated hardware, free loopback ports, daemons as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flakescan.daemon.client import ClientSecurity, ControlClient, DaemonUnreachable, use_security
from flakescan.daemon.keys import ClientCurve, KeyStore
from flakescan.hardware.backends.simulator import SimulatedMicroscope

from .sim_helpers import sim_microscope


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | Path):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(path: Path, data: dict) -> Path:
    """A small TOML writer for test configs (tables as nested dicts)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {toml_value(v)}")
        for k, v in tables.items():
            emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _client_security_reset() -> Iterator[None]:
    """A CLI command run in-process sets the keys its clients use; no test inherits them."""
    yield
    use_security(ClientSecurity())


@pytest.fixture
def microscope() -> Iterator[SimulatedMicroscope]:
    """A simulated microscope with fast stages, on the default chip."""
    mic = sim_microscope()
    yield mic
    mic.close()


@dataclass
class DaemonProcess:
    """A flakescan daemon started as a subprocess on free loopback ports."""

    proc: subprocess.Popen
    config_path: Path
    state_dir: Path
    control: str
    events: str
    log_path: Path
    curve: ClientCurve | None = None  # with [zmq] curve: the state dir's `local` pair
    client: ControlClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = ControlClient(self.control, timeout_s=20, curve=self.curve)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "flakescan.db"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """Factory: start_daemon(extra_config) -> DaemonProcess, stopped after the test."""
    started: list[DaemonProcess] = []

    def start(extra: dict | None = None, name: str = "d", env: dict | None = None) -> DaemonProcess:
        control = f"tcp://127.0.0.1:{free_port()}"
        events = f"tcp://127.0.0.1:{free_port()}"
        state_dir = tmp_path / f"state-{name}"
        cfg = {
            "instrument": f"test-{name}",
            "state_dir": str(state_dir),
            "zmq": {"control": control, "events": events, "heartbeat_s": 0.2},
            "simulator": {"stage": {"xy_speed_um_s": 50000, "xy_settle_ms": 5}},
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        curve = None
        if cfg["zmq"].get("curve") and not cfg["zmq"].get("keys_dir"):
            store = KeyStore(state_dir / "keys")  # what `flakescan keys init` makes
            store.init()
            curve = store.client()
        path = write_toml(tmp_path / f"{name}.toml", cfg)
        log_path = tmp_path / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flakescan.daemon", "daemon", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        d = DaemonProcess(proc, path, state_dir, control, events, log_path, curve)
        started.append(d)
        try:
            d.client.wait_ready(90, alive=lambda: proc.poll() is None)
        except DaemonUnreachable as exc:
            raise AssertionError(f"{exc}:\n{d.log()}") from None
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator:
    """A PostgreSQL server of the tests' own (tests/pg_server.py) for the whole session;
    skipped, saying why, where there is none, unless FLAKESCAN_REQUIRE_POSTGRES=1 (CI)."""
    from .pg_server import REQUIRE_ENV, PostgresServer, postgres_missing

    missing = postgres_missing()
    if missing:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {missing}")
        pytest.skip(missing)
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request) -> Iterator[str]:
    """A new empty database on that server for one test; its SQLAlchemy URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)
