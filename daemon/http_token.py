"""The access token of the HTTP services (`[http]`, `[dashboard]` `token_file`).

Required when a service listens off loopback. A program sends `Authorization: Bearer
<token>`; a person opens the page once as `/?token=<token>`, and the page's own requests
(images, the event stream) then carry it as an HttpOnly cookie.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["TokenError", "make_token_file", "read_token", "require_token"]

_COOKIE = "flakescan_token"
_MIN_LENGTH = 16


class TokenError(ValueError):
    """A token file that cannot be used; the message names it."""


def make_token_file(path: Path) -> str:
    """A new random token in `path`, readable by its owner only."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"token_file = {str(path)!r}: {exc.strerror or exc}") from None
    if len(token) < _MIN_LENGTH or any(c.isspace() for c in token):
        raise TokenError(
            f"token_file = {str(path)!r}: the token must be one word of at least "
            f"{_MIN_LENGTH} characters (`flakescan keys token FILE` makes one)"
        )
    return token


def _presented(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token") or request.cookies.get(_COOKIE)


def require_token(app: FastAPI, token: str) -> None:
    """Every request must present `token`; others get 401 before anything is read."""
    expected = token.encode()

    @app.middleware("http")
    async def _check_token(request: Request, call_next):
        given = _presented(request)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            why = "no access token" if given is None else "wrong access token"
            return JSONResponse(
                {"detail": f"{why}: send Authorization: Bearer <token> (see [http] token_file)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(_COOKIE, given, httponly=True, samesite="strict")
        return response
