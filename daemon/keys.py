"""CURVE keys: the daemon's key pair, the allow-list of client keys, and clients' own pairs.

One folder (`[zmq] keys_dir`, default `<state_dir>/keys`) in ZMQ's certificate format
(`zmq.auth.create_certificates`: a `NAME.key` holds the public key, `NAME.key_secret` both):

    server.key, server.key_secret   the daemon's pair (the secret never leaves the PC)
    allowed/NAME.key                the allow-list: public keys of clients let in
    clients/NAME.key_secret         pairs made here for clients (`local` is the PC's own CLI)

A client on another machine needs its `NAME.key_secret` and the daemon's `server.key`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

__all__ = ["LOCAL_CLIENT", "ClientCurve", "KeyStore", "KeyStoreError"]

LOCAL_CLIENT = "local"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyStoreError(ValueError):
    """A key that is missing or unusable; the message says which file and what to run."""


@dataclass(frozen=True)
class ClientCurve:
    """What a client needs to reach a CURVE daemon: its own pair and the daemon's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, client_secret_file: Path, server_public_file: Path) -> ClientCurve:
        public, secret = _load(client_secret_file, need_secret=True)
        server_public, _ = _load(server_public_file, need_secret=False)
        assert secret is not None
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket) -> None:
        """Before connect: this socket speaks CURVE to the daemon."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


def _load(path: Path, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"key file {str(path)!r}: {exc}") from None
    if need_secret and not secret:
        raise KeyStoreError(f"key file {str(path)!r} holds no secret key (a .key_secret is needed)")
    return public, secret


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name == "server":
        raise KeyStoreError(
            f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not 'server')"
        )
    return name


class KeyStore:
    """The key folder of one daemon."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.allowed = root / "allowed"
        self.clients = root / "clients"
        self.server_public = root / "server.key"
        self.server_secret = root / "server.key_secret"

    # -- making keys ----------------------------------------------------------------------
    def init(self) -> list[Path]:
        """The daemon's pair and the local CLI's, if missing; returns the files made."""
        made: list[Path] = []
        for d in (self.root, self.allowed, self.clients):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if not self.server_secret.exists():
            made += self._make_pair("server", self.root)
        if not (self.clients / f"{LOCAL_CLIENT}.key_secret").exists():
            made.append(self.add_client(LOCAL_CLIENT))
        return made

    def add_client(self, name: str) -> Path:
        """A new pair for client `name`, let in at once; returns its secret file."""
        _check_name(name)
        if (self.allowed / f"{name}.key").exists():
            raise KeyStoreError(
                f"client {name!r} is already on the allow-list; `flakescan keys revoke {name}` "
                "first to replace its key"
            )
        self.allowed.mkdir(parents=True, exist_ok=True)
        self.clients.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            public, secret = self._make_pair(name, Path(tmp))
            shutil.move(secret, self.clients / secret.name)
            shutil.move(public, self.allowed / public.name)
        return self.clients / f"{name}.key_secret"

    def allow(self, name: str, public_file: Path) -> Path:
        """Let in a client whose pair was made elsewhere (only its public key comes here)."""
        _check_name(name)
        public, _ = _load(public_file, need_secret=False)
        target = self.allowed / f"{name}.key"
        if target.exists():
            raise KeyStoreError(f"client {name!r} is already on the allow-list")
        self.allowed.mkdir(parents=True, exist_ok=True)
        text = (
            "#   ZeroMQ CURVE Public Certificate\n"
            f"#   flakescan client {name}\n"
            "metadata\n"
            "curve\n"
            f'    public-key = "{public.decode()}"\n'
        )
        target.write_text(text)
        return target

    def revoke(self, name: str) -> list[Path]:
        """Off the allow-list (new connections refused at once); its pair made here goes."""
        gone = [p for p in (self.allowed / f"{name}.key", self.clients / f"{name}.key_secret")]
        gone = [p for p in gone if p.exists()]
        if not gone:
            raise KeyStoreError(f"no client {name!r} in {self.root}")
        for p in gone:
            p.unlink()
        return gone

    @staticmethod
    def _make_pair(name: str, folder: Path) -> list[Path]:
        public, secret = zmq.auth.create_certificates(folder, name)
        os.chmod(secret, 0o600)
        return [Path(public), Path(secret)]

    # -- reading keys ---------------------------------------------------------------------
    def allowed_keys(self) -> dict[bytes, str]:
        """z85 public key -> client name, from the allow-list folder as it is now."""
        keys: dict[bytes, str] = {}
        if self.allowed.is_dir():
            for f in sorted(self.allowed.glob("*.key")):
                public, _ = _load(f, need_secret=False)
                keys[public] = f.stem
        return keys

    def list(self) -> list[dict[str, object]]:
        return [
            {
                "name": name,
                "public_key": key.decode(),
                "secret_here": (self.clients / f"{name}.key_secret").exists(),
            }
            for key, name in self.allowed_keys().items()
        ]

    def server_keys(self) -> tuple[bytes, bytes]:
        if not self.server_secret.exists():
            raise KeyStoreError(
                f"no server key in {self.root}: run `flakescan keys init` (CURVE is on)"
            )
        public, secret = _load(self.server_secret, need_secret=True)
        assert secret is not None
        return public, secret

    def client(self, name: str = LOCAL_CLIENT) -> ClientCurve:
        """A client pair made here (the PC's own CLI uses `local`)."""
        return ClientCurve.from_files(self.clients / f"{name}.key_secret", self.server_public)
