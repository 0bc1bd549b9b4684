"""A throwaway PostgreSQL server for the tests: Debian's binaries, a cluster in a temporary
folder, loopback only, stopped and removed afterwards.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the `postgres`
user the Debian package creates, and its commands run through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "postgres_missing"]

REQUIRE_ENV = "FLAKESCAN_REQUIRE_POSTGRES"


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb and pg_ctl."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()
    ]
    return max(found, key=lambda d: int(d.parent.name)) if found else None


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root; None: ourselves."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def postgres_missing() -> str | None:
    """Why a server cannot be started here (None: it can)."""
    if _bin_dir() is None:
        return (
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
            "(Debian package postgresql; `make test` installs it)"
        )
    if os.geteuid() == 0:
        try:
            _run_as()
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and there is no runuser to start the server as postgres"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """One cluster on 127.0.0.1:`port`, superuser `flakescan`, trust authentication."""

    root: Path
    port: int
    bin_dir: Path

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError(postgres_missing() or "no PostgreSQL")
        root = Path(tempfile.mkdtemp(prefix="flakescan-pg-"))
        user = _run_as()
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        server = cls(root, _free_port(), bin_dir)
        try:
            server._pg(
                "initdb",
                "-D",
                str(root / "data"),
                "-U",
                "flakescan",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            options = (
                f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            server._pg(
                "pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60",
                "-o", options, "start",
            )  # fmt: skip
        except BaseException:
            server.log_tail()
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def _pg(self, program: str, *args: str) -> None:
        cmd = [str(self.bin_dir / program), *args]
        if _run_as() is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr or done.stdout}\n"
                f"{self.log_tail()}"
            )

    def log_tail(self) -> str:
        log = self.root / "log"
        return log.read_text()[-2000:] if log.is_file() else ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://flakescan@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=flakescan dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=flakescan dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
