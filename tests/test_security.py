"""Security: CURVE with an allow-list (ZAP), the control lock, the HTTP token, no pickle.

Real daemons on loopback with real CURVE handshakes; the HTTP service under uvicorn."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import zmq
import zmq.auth

from flakescan.daemon.cli import main
from flakescan.daemon.client import ControlClient, DaemonUnreachable, EventSubscriber
from flakescan.daemon.config import ConfigError, load_config
from flakescan.daemon.control_lock import ControlLock, LockRefused
from flakescan.daemon.keys import ClientCurve, KeyStore, KeyStoreError

from .conftest import free_port, write_toml

ROOT = Path(__file__).resolve().parents[1]


# -- keys -----------------------------------------------------------------------------------
def test_key_store_makes_allows_lists_and_revokes(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    made = store.init()
    assert {p.name for p in made} == {"server.key", "server.key_secret", "local.key_secret"}
    assert store.init() == []  # nothing is ever made twice
    assert (store.root.stat().st_mode & 0o777) == 0o700
    assert (store.server_secret.stat().st_mode & 0o777) == 0o600
    alice = store.add_client("alice")
    assert (alice.stat().st_mode & 0o777) == 0o600
    with pytest.raises(KeyStoreError, match="already on the allow-list"):
        store.add_client("alice")
    with pytest.raises(KeyStoreError, match=r"client name '\.\./x'"):
        store.add_client("../x")
    # a key made on another machine: only its public half comes here
    pub, _ = zmq.auth.create_certificates(tmp_path, "bob")
    store.allow("bob", Path(pub))
    listed = {c["name"]: c for c in store.list()}
    assert set(listed) == {"local", "alice", "bob"}
    assert listed["bob"]["secret_here"] is False and listed["alice"]["secret_here"] is True
    assert store.revoke("alice") == [
        store.allowed / "alice.key",
        store.clients / "alice.key_secret",
    ]
    assert "alice" not in {c["name"] for c in store.list()}
    with pytest.raises(KeyStoreError, match="no client 'alice'"):
        store.revoke("alice")


def test_exposed_sockets_need_curve_and_exposed_http_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[zmq\].*off loopback: set curve = true"):
        load_config(None, {"zmq": {"control": "tcp://0.0.0.0:5555", "allow_remote": True}})
    cfg = load_config(
        None, {"zmq": {"control": "tcp://0.0.0.0:5555", "allow_remote": True, "curve": True}}
    )
    assert cfg.zmq.curve
    with pytest.raises(ConfigError, match=r"host = '0.0.0.0' is off loopback: set token_file"):
        load_config(None, {"http": {"host": "0.0.0.0", "allow_remote": True}})
    with pytest.raises(ConfigError, match=r"\[dashboard\].*set token_file"):
        load_config(None, {"dashboard": {"host": "0.0.0.0", "allow_remote": True}})
    path = write_toml(
        tmp_path / "s.toml",
        {"http": {"host": "0.0.0.0", "allow_remote": True, "token_file": "http.token"}},
    )
    assert load_config(path).http.token_file == tmp_path / "http.token"  # relative to file


def test_keys_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = tmp_path / "state"
    assert main(["keys", "init", "--state-dir", str(state)]) == 0
    assert main(["keys", "add", "dash-1", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--state-dir", str(state)]) == 0
    names = {c["name"] for c in json.loads(capsys.readouterr().out)["clients"]}
    assert names == {"local", "dash-1"}
    assert main(["keys", "revoke", "nobody", "--state-dir", str(state)]) == 2
    assert "no client 'nobody'" in capsys.readouterr().err
    assert main(["keys", "token", str(tmp_path / "t.token")]) == 0
    assert len((tmp_path / "t.token").read_text().strip()) >= 32
    assert main(["keys", "token", str(tmp_path / "t.token")]) == 2  # never overwritten


# -- CURVE on a running daemon ----------------------------------------------------------------
def test_curve_daemon_lets_in_only_allow_listed_keys(start_daemon, tmp_path: Path) -> None:
    d = start_daemon({"zmq": {"curve": True}})
    store = KeyStore(d.state_dir / "keys")
    status = d.client.request("status")
    assert status["success"] and status["curve"] is True

    # no keys at all: the handshake fails, and the error says what is wanted
    with pytest.raises(DaemonUnreachable, match="wants CURVE keys"):
        ControlClient(d.control, timeout_s=1.5).request("status")
    # a well-formed pair the daemon never allowed
    pub, secret = zmq.auth.create_certificates(tmp_path, "mallory")
    mallory = ClientCurve.from_files(Path(secret), store.server_public)
    with pytest.raises(DaemonUnreachable, match="refused this client's key"):
        ControlClient(d.control, timeout_s=1.5, curve=mallory).request("status")
    # allowed while the daemon runs: in at once; revoked: out at the next connection
    store.allow("mallory", Path(pub))
    assert ControlClient(d.control, timeout_s=5, curve=mallory).request("status")["success"]
    store.revoke("mallory")
    with pytest.raises(DaemonUnreachable, match="refused this client's key"):
        ControlClient(d.control, timeout_s=1.5, curve=mallory).request("status")

    # the event stream is CURVE too
    with pytest.raises(DaemonUnreachable):
        EventSubscriber(d.events).connect(wait_s=1.5)
    with EventSubscriber(d.events, heartbeats=True, curve=store.client()) as sub:
        assert sub.next(timeout_s=5)["topic"] == "daemon.heartbeat"

    # the command line finds the local key through the config
    assert main(["status", "--config", str(d.config_path)]) == 0
    assert d.stop() == 0
    assert "refused a client with key" in d.log()


def test_curve_daemon_without_keys_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    cfg = write_toml(
        tmp_path / "c.toml",
        {
            "state_dir": str(state),
            "zmq": {
                "control": f"tcp://127.0.0.1:{free_port()}",
                "events": f"tcp://127.0.0.1:{free_port()}",
                "curve": True,
            },
        },
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flakescan.daemon", "daemon", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "no server key in" in proc.stderr and "flakescan keys init" in proc.stderr


# -- the control lock -------------------------------------------------------------------------
def test_control_lock_state_machine() -> None:
    now = [0.0]
    lock = ControlLock(idle_s=60, clock=lambda: now[0])
    with pytest.raises(LockRefused, match="nobody holds it"):
        lock.check("scan_start", None)
    lock.check("status", None)  # readers are never locked out
    token = lock.acquire("alice", None)
    with pytest.raises(LockRefused, match="held by 'alice'"):
        lock.acquire("bob", None)
    with pytest.raises(LockRefused, match="scan_stop: the control lock is held by 'alice'"):
        lock.check("scan_stop", "not-the-token")
    now[0] = 50
    lock.check("scan_stop", token)  # a request keeps it
    now[0] = 100
    lock.check("scan_stop", token)
    now[0] = 161  # 61 s quiet: gone
    assert lock.describe() is None
    bob = lock.acquire("bob", "bob-key")
    carol = lock.acquire("carol", None, steal=True)
    with pytest.raises(LockRefused):
        lock.check("goto_flake", bob)
    with pytest.raises(LockRefused, match="does not hold"):
        lock.release(bob)
    lock.release(carol)
    assert lock.describe() is None


def test_control_lock_on_a_daemon(start_daemon, capsys: pytest.CaptureFixture) -> None:
    d = start_daemon({"zmq": {"control_lock": True}})
    refused = d.client.request("scan_start")
    assert not refused["success"] and "nobody holds it" in refused["msg"]
    assert d.client.request("status")["lock"] is None  # on, not held; reading is free

    capsys.readouterr()
    assert main(["lock", "--holder", "alice", "--config", str(d.config_path)]) == 0
    token = json.loads(capsys.readouterr().out)["token"]
    assert main(["lock", "--holder", "bob", "--config", str(d.config_path)]) == 2
    assert "held by 'alice'" in capsys.readouterr().out

    bob = ControlClient(d.control, timeout_s=10)
    assert "held by 'alice'" in bob.request("scan_stop")["msg"]
    alice = ControlClient(d.control, timeout_s=10, lock_token=token)
    answer = alice.request("scan_stop")  # passes the lock; nothing to stop
    assert answer["msg"].startswith("no scan to stop")
    assert d.client.request("status")["lock"]["holder"] == "alice"
    assert main(["unlock", "--lock-token", token, "--config", str(d.config_path)]) == 0
    assert d.client.request("status")["lock"] is None
    off = ControlClient(d.control).request("unlock", token=token)
    assert not off["success"] and "not held" in off["msg"]


def test_lock_records_the_curve_key_name(start_daemon) -> None:
    d = start_daemon({"zmq": {"curve": True, "control_lock": True}})
    store = KeyStore(d.state_dir / "keys")
    store.add_client("dash-1")
    dash = ControlClient(d.control, timeout_s=10, curve=store.client("dash-1"))
    assert dash.request("lock", {"holder": "night shift"})["success"]
    held = d.client.request("status")["lock"]
    assert held["holder"] == "night shift" and held["key"] == "dash-1"


# -- the HTTP token ---------------------------------------------------------------------------
def _serve(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server, thread


def test_http_service_takes_a_token(tmp_path: Path) -> None:
    from flakescan.daemon.http_api import create_app
    from flakescan.daemon.http_token import make_token_file

    token = make_token_file(tmp_path / "http.token")
    cfg = load_config(
        None, {"http": {"token_file": str(tmp_path / "http.token"), "max_upload_mb": 1}}
    )
    url, server, thread = _serve(create_app(cfg))
    try:
        assert httpx.get(f"{url}/v1/health").status_code == 401
        wrong = httpx.get(f"{url}/v1/health", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong access token" in wrong.json()["detail"]
        ok = httpx.get(f"{url}/v1/health", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        # a person opens the page once with ?token=..., then the cookie carries it
        with httpx.Client() as browser:
            assert browser.get(f"{url}/?token={token}").status_code == 200
            assert browser.get(f"{url}/v1/models").status_code == 200
        # an upload without the token is refused before a byte of it is read
        big = httpx.post(f"{url}/v1/analyze/x", files={"files": ("a.xy", b"0" * 3_000_000)})
        assert big.status_code == 401
        over = httpx.post(
            f"{url}/v1/analyze/x",
            files={"files": ("a.xy", b"0" * 3_000_000)},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert over.status_code == 413 and "max_upload_mb = 1" in over.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_bad_token_file_is_named(tmp_path: Path) -> None:
    from flakescan.daemon.http_api import create_app
    from flakescan.daemon.http_token import TokenError

    (tmp_path / "short.token").write_text("abc\n")
    cfg = load_config(None, {"http": {"token_file": str(tmp_path / "short.token")}})
    with pytest.raises(TokenError, match=r"short.token'.*at least 16 characters"):
        create_app(cfg)
    cfg = load_config(None, {"http": {"token_file": str(tmp_path / "none.token")}})
    with pytest.raises(TokenError, match=r"none\.token"):
        create_app(cfg)


# -- nothing unpickled -----------------------------------------------------------------------
def test_no_pickle_on_the_wire() -> None:
    """No module that serves or reads the wire unpickles: pickle, pyobj sockets and
    allow_pickle are absent from the runtime packages (training is offline, not here)."""
    offenders = []
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.|_pyobj\(|allow_pickle\s*=\s*True")
    for folder in ("daemon", "hardware", "inference", "db", "simulators"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_a_pickled_array_upload_is_refused(tmp_path: Path) -> None:
    """An .npy holding Python objects (it would unpickle) is refused by name."""
    from flakescan.inference.analysis import AnalysisService, Upload

    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cfg = load_config(None)
    service = AnalysisService(cfg.models, cfg.preselection)
    with pytest.raises(ValueError, match=r"evil\.npy: not a numeric \.npy array"):
        service.analyze_uploads("pacbed_srtio3", [Upload("evil.npy", path)])


def test_python_client_with_keys_and_the_lock(start_daemon) -> None:
    from flakescan.client import Client, ClientError

    d = start_daemon({"zmq": {"curve": True, "control_lock": True}})
    store = KeyStore(d.state_dir / "keys")
    secret = store.add_client("notebook")
    c = Client(control=d.control, client_key=secret, server_key=store.server_public)
    assert c.status()["curve"] is True
    with pytest.raises(ClientError, match="nobody holds it"):
        c.stop_scan()
    c.lock("notebook user")
    with pytest.raises(ClientError, match="no scan to stop"):  # past the lock, nothing to do
        c.stop_scan()
    assert c.snapshot()["state"] == "idle"
    c.unlock()
    with pytest.raises(ClientError, match="CURVE needs both"):
        Client(control=d.control, client_key=secret)
