"""`analyze` over the daemon's ZMQ control socket: files and bare arrays as binary frames.

The daemon runs as a subprocess; its answers must equal the local `AnalysisService` (the
code `flakescan analyze` and the HTTP API run) for the same bytes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flakescan.inference.analysis import AnalysisParams, AnalysisService
from flakescan.simulators.xrd_dataset import simulate_xrd_set, write_xy

from .analysis_inputs import pacbed_disc, simulated_tile, write_reflections
from .conftest import free_port

pytestmark = pytest.mark.slow


def _disc(seed: int = 0) -> np.ndarray:
    return pacbed_disc((150, 160), (74.2, 81.7), 38.0, 500.0, seed).astype(np.uint16)


def _strip_source(doc: dict, name: str) -> list[dict]:
    out = []
    for r in doc["results"]:
        r = dict(r)
        assert r.pop("source").endswith(name)
        r.pop("picture_frame", None)
        out.append(json.loads(json.dumps(r)))
    return out


def test_analyze_over_zmq_equals_the_local_service(start_daemon, tmp_path):
    d = start_daemon()
    s = simulate_xrd_set(1, seed=5, n_anomaly=0)
    xy = tmp_path / "powder.xy"
    write_xy(xy, s.counts[0], "simulated")
    disc = _disc()
    np.save(tmp_path / "disc.npy", disc)
    local = AnalysisService()

    answer, frames = d.client.request_frames(
        "analyze",
        {"model": "xrd_cnn1d", "inputs": [{"name": "powder.xy", "frame": 1}], "picture": True},
        [xy.read_bytes()],
    )
    assert answer["success"], answer["msg"]
    assert _strip_source(answer, "powder.xy") == _strip_source(
        local.analyze("xrd", [xy], model="xrd_cnn1d"), "powder.xy"
    )
    (png,) = frames
    assert answer["results"][0]["picture_frame"] == 1 and png[:4] == b"\x89PNG"

    params = {"conv_angle_mrad": 20.0, "energy_kev": 300.0}
    bare = {"name": "frame-0001", "frame": 1, "dtype": "<u2", "shape": list(disc.shape)}
    answer, frames = d.client.request_frames(
        "analyze",
        {"model": "pacbed_srtio3", "inputs": [bare], "params": params},
        [disc.astype("<u2").tobytes()],
    )
    assert answer["success"], answer["msg"]
    assert frames == []  # no picture asked for
    expected = local.analyze(
        "pacbed", [tmp_path / "disc.npy"], AnalysisParams(**params), model="pacbed_srtio3"
    )
    assert _strip_source(answer, "frame-0001") == _strip_source(expected, "disc.npy")

    refusals = [
        ({"model": "xrd_cnn1d", "inputs": [{"name": "a.xy", "frame": 2}]}, [b"1 2\n"], "frame = 2"),
        (
            {"model": "pacbed_srtio3", "inputs": [{**bare, "shape": [10, 10]}], "params": params},
            [disc.tobytes()],
            "needs 200",
        ),
        ({"model": "nope", "inputs": [{"name": "a.xy", "frame": 1}]}, [b""], "no model named"),
        (
            {"model": "../x/xrd_cnn1d", "inputs": [{"name": "a.xy", "frame": 1}]},
            [xy.read_bytes()],
            "a registry name is needed",
        ),
        (
            {"model": "pacbed_srtio3", "inputs": [bare], "params": {"conv_angle_mrad": -3}},
            [disc.tobytes()],
            "params.conv_angle_mrad = -3",
        ),
        (
            {"model": "axis_model3", "inputs": [{"name": "a.xy", "frame": 1}]},
            [xy.read_bytes()],
            "is a 'axis-regressor' model; the analyses served are",
        ),
    ]
    for params_, frames_, words in refusals:
        answer, _ = d.client.request_frames("analyze", params_, frames_)
        assert answer["success"] is False and words in answer["msg"], (words, answer["msg"])
    assert d.client.request("status")["state"] == "idle" and d.proc.poll() is None


def test_the_daemon_serves_http_on_the_same_models_when_enabled(start_daemon, tmp_path):
    import httpx

    port = free_port()
    d = start_daemon({"http": {"enabled": True, "port": port}})
    status = d.client.request("status")
    assert status["http"] == f"http://127.0.0.1:{port}"
    disc = _disc(1)
    np.save(tmp_path / "disc.npy", disc)
    params = {"conv_angle_mrad": 20.0}
    with (tmp_path / "disc.npy").open("rb") as fh:
        reply = httpx.post(
            f"{status['http']}/v1/analyze/pacbed_srtio3",
            files=[("files", ("disc.npy", fh))],
            data={"params": json.dumps(params)},
            timeout=60,
        )
    assert reply.status_code == 200, reply.text
    bare = {"name": "disc.npy", "frame": 1, "dtype": "<u2", "shape": list(disc.shape)}
    answer, _ = d.client.request_frames(
        "analyze",
        {"model": "pacbed_srtio3", "inputs": [bare], "params": params},
        [disc.astype("<u2").tobytes()],
    )
    assert answer["success"], answer["msg"]
    assert _strip_source(reply.json(), "disc.npy") == _strip_source(answer, "disc.npy")
    health = httpx.get(f"{status['http']}/v1/health").json()
    assert health["models_loaded"] == ["pacbed_srtio3"]  # one model, loaded once for both
    assert d.client.request("shutdown")["success"]
    assert d.proc.wait(timeout=30) == 0


def test_the_python_client_over_zmq_analyses_and_drives_a_scan(start_daemon, tmp_path):
    from flakescan.client import Client, ClientError, PacbedResult

    d = start_daemon()
    client = Client(control=d.control, events=d.events)
    disc = _disc(2)
    np.save(tmp_path / "disc.npy", disc)
    (r,) = client.analyze(disc, "pacbed_srtio3", conv_angle_mrad=20.0, picture=True).results
    local = AnalysisService().analyze(
        "pacbed",
        [tmp_path / "disc.npy"],
        AnalysisParams(conv_angle_mrad=20.0),
        model="pacbed_srtio3",
    )["results"][0]
    assert isinstance(r, PacbedResult) and r.thickness_nm == local["thickness_nm"]
    assert r.picture_png[:4] == b"\x89PNG"
    with pytest.raises(ClientError, match="no model named 'nope'"):
        client.analyze(disc, "nope")
    # a microscope image as a bare (h, w, 3) frame: the tile pipeline, as locally
    tile = simulated_tile().astype(np.float32)
    np.save(tmp_path / "tile.npy", tile)
    (f,) = client.analyze(tile, "flake_classifier_cnn4", pixel_size_um=0.57).results
    flake_local = AnalysisService().analyze(
        "flake", [tmp_path / "tile.npy"], AnalysisParams(pixel_size_um=0.57)
    )["results"][0]
    assert [h["x_um"] for h in f.hits] == [h["x_um"] for h in flake_local["hits"]]
    assert [h["scores"] for h in f.hits] == [h["scores"] for h in flake_local["hits"]]
    # structure-factor phases from a SHELX file sent as it is
    write_reflections(tmp_path / "refl.hkl")
    (ph,) = client.analyze(tmp_path / "refl.hkl", "phase_unet").results
    phase_local = AnalysisService().analyze("phase", [tmp_path / "refl.hkl"])["results"][0]
    assert ph.phases == phase_local["phases"] and ph.density == phase_local["density"]
    assert client.status()["state"] == "idle"
    events = client.events(topics=("scan.",), timeout_s=60)
    started = client.start_scan(region_um=[1000.0, 1000.0, 1500.0, 1400.0], chip_id="client")
    for event in events:
        if event["topic"] in ("scan.finished", "scan.failed"):
            break
    assert event["topic"] == "scan.finished" and event["data"]["scan_id"] == started["scan_id"]
    rows = client.flakes(scan_id=started["scan_id"])
    assert all(row["scan_id"] == started["scan_id"] for row in rows)
    assert started["scan_id"] in {s["id"] for s in client.scans()}
    with pytest.raises(ClientError, match="no flake with id 99999"):
        client.goto_flake(99999)
