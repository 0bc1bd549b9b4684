"""Fuzzing (hypothesis) of what comes from outside: control messages, config files, uploads.

Every input is answered with a clear error (or served), never a crash: the daemon stays up,
a config is loaded or refused with ConfigError naming a key, an upload is analysed or
refused with ValueError/OSError naming the client's file."""

from __future__ import annotations

import json
import string
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flakescan.daemon.client import ControlClient
from flakescan.daemon.config import ConfigError, ServiceConfig, load_config
from flakescan.daemon.protocol import METHODS

from .conftest import write_toml

_FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same inputs every run: a failure is reproducible
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


def _field_names(method: str) -> list[str]:
    return list(METHODS[method].model_fields)


@st.composite
def _requests(draw) -> bytes:
    """Garbage, JSON that is no request, and requests near the real ones: a real or an
    invented method, real and invented parameter names, values of any JSON type."""
    kind = draw(st.sampled_from(["bytes", "json", "request", "request", "request"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    methods = sorted(set(METHODS) - {"shutdown"})  # the one request that ends the test
    method = draw(st.sampled_from(methods) | st.text(max_size=12))
    names = _field_names(method) if method in METHODS else []
    keys = st.sampled_from(names) | st.text(max_size=8) if names else st.text(max_size=8)
    params = draw(st.dictionaries(keys, _json, max_size=4))
    envelope: dict = {"method": method, "params": params}
    if draw(st.booleans()):
        envelope["token"] = draw(_json)
    return json.dumps(envelope).encode()


def test_fuzzed_control_messages_get_clear_replies_and_the_daemon_lives(start_daemon):
    d = start_daemon()
    client = ControlClient(d.control, timeout_s=30)
    seen = {"refused": 0, "served": 0}

    @settings(_FUZZ, max_examples=400)
    @given(raw=_requests())
    def check(raw: bytes) -> None:
        answer = client.send_raw(raw)
        assert isinstance(answer["success"], bool) and isinstance(answer["msg"], str)
        if answer["success"]:
            seen["served"] += 1
            return
        seen["refused"] += 1
        assert answer["msg"].strip(), raw
        assert "Traceback" not in answer["msg"]
        # a refused valid method says which method it was refused for, or why not now
        try:
            method = json.loads(raw)["method"]
        except Exception:  # garbage: any clear reason will do
            return
        if isinstance(method, str) and method in METHODS and "failed:" in answer["msg"]:
            raise AssertionError(f"{method} crashed inside: {answer['msg']}")

    check()
    print(f"\ncontrol messages: {seen}")
    assert seen["refused"] > 100 and seen["served"] > 0
    d.client.request("scan_stop")
    status = d.client.request("status")
    assert status["success"], status
    assert d.proc.poll() is None
    assert d.stop() == 0


# -- config files ---------------------------------------------------------------------------
def _config_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for name, field in ServiceConfig.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        keys[name] = list(sub) if sub else []
    return keys


_KEYS = _config_keys()
_scalar = (
    st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(string.printable, max_size=16)
    | st.lists(st.integers(-5, 5) | st.floats(-1e6, 1e6), max_size=5)
)


@st.composite
def _configs(draw) -> dict:
    """service.toml tables with real and invented sections and keys, any values."""
    data: dict = {}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(
            st.sampled_from(sorted(_KEYS)) | st.text(string.ascii_lowercase, min_size=1, max_size=8)
        )
        fields = _KEYS.get(section, [])
        if fields:
            key = st.sampled_from(fields) | st.text(string.ascii_lowercase, min_size=1, max_size=8)
            data[section] = draw(st.dictionaries(key, _scalar, min_size=1, max_size=3))
        else:
            data[section] = draw(_scalar)
    return data


def test_fuzzed_config_files_load_or_name_the_bad_key(tmp_path: Path):
    outcomes = {"loaded": 0, "refused": 0}

    @settings(_FUZZ, max_examples=400)
    @given(data=_configs())
    @example(data={"scan": {"overlap_pct": 20.0}, "zmq": {"heartbeat_s": 0.5}})  # loads
    @example(data={"travel_limits": {"z_min_um": 10.0, "z_max_um": -10.0}})  # cross-check
    def check(data: dict) -> None:
        path = tmp_path / "fuzz.toml"
        write_toml(path, data)
        try:
            tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            with pytest.raises(ConfigError, match="not valid TOML"):
                load_config(path)
            outcomes["refused"] += 1
            return
        try:
            load_config(path)
        except ConfigError as exc:
            outcomes["refused"] += 1
            msg = str(exc)
            assert msg.startswith(str(path)), msg
            # every line names the section it is about (a key in it, or the whole table)
            for line in msg.splitlines():
                named = line.removeprefix(f"{path}: ")
                assert any(k in named for k in (*data, "(top level)")), line
        else:
            outcomes["loaded"] += 1

    check()
    print(f"\nconfig files: {outcomes}")
    assert outcomes["refused"] > 50 and outcomes["loaded"] > 0, outcomes


def test_fuzzed_text_is_refused_as_toml(tmp_path: Path):
    @settings(_FUZZ, max_examples=150)
    @given(text=st.text(max_size=200))
    def check(text: str) -> None:
        path = tmp_path / "junk.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(exc).startswith(str(path))

    check()


# -- uploads --------------------------------------------------------------------------------
_SUFFIXES = [".npy", ".xy", ".csv", ".txt", ".dm4", ".dm3", ".tif", ".png", ".hkl", ".raw", ""]
_MODELS = ["xrd_cnn1d", "pacbed_srtio3", "phase_unet", "flake_classifier_cnn4"]


@st.composite
def _uploads(draw) -> tuple[str, str, bytes]:
    suffix = draw(st.sampled_from(_SUFFIXES))
    kind = draw(st.sampled_from(["bytes", "text", "npy"]))
    if kind == "bytes":
        blob = draw(st.binary(max_size=4096))
    elif kind == "text":
        rows = draw(st.lists(st.lists(st.floats(allow_nan=True), max_size=3), max_size=40))
        blob = "\n".join(" ".join(repr(v) for v in r) for r in rows).encode()
    else:
        import io

        shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
        dtype = draw(st.sampled_from(["<f4", "<u2", "|u1", "<c8", "|b1", "<i8"]))
        buf = io.BytesIO()
        np.save(buf, np.zeros(shape, dtype=dtype) + 1)
        blob = buf.getvalue()
        if draw(st.booleans()):  # a truncated file
            blob = blob[: draw(st.integers(0, len(blob)))]
    name = draw(st.text(string.ascii_letters + "./-_ ", min_size=0, max_size=12)) + suffix
    return draw(st.sampled_from(_MODELS)), name, blob


def test_fuzzed_uploads_are_analysed_or_refused_naming_the_file(tmp_path: Path):
    from flakescan.inference.analysis import AnalysisService, Upload, upload_path

    cfg = load_config(None)
    service = AnalysisService(cfg.models, cfg.preselection)
    outcomes = {"served": 0, "refused": 0}

    @settings(_FUZZ, max_examples=250)
    @given(case=_uploads())
    def check(case: tuple[str, str, bytes]) -> None:
        model, name, blob = case
        path = upload_path(tmp_path / "up", name, 0)
        assert path.resolve().is_relative_to((tmp_path / "up").resolve())  # never outside
        path.write_bytes(blob)
        client_name = name or path.name
        try:
            doc, _ = service.analyze_uploads(model, [Upload(client_name, path)])
        except (ValueError, OSError) as exc:
            outcomes["refused"] += 1
            assert str(exc).strip()
            assert str(tmp_path) not in str(exc), "a server path leaked into the error"
        else:
            outcomes["served"] += 1
            assert len(doc["results"]) == 1

    check()
    print(f"\nuploads: {outcomes}")
    assert outcomes["refused"] > 50, outcomes
