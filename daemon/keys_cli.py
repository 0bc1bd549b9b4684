"""`flakescan keys ...` (CURVE keys, HTTP tokens) and the security options every client
command takes (`--client-key`, `--server-key`, `--lock-token`)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from .client import ClientSecurity, use_security
from .config import ServiceConfig, keys_dir, load_config, resolve_state_dir
from .http_token import TokenError, make_token_file
from .keys import ClientCurve, KeyStore, KeyStoreError
from .output import EXIT_OK, EXIT_USAGE
from .output import err as _err

__all__ = ["add_client_security_options", "add_keys_command", "configure_client"]

_ENV_CLIENT_KEY = "FLAKESCAN_CLIENT_KEY"
_ENV_SERVER_KEY = "FLAKESCAN_SERVER_KEY"
_ENV_LOCK_TOKEN = "FLAKESCAN_LOCK_TOKEN"


def _store(args: argparse.Namespace, cfg: ServiceConfig) -> KeyStore:
    return KeyStore(keys_dir(cfg, resolve_state_dir(cfg, getattr(args, "state_dir", None))))


def cmd_keys(args: argparse.Namespace) -> int:
    """Make and list the CURVE keys of `[zmq] curve`: init (the daemon's pair and the local
    CLI's), add NAME (a new client), allow NAME FILE (a client's public key made elsewhere),
    list, revoke NAME; token FILE makes an HTTP access token."""
    cfg = load_config(args.config)
    try:
        if args.action == "token":
            if not args.names:
                _err("keys token: give the file to write, e.g. /etc/flakescan/http.token")
                return EXIT_USAGE
            make_token_file(Path(args.names[0]))
            print(json.dumps({"token_file": args.names[0]}))
            return EXIT_OK
        store = _store(args, cfg)
        if args.action == "init":
            made = store.init()
            print(json.dumps({"keys_dir": str(store.root), "made": [str(p) for p in made]}))
        elif args.action == "list":
            print(json.dumps({"keys_dir": str(store.root), "clients": store.list()}, indent=1))
        elif args.action in ("add", "revoke", "allow"):
            need = 2 if args.action == "allow" else 1
            if len(args.names) != need:
                what = "NAME PUBLIC_KEY_FILE" if need == 2 else "NAME"
                _err(f"keys {args.action}: give {what}")
                return EXIT_USAGE
            if args.action == "add":
                secret = store.add_client(args.names[0])
                print(
                    json.dumps(
                        {
                            "client": args.names[0],
                            "client_key": str(secret),
                            "server_key": str(store.server_public),
                            "hint": "give the client both files (--client-key, --server-key)",
                        },
                        indent=1,
                    )
                )
            elif args.action == "allow":
                path = store.allow(args.names[0], Path(args.names[1]))
                print(json.dumps({"client": args.names[0], "allowed": str(path)}))
            else:
                gone = store.revoke(args.names[0])
                print(json.dumps({"client": args.names[0], "removed": [str(p) for p in gone]}))
    except (KeyStoreError, TokenError, FileExistsError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    return EXIT_OK


def add_keys_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    sp = add("keys", cmd_keys)
    sp.add_argument("action", choices=["init", "add", "allow", "list", "revoke", "token"])
    sp.add_argument("names", nargs="*", help="add/revoke: NAME; allow: NAME FILE; token: FILE")
    sp.add_argument("--state-dir", type=Path, help="the daemon's state directory")


def add_client_security_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--client-key",
        type=Path,
        help=f"CURVE: this client's NAME.key_secret (or ${_ENV_CLIENT_KEY}; default with "
        "[zmq] curve: the keys folder's local key)",
    )
    sp.add_argument(
        "--server-key", type=Path, help=f"CURVE: the daemon's server.key (or ${_ENV_SERVER_KEY})"
    )
    sp.add_argument(
        "--lock-token", help=f"the control lock's token (or ${_ENV_LOCK_TOKEN}), when it is on"
    )


def configure_client(args: argparse.Namespace, cfg: ServiceConfig) -> None:
    """The keys and lock token this process's clients use: options, environment, then (with
    `[zmq] curve`) the keys folder's `local` pair. KeyStoreError names a missing file."""
    client_key = getattr(args, "client_key", None) or os.environ.get(_ENV_CLIENT_KEY)
    server_key = getattr(args, "server_key", None) or os.environ.get(_ENV_SERVER_KEY)
    token = getattr(args, "lock_token", None) or os.environ.get(_ENV_LOCK_TOKEN) or None
    curve: ClientCurve | None = None
    if client_key or cfg.zmq.curve:
        store = _store(args, cfg)
        if client_key:
            curve = ClientCurve.from_files(
                Path(client_key), Path(server_key) if server_key else store.server_public
            )
        else:
            curve = store.client()
    use_security(ClientSecurity(curve=curve, lock_token=token))
