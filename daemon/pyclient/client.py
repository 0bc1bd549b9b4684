"""The client's one class; see the package docstring."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = [
    "Analysis",
    "Client",
    "ClientError",
    "FlakeResult",
    "PacbedResult",
    "PhaseResult",
    "XrdResult",
    "analyze",
]

DEFAULT_HTTP = "http://127.0.0.1:8765"
DEFAULT_CONTROL = "tcp://127.0.0.1:5555"
DEFAULT_EVENTS = "tcp://127.0.0.1:5556"


class ClientError(RuntimeError):
    """The service refused a request (the message is its reason) or could not be reached."""


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    source: str
    picture_png: bytes | None = None  # with picture=True: the validation picture


class XrdResult(_Result):
    phase: str | None  # None: an anomaly
    anomaly: bool
    reason: str
    probabilities: dict[str, float]
    novelty: float
    novelty_threshold: float


class PacbedResult(_Result):
    thickness_nm: float
    thickness_std_nm: float
    mistilt_mrad: float
    mistilt_std_mrad: float
    scale: float
    conv_angle_mrad: float
    warnings: list[str] = []


class FlakeResult(_Result):
    hits: list[dict[str, Any]]  # x_um, y_um from the image centre, flake_class, scores, axis
    candidates: int
    pixel_size_um: float
    skipped_reason: str | None = None


class PhaseResult(_Result):
    phases: list[dict[str, Any]]
    density: dict[str, Any]
    reflections: dict[str, Any]


_RESULTS: dict[str, type[_Result]] = {
    "xrd": XrdResult,
    "pacbed": PacbedResult,
    "phase": PhaseResult,
    "flake": FlakeResult,
}


class Analysis(BaseModel):
    """An answer: the analysis kind, the model that gave it, one result per input."""

    model_config = ConfigDict(frozen=True)

    kind: str
    model: dict[str, Any]
    results: list[XrdResult | PacbedResult | PhaseResult | FlakeResult]

    @classmethod
    def from_reply(cls, doc: dict, pictures: list[bytes | None]) -> Analysis:
        typed = _RESULTS[doc["kind"]]
        results = [
            typed.model_validate({**r, "picture_png": png})
            for r, png in zip(doc["results"], pictures, strict=True)
        ]
        return cls(kind=doc["kind"], model=doc["model"], results=results)


def _as_bytes(item: str | Path | np.ndarray, index: int) -> tuple[str, bytes, np.ndarray | None]:
    """(name, file bytes, the array if it is one): paths are sent as written, arrays as .npy
    (HTTP) or bare frames (ZMQ)."""
    if isinstance(item, np.ndarray):
        rgb = item.ndim == 3 and item.shape[2] == 3
        if item.dtype.hasobject or not (item.ndim == 2 or rgb):
            raise ValueError(
                f"inputs[{index}]: an image array must be 2-D (a pattern) or (h, w, 3) (a "
                f"microscope image) numbers, got {item.dtype} with shape {item.shape}"
            )
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(item), allow_pickle=False)
        return f"array-{index}.npy", buf.getvalue(), np.ascontiguousarray(item)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"inputs[{index}] = {str(path)!r}: no such file")
    return path.name, path.read_bytes(), None


class Client:
    """The service from Python: analyses (HTTP, else ZMQ) and the daemon (ZMQ)."""

    def __init__(
        self,
        http: str | None = None,
        control: str = DEFAULT_CONTROL,
        events: str = DEFAULT_EVENTS,
        timeout_s: float = 60.0,
        *,
        client_key: str | Path | None = None,
        server_key: str | Path | None = None,
        http_token: str | None = None,
        lock_token: str | None = None,
    ) -> None:
        """`client_key` (this client's NAME.key_secret) and `server_key` (the daemon's
        server.key): for a daemon with `[zmq] curve`; `http_token`: for an HTTP service
        with a token_file; `lock_token`: the control lock's, when it is on."""
        self.http = http.rstrip("/") if http else None
        self.control = control
        self.events_endpoint = events
        self.timeout_s = timeout_s
        self.lock_token = lock_token
        self._headers = {"Authorization": f"Bearer {http_token}"} if http_token else {}
        self._curve = None
        if client_key is not None or server_key is not None:
            from flakescan.daemon.keys import ClientCurve

            if client_key is None or server_key is None:
                raise ClientError("CURVE needs both client_key and server_key")
            self._curve = ClientCurve.from_files(Path(client_key), Path(server_key))

    # -- analysis ---------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """The server's registry (HTTP): name, task, kind, parameters, input, output, card."""
        return self._http_get("/v1/models")

    def analyze(
        self,
        data: str | Path | np.ndarray | list[str | Path | np.ndarray],
        model: str,
        *,
        picture: bool = False,
        **params: Any,
    ) -> Analysis:
        """Analyse files or 2-D arrays with a served model; `params` are the analysis
        parameters (conv_angle_mrad, energy_kev, zone_axis, system, dtype, shape;
        flake: pixel_size_um, srgb)."""
        items = data if isinstance(data, list) else [data]
        inputs = [_as_bytes(item, i) for i, item in enumerate(items)]
        if self.http:
            return self._analyze_http(model, inputs, params, picture)
        return self._analyze_zmq(model, inputs, params, picture)

    def _analyze_http(self, model, inputs, params, picture) -> Analysis:
        import httpx

        files = [("files", (name, blob)) for name, blob, _ in inputs]
        form = {"params": json.dumps(params), "picture": "true" if picture else "false"}
        try:
            reply = httpx.post(
                f"{self.http}/v1/analyze/{model}",
                files=files,
                data=form,
                headers=self._headers,
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise ClientError(f"{self.http}: {exc}") from exc
        doc = (
            reply.json()
            if reply.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if reply.status_code != 200:
            raise ClientError(f"HTTP {reply.status_code}: {_detail(doc.get('detail', reply.text))}")
        pictures = [
            base64.b64decode(r.pop("picture_png_base64")) if "picture_png_base64" in r else None
            for r in doc["results"]
        ]
        return Analysis.from_reply(doc, pictures)

    def _analyze_zmq(self, model, inputs, params, picture) -> Analysis:
        specs, frames = [], []
        for name, blob, array in inputs:
            if array is not None:  # a bare frame: no file format in between
                specs.append(
                    {
                        "name": name,
                        "frame": len(frames) + 1,
                        "dtype": array.dtype.str,
                        "shape": list(array.shape),
                    }
                )
                frames.append(array.tobytes())
            else:
                specs.append({"name": name, "frame": len(frames) + 1})
                frames.append(blob)
        request = {"model": model, "inputs": specs, "params": params, "picture": picture}
        answer, extra = self._control().request_frames("analyze", request, frames)
        if not answer.get("success"):
            raise ClientError(answer.get("msg", "analyze failed"))
        pictures = [
            extra[r.pop("picture_frame") - 1] if "picture_frame" in r else None
            for r in answer["results"]
        ]
        return Analysis.from_reply(answer, pictures)

    # -- the daemon ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._request("status")

    def snapshot(self) -> dict[str, Any]:
        """The daemon's state, the current scan's tiles and flakes, and `seq`: subscribe to
        events first, then keep those with a seq above it."""
        return self._request("snapshot")

    def lock(self, holder: str, *, steal: bool = False) -> str:
        """Take the control lock (`[zmq] control_lock`); later requests carry its token."""
        self.lock_token = self._request("lock", {"holder": holder, "steal": steal})["token"]
        return self.lock_token

    def unlock(self) -> None:
        self._request("unlock")
        self.lock_token = None

    def start_scan(self, **params: Any) -> dict[str, Any]:
        """region_um, overlap_pct, chip_id, name, z_um (README: Control protocol)."""
        return self._request("scan_start", params)

    def stop_scan(self) -> dict[str, Any]:
        return self._request("scan_stop")

    def goto_flake(self, flake_id: int) -> dict[str, Any]:
        return self._request("goto_flake", {"flake_id": flake_id})

    def flakes(self, **query: Any) -> list[dict[str, Any]]:
        """The catalogue: scan_id, chip_id, flake_class, min_area_um2, max_area_um2, limit."""
        return self._request("flakes", query)["flakes"]

    def scans(self) -> list[dict[str, Any]]:
        return self._request("scans")["scans"]

    def events(
        self, topics: tuple[str, ...] = ("",), timeout_s: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The daemon's events as they come (heartbeats left out); ends after `timeout_s`
        without one, or never when it is None."""
        from flakescan.daemon.client import EventSubscriber

        with EventSubscriber(self.events_endpoint, topics, curve=self._curve) as sub:
            while (event := sub.next(timeout_s)) is not None:
                yield event

    def _control(self):
        from flakescan.daemon.client import ControlClient

        return ControlClient(
            self.control, timeout_s=self.timeout_s, curve=self._curve, lock_token=self.lock_token
        )

    def _request(self, method: str, params: dict | None = None) -> dict[str, Any]:
        from flakescan.daemon.client import DaemonUnreachable

        try:
            answer = self._control().request(method, params or {})
        except DaemonUnreachable as exc:
            raise ClientError(str(exc)) from exc
        if not answer.get("success"):
            raise ClientError(answer.get("msg", f"{method} failed"))
        return answer

    def _http_get(self, path: str) -> Any:
        import httpx

        if not self.http:
            raise ClientError("this client has no HTTP URL (Client(http=...))")
        try:
            reply = httpx.get(f"{self.http}{path}", headers=self._headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ClientError(f"{self.http}: {exc}") from exc
        if reply.status_code != 200:
            raise ClientError(f"HTTP {reply.status_code}: {reply.text[:500]}")
        return reply.json()


def _detail(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{d.get('field')} = {d.get('value')!r}: {d.get('message')}" for d in detail
        )
    return str(detail)


def analyze(
    data: str | Path | np.ndarray | list[str | Path | np.ndarray],
    model: str,
    *,
    server: str = DEFAULT_HTTP,
    picture: bool = False,
    **params: Any,
) -> Analysis:
    """One analysis on a server, without keeping a Client."""
    return Client(server).analyze(data, model, picture=picture, **params)
