"""The daemon's side of CURVE: its sockets encrypt, and ZAP lets in only allow-listed keys.

pyzmq's ThreadAuthenticator answers ZAP requests; the allow-list is read from the key
folder at each handshake (cached until the folder changes), so `flakescan keys revoke`
refuses the next connection without a restart. A connection already made stays until it
drops (control clients make one per request; an event subscriber keeps its own).
"""

from __future__ import annotations

import logging
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

from .keys import KeyStore

__all__ = ["CurveGuard"]

log = logging.getLogger(__name__)
_DOMAIN = "flakescan"


class _AllowList:
    """The ZAP credentials provider: is this z85 public key on the allow-list?"""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[bytes, str] = {}

    def names(self) -> dict[bytes, str]:
        folder = self._store.allowed
        st = folder.stat() if folder.exists() else None
        stamp = (st.st_mtime_ns, st.st_ino) if st else (0, 0)
        with self._lock:
            if stamp != self._stamp:
                self._keys = self._store.allowed_keys()
                self._stamp = stamp
            return self._keys

    def callback(self, _domain: str, key: bytes) -> bool:
        name = self.names().get(key)
        if name is None:
            log.warning("CURVE: refused a client with key %s (not on the allow-list)", key.decode())
            return False
        return True


class _NamingAuthenticator(ThreadAuthenticator):
    """User-Id of a message = the client's name on the allow-list (shown by the lock)."""

    allow_list: _AllowList

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        return self.allow_list.names().get(z85.encode(client_public_key), "?")


class CurveGuard:
    """Starts ZAP on a context and turns the daemon's sockets into CURVE servers."""

    def __init__(self, ctx: zmq.Context, store: KeyStore) -> None:
        self.store = store
        self._public, self._secret = store.server_keys()
        self._allow = _AllowList(store)
        self._auth = _NamingAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.allow_list = self._allow
        self._auth.start()
        self._auth.configure_curve_callback(domain=_DOMAIN, credentials_provider=self._allow)
        n = len(self._allow.names())
        log.info("CURVE on: %d client key(s) on the allow-list in %s", n, store.allowed)

    def secure(self, sock: zmq.Socket) -> None:
        """Before bind: the socket is a CURVE server whose peers ZAP checks."""
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self._public
        sock.curve_server = True
        sock.zap_domain = _DOMAIN.encode()

    def stop(self) -> None:
        self._auth.stop()
