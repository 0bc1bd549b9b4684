"""service.toml: the whole configuration, validated at start.

Each layer owns the model of its own section (`hardware/config.py`, `inference/config.py`,
...); this module composes them, reads TOML, resolves paths relative to the file, and turns
a validation failure into one message that names the key and the value.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flakescan.db.config import DatabaseConfig
from flakescan.hardware.config import HardwareConfig, ObjectiveConfig, TravelLimits
from flakescan.hardware.focus import FocusConfig
from flakescan.inference.config import ModelsConfig, PreselectionConfig
from flakescan.inference.registry import is_model_path
from flakescan.simulators.config import ReplayConfig, SimulatorConfig

from .chip_finder import ChipFinderConfig
from .scan_plan import RegionUm

__all__ = [
    "ConfigError",
    "DashboardConfig",
    "ScanDefaults",
    "ServiceConfig",
    "ZmqConfig",
    "images_dir",
    "keys_dir",
    "load_config",
    "presets_dir",
    "resolve_state_dir",
]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key and value."""


class ScanDefaults(BaseModel):
    """`[scan]`: what a scan covers when the request does not say."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # x0, y0, x1, y1 in stage um; empty: the whole chip (simulator only).
    region_um: RegionUm | None = None
    overlap_pct: float = Field(10.0, ge=0, lt=90)
    z_um: float | None = None
    chip_id: str = Field("chip-1", min_length=1, max_length=128)
    # The overview map's scale; every tile leaves a preview at about this many um per pixel.
    overview_um_per_px: float = Field(4.0, gt=0, le=1000)
    # Keep every full-resolution tile (TIFF) for `flakescan overview --ome-tiff`.
    keep_tiles: bool = False


def _is_loopback(endpoint: str) -> bool:
    parsed = urlparse(endpoint)
    if parsed.scheme in ("ipc", "inproc"):
        return True
    host = parsed.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ZmqConfig(BaseModel):
    """`[zmq]`: where the daemon listens for control and publishes events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    control: str = "tcp://127.0.0.1:5555"
    events: str = "tcp://127.0.0.1:5556"
    # The control socket moves a stage: off loopback only when asked for explicitly, and
    # then only with CURVE.
    allow_remote: bool = False
    # Encrypt both sockets and let in only the client keys on the allow-list (ZAP);
    # `flakescan keys init` makes the daemon's keys. Required off loopback.
    curve: bool = False
    keys_dir: Path | None = None  # default: <state_dir>/keys
    # One controlling client at a time (`lock` / `unlock`); readers are never locked out.
    control_lock: bool = False
    lock_idle_s: float = Field(600.0, gt=0, le=86400)  # a quiet holder loses the lock
    # Events queued per subscriber before a subscriber that stopped reading loses them
    # (the PUB socket's SNDHWM): about a minute of a busy scan at 10,000 events/min.
    events_queue: int = Field(10_000, ge=100, le=10_000_000)
    # Clients wait up to 10 s for the first heartbeat: keep well below.
    heartbeat_s: float = Field(1.0, gt=0, le=5)

    @model_validator(mode="after")
    def _endpoints(self) -> ZmqConfig:
        for key in ("control", "events"):
            ep = getattr(self, key)
            parsed = urlparse(ep)
            if parsed.scheme not in ("tcp", "ipc", "inproc"):
                raise ValueError(f"{key} = {ep!r}: expected tcp://host:port or ipc://path")
            if parsed.scheme == "tcp" and parsed.port is None:
                raise ValueError(f"{key} = {ep!r}: a tcp endpoint needs a port")
            if _is_loopback(ep):
                continue
            if not self.allow_remote:
                raise ValueError(
                    f"{key} = {ep!r} is not a loopback address; set allow_remote = true "
                    "to listen on the network"
                )
            if not self.curve:
                raise ValueError(
                    f"{key} = {ep!r} is off loopback: set curve = true (and run `flakescan "
                    "keys init`), so only clients with an allowed key get in"
                )
        if self.control == self.events:
            raise ValueError(f"control and events must differ, both are {self.control!r}")
        return self


def with_address(section: BaseModel, host: str | None, port: int | None) -> BaseModel:
    """A `[http]` / `[dashboard]` section with the command line's host and port, validated
    again (so an address off loopback still needs allow_remote)."""
    return type(section).model_validate(
        {
            **section.model_dump(),
            **({"host": host} if host else {}),
            **({"port": port} if port is not None else {}),
        }
    )


class HttpConfig(BaseModel):
    """`[http]`: the analysis service over HTTP (the daemon starts it when enabled;
    `flakescan serve` runs it on its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)  # 0: any free port (tests)
    # Anyone who can reach it can run the models: off loopback only when asked for.
    allow_remote: bool = False
    max_upload_mb: float = Field(64.0, gt=0, le=4096)
    workers: int = Field(2, ge=1, le=64, description="analyses run at once; others queue")
    # A file holding the access token (Authorization: Bearer); required off loopback.
    token_file: Path | None = None

    @model_validator(mode="after")
    def _loopback(self) -> HttpConfig:
        _check_served_host(self.host, self.allow_remote, self.token_file)
        return self


class DashboardConfig(BaseModel):
    """`[dashboard]`: where `flakescan dashboard` listens. The page shows the lab's chips to
    whoever opens it: off loopback only when asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8766, ge=0, le=65535)
    allow_remote: bool = False
    token_file: Path | None = None  # required off loopback, as for [http]

    @model_validator(mode="after")
    def _loopback(self) -> DashboardConfig:
        _check_served_host(self.host, self.allow_remote, self.token_file)
        return self


def _check_served_host(host: str, allow_remote: bool, token_file: Path | None) -> None:
    if _is_loopback(f"tcp://{host}:1"):
        return
    if not allow_remote:
        raise ValueError(
            f"host = {host!r} is not a loopback address; set allow_remote = true "
            "to serve on the network"
        )
    if token_file is None:
        raise ValueError(
            f"host = {host!r} is off loopback: set token_file (a file holding the access "
            "token: `flakescan keys token FILE` makes one)"
        )


class SystemdConfig(BaseModel):
    """`[systemd]`: how the daemon proves to systemd's watchdog that it is alive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A scan that finishes no tile, focus point or step for this long is stuck (a device
    # that never answers): the watchdog pings stop, and systemd restarts the daemon.
    scan_stall_s: float = Field(120.0, gt=0, le=86400)
    # Asked for (EXTEND_TIMEOUT_USEC) while the database, models and hardware load.
    start_timeout_s: float = Field(300.0, gt=0, le=86400)


class ServiceConfig(BaseModel):
    """Everything the daemon needs; every section has working simulator defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instrument: str = Field("sim-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    state_dir: Path | None = None
    hardware: HardwareConfig = HardwareConfig()
    travel_limits: TravelLimits = TravelLimits()
    objective: ObjectiveConfig = ObjectiveConfig()
    # The other objectives, with offsets calibrated against [objective]; empty on the
    # simulator: its turret's own (1x, 20x, 50x), as a calibration would have found them.
    objectives: list[ObjectiveConfig] = []
    simulator: SimulatorConfig = SimulatorConfig()
    replay: ReplayConfig | None = None
    scan: ScanDefaults = ScanDefaults()
    preselection: PreselectionConfig = PreselectionConfig()
    models: ModelsConfig = ModelsConfig()
    database: DatabaseConfig = DatabaseConfig()
    zmq: ZmqConfig = ZmqConfig()
    http: HttpConfig = HttpConfig()
    focus: FocusConfig = FocusConfig()
    chip_finder: ChipFinderConfig = ChipFinderConfig()
    dashboard: DashboardConfig = DashboardConfig()
    systemd: SystemdConfig = SystemdConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> ServiceConfig:
        if self.hardware.backend == "mmconfig" and self.scan.region_um is None:
            raise ValueError("scan.region_um is required with the mmconfig backend")
        if self.hardware.backend == "replay" and self.replay is None:
            raise ValueError("backend 'replay' needs a [replay] section with mosaic or tiles")
        self.hardware.check_against(self.travel_limits)  # park and home inside the limits
        return self

    def database_url(self, state_dir: Path) -> str:
        return self.database.url or f"sqlite:///{(state_dir / 'flakescan.db').resolve()}"


def _format_error(err: dict[str, Any], source: str) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    key = ".".join(loc) if loc else "(top level)"
    section, _, leaf = key.rpartition(".")
    value = err.get("input")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if isinstance(value, dict):  # a whole table failed a cross-check
        return f"{source}: [{key}]: {msg}"
    where = f"[{section}] {leaf}" if section else key
    if err.get("type") == "extra_forbidden":
        return f"{source}: unknown key {where}"
    if err.get("type") == "missing":
        return f"{source}: {where}: {msg}"
    return f"{source}: {where} = {value!r}: {msg}"


def _resolve_relative(cfg: ServiceConfig, base: Path) -> ServiceConfig:
    """Paths in the file are relative to the file's folder."""
    updates: dict[str, Any] = {}
    if cfg.state_dir is not None and not cfg.state_dir.expanduser().is_absolute():
        updates["state_dir"] = base / cfg.state_dir
    for section, key in (("zmq", "keys_dir"), ("http", "token_file"), ("dashboard", "token_file")):
        sec = updates.get(section, getattr(cfg, section))
        value = getattr(sec, key)
        if value is not None and not value.expanduser().is_absolute():
            updates[section] = sec.model_copy(update={key: base / value})
    models, hardware = cfg.models, cfg.hardware
    md: dict[str, Any] = {}
    for key in ("classifier", "axis", "engine_cache"):
        value = getattr(models, key)
        is_path = key == "engine_cache" or (value is not None and is_model_path(value))
        if value is not None and is_path and not value.expanduser().is_absolute():
            md[key] = base / value
    if any(not p.expanduser().is_absolute() for p in models.registry):
        md["registry"] = [p if p.expanduser().is_absolute() else base / p for p in models.registry]
    if md:
        updates["models"] = models.model_copy(update=md)
    hw: dict[str, Any] = {}
    if hardware.mm_config is not None and not hardware.mm_config.is_absolute():
        hw["mm_config"] = base / hardware.mm_config
    if any(not p.is_absolute() for p in hardware.adapter_paths):
        hw["adapter_paths"] = [p if p.is_absolute() else base / p for p in hardware.adapter_paths]
    if hw:
        updates["hardware"] = hardware.model_copy(update=hw)
    if cfg.replay is not None:
        rp = {
            key: base / value
            for key in ("mosaic", "tiles")
            if (value := getattr(cfg.replay, key)) is not None and not value.is_absolute()
        }
        if rp:
            updates["replay"] = cfg.replay.model_copy(update=rp)
    return cfg.model_copy(update=updates) if updates else cfg


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ServiceConfig:
    """Read and validate a service.toml (None: built-in defaults); ConfigError on any fault."""
    data: dict[str, Any] = {}
    source = "defaults"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        base = p.resolve().parent
    for key, value in (overrides or {}).items():
        data[key] = value
    try:
        cfg = ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_format_error(e, source) for e in exc.errors())) from None
    return _resolve_relative(cfg, base)


def keys_dir(cfg: ServiceConfig, state_dir: Path) -> Path:
    """The CURVE key folder: `[zmq] keys_dir`, or `<state_dir>/keys`."""
    return (cfg.zmq.keys_dir or state_dir / "keys").expanduser()


def images_dir(state_dir: Path) -> Path:
    """Where scans keep their pictures: thumbnails, previews, tiles, overviews, revisits."""
    return state_dir / "thumbnails"


def presets_dir(state_dir: Path) -> Path:
    """Where `flakescan calibrate` keeps the preselection presets scans use by name."""
    return state_dir / "presets"


def resolve_state_dir(cfg: ServiceConfig, override: str | Path | None = None) -> Path:
    """State directory: --state-dir, the file's state_dir, systemd's, then XDG's."""
    if override is not None:
        d = Path(override)
    elif cfg.state_dir is not None:
        d = cfg.state_dir
    elif os.environ.get("STATE_DIRECTORY"):
        d = Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        d = Path(xdg) / "flakescan"
    d = d.expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    return d
