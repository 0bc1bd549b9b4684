"""The control protocol: JSON `{"method": ..., "params": {...}}` in, `{"success", "msg", ...}` out.

A request may carry `"token"`: the control lock's (see control_lock.py), when it is on.

After bluesky-queueserver's envelope: every method has a params model with no extra keys
allowed, so a misspelt parameter is an error that names it, never silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flakescan.db.queries import FlakeQuery
from flakescan.inference.analysis import AnalysisParams

from .scan_plan import RegionUm

__all__ = [
    "METHODS",
    "AnalyzeInput",
    "AnalyzeParams",
    "EmptyParams",
    "FlakeAnnotateParams",
    "FlakesParams",
    "GotoFlakeParams",
    "LockParams",
    "ProtocolError",
    "Request",
    "RevisitParams",
    "ScanStartParams",
    "parse_envelope",
    "parse_request",
    "reply",
]


class ProtocolError(ValueError):
    """A request that cannot be served; the message is the reply's `msg`."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EmptyParams(_Params):
    pass


class ScanStartParams(_Params):
    region_um: RegionUm | None = None
    overlap_pct: float | None = Field(None, ge=0, lt=90)
    chip_id: str | None = Field(None, min_length=1, max_length=128)
    name: str = Field("", max_length=256)
    z_um: float | None = None
    keep_tiles: bool | None = None  # default: [scan] keep_tiles
    autofocus: bool | None = None  # default: [focus] enabled
    find_chip: bool | None = None  # default: [chip_finder] enabled
    # A preselection preset (`flakescan calibrate`) by name; default: [preselection].
    preset: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class ScanResumeParams(_Params):
    """An unfinished scan (interrupted, stopped or failed) to go on with; default: the
    newest scan, if it is unfinished."""

    scan_id: int | None = Field(None, ge=1)


class GotoFlakeParams(_Params):
    flake_id: int = Field(..., ge=1)
    # With an objective: a revisit of this one flake (a job; `revisit.*` events).
    objective: str | None = Field(None, min_length=1, max_length=64)


class RevisitParams(_Params):
    """The flakes to revisit: by id, or the first `top` of a scan (and class) by `order_by`."""

    objective: str = Field(..., min_length=1, max_length=64)
    flake_ids: list[int] | None = Field(None, min_length=1, max_length=1000)
    scan_id: int | None = Field(None, ge=1)
    flake_class: int | None = Field(None, ge=1, le=3)
    top: int = Field(5, ge=1, le=1000)
    order_by: Literal["area", "rect_width", "inscribed_diameter", "score", "id"] = "area"


class FlakesParams(_Params):
    """The filters of `db.queries.FlakeQuery`, checked."""

    scan_id: int | None = Field(None, ge=1)
    chip_id: str | None = None
    flake_class: int | None = Field(None, ge=1, le=3)
    min_area_um2: float | None = Field(None, ge=0)
    max_area_um2: float | None = Field(None, ge=0)
    min_aspect_ratio: float | None = Field(None, ge=1)
    max_aspect_ratio: float | None = Field(None, ge=1)
    min_rect_width_um: float | None = Field(None, ge=0)
    min_rect_length_um: float | None = Field(None, ge=0)
    min_inscribed_diameter_um: float | None = Field(None, ge=0)
    axis_min_deg: float | None = Field(None, ge=0, le=360)
    axis_max_deg: float | None = Field(None, ge=0, le=360)
    used: bool | None = None
    favourite: bool | None = None
    notes_contain: str | None = Field(None, min_length=1, max_length=256)
    ids: list[int] | None = Field(None, min_length=1, max_length=10000)
    order_by: Literal["area", "rect_width", "inscribed_diameter", "score", "id"] = "area"
    limit: int = Field(1000, ge=1, le=100000)

    def query(self) -> FlakeQuery:
        fields = self.model_dump()
        fields["ids"] = tuple(self.ids) if self.ids else None
        return FlakeQuery(**fields)


class FlakeAnnotateParams(_Params):
    """Notes and flags a person puts on a flake; what is left out stays as it is."""

    flake_id: int = Field(..., ge=1)
    notes: str | None = Field(None, max_length=10000)
    append_note: bool = False
    used: bool | None = None
    favourite: bool | None = None


class AnalyzeInput(_Params):
    """One input of `analyze`: the bytes of binary frame `frame` (1 = the first after the
    JSON). A file as written (its `name`'s suffix says the format: .npy, .dm4, .xy, .hkl ...),
    or with `dtype` and `shape` a bare C-order array (never a pickle)."""

    name: str = Field(..., min_length=1, max_length=255)
    frame: int = Field(..., ge=1)
    dtype: str | None = Field(None, max_length=16)
    shape: list[int] | None = Field(None, min_length=1, max_length=4)


class AnalyzeParams(_Params):
    model: str = Field(..., min_length=1)
    inputs: list[AnalyzeInput] = Field(..., min_length=1, max_length=256)
    params: AnalysisParams = AnalysisParams()
    picture: bool = False  # the validation pictures as PNG frames after the JSON


class LockParams(_Params):
    """Take the control lock (`[zmq] control_lock`) as `holder` (a person or program)."""

    holder: str = Field(..., min_length=1, max_length=64)
    steal: bool = False  # take it from whoever holds it (logged)


METHODS: dict[str, type[_Params]] = {
    "status": EmptyParams,
    "scan_start": ScanStartParams,
    "scan_resume": ScanResumeParams,
    "scan_stop": EmptyParams,
    "goto_flake": GotoFlakeParams,
    "revisit": RevisitParams,
    "flakes": FlakesParams,
    "flake_annotate": FlakeAnnotateParams,
    "scans": EmptyParams,
    "shutdown": EmptyParams,
    "analyze": AnalyzeParams,
    "snapshot": EmptyParams,
    "lock": LockParams,
    "unlock": EmptyParams,
}


def reply(success: bool, msg: str = "", **fields: Any) -> dict[str, Any]:
    return {"success": success, "msg": msg, **fields}


@dataclass(frozen=True)
class Request:
    method: str
    params: _Params
    token: str | None = None


def parse_request(raw: bytes) -> tuple[str, _Params]:
    """Decode and validate a request; ProtocolError says what is wrong with it."""
    req = parse_envelope(raw)
    return req.method, req.params


def parse_envelope(raw: bytes) -> Request:
    """A request with its lock token; ProtocolError says what is wrong with it."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - {"method", "params", "token"}
    if unknown:
        raise ProtocolError(
            f"unknown request keys {sorted(unknown)}; expected 'method', 'params' and "
            "optionally 'token'"
        )
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(f"'token' must be a string, got {type(token).__name__}")
    method = obj.get("method")
    if not isinstance(method, str):
        raise ProtocolError(f"'method' must be a string, got {method!r}")
    model = METHODS.get(method)
    if model is None:
        raise ProtocolError(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(f"'params' must be an object, got {type(params).__name__}")
    try:
        return Request(method, model.model_validate(params), token)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"]) or "params"
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown parameter {field!r}")
            elif e["type"] == "missing":
                problems.append(f"missing parameter {field!r}")
            else:
                msg = str(e["msg"]).removeprefix("Value error, ")
                problems.append(f"{field} = {e.get('input')!r}: {msg}")
        raise ProtocolError(f"{method}: " + "; ".join(problems)) from None
