"""The analysis service over HTTP: a real uvicorn server on loopback, real uploads.

Answers must equal what `AnalysisService.analyze` (the code `flakescan analyze` runs) gives
for the same file; bad input must be a 4xx naming the field, never a 500.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from flakescan.daemon.config import HttpConfig, ServiceConfig
from flakescan.daemon.http_api import create_app
from flakescan.inference.analysis import AnalysisParams, AnalysisService
from flakescan.simulators.tone import srgb_encode
from flakescan.simulators.xrd_dataset import simulate_xrd_set, write_xy
from flakescan.simulators.xrd_phases import KNOWN_PHASES

from .analysis_inputs import pacbed_disc, simulated_tile, write_reflections


@pytest.fixture(scope="module")
def server():
    """(base URL, the service behind it): uvicorn on a free loopback port, in a thread."""
    cfg = ServiceConfig(http=HttpConfig(port=0, max_upload_mb=4.0, workers=2))
    service = AnalysisService(cfg.models)
    config = uvicorn.Config(create_app(cfg, service), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", service
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One measured-like file per analysis: an hBN powder pattern, a PACBED disc, reflections."""
    folder = tmp_path_factory.mktemp("uploads")
    s = simulate_xrd_set(1, seed=77, n_anomaly=0)
    hbn_class = [p.name for p in KNOWN_PHASES].index("hBN")
    hbn = int(np.flatnonzero(s.labels == hbn_class)[0])
    write_xy(folder / "hbn.xy", s.counts[hbn], "simulated hBN")
    np.save(folder / "disc.npy", pacbed_disc().astype(np.float32))
    write_reflections(folder / "refl.hkl")
    tile = simulated_tile()
    codes = srgb_encode(np.clip(tile / tile.max(), 0, 1)) * 255  # as a camera program saves it
    Image.fromarray(codes.round().astype(np.uint8)).save(folder / "tile.png")
    return {
        "xrd": folder / "hbn.xy",
        "pacbed": folder / "disc.npy",
        "phase": folder / "refl.hkl",
        "flake": folder / "tile.png",
    }


def _post(url: str, model: str, path: Path, params: dict | None = None, **form):
    with path.open("rb") as fh:
        return httpx.post(
            f"{url}/v1/analyze/{model}",
            files=[("files", (path.name, fh))],
            data={"params": json.dumps(params or {}), **form},
            timeout=60,
        )


def test_health_models_and_openapi(server):
    url, _ = server
    health = httpx.get(f"{url}/v1/health").json()
    assert health["status"] == "ok" and health["workers"] == 2
    models = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()}
    assert models["xrd_cnn1d"]["kind"] == "xrd" and models["pacbed_srtio3"]["kind"] == "pacbed"
    assert models["phase_unet"]["kind"] == "phase"
    assert models["flake_classifier_cnn4"]["kind"] == "flake"  # the tile pipeline
    assert models["axis_model3"]["kind"] is None  # part of the flake analysis, not alone
    assert models["pacbed_srtio3"]["card"]["training"]["pacbed"]["system"]["name"] == "SrTiO3"
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/analyze/{model}" in schema["paths"] and "/v1/models" in schema["paths"]
    params = schema["components"]["schemas"]["AnalysisParams"]["properties"]
    assert {"conv_angle_mrad", "energy_kev", "zone_axis", "system", "pixel_size_um"} <= set(params)


@pytest.mark.parametrize(
    ("kind", "model", "params"),
    [
        ("xrd", "xrd_cnn1d", {}),
        ("pacbed", "pacbed_srtio3", {"conv_angle_mrad": 20.0, "energy_kev": 300}),
        ("phase", "phase_unet", {}),
        ("flake", "flake_classifier_cnn4", {"pixel_size_um": 0.57}),
    ],
)
def test_http_answers_equal_the_local_analysis(server, files, kind, model, params):
    url, service = server
    reply = _post(url, model, files[kind], params)
    assert reply.status_code == 200, reply.text
    remote = reply.json()
    local = service.analyze(kind, [files[kind]], AnalysisParams(**params), model=model)
    assert remote["kind"] == kind and remote["model"]["name"] == model
    (r,), (loc,) = remote["results"], local["results"]
    for key in [k for k, v in loc.items() if v == str(files[kind])]:  # the file's path
        assert r.pop(key) == files[kind].name
        loc.pop(key)
    r.pop("timings_ms", None), loc.pop("timings_ms", None)  # wall clock, not a result
    assert r == json.loads(json.dumps(loc))  # identical numbers, JSON round trip
    assert model in httpx.get(f"{url}/v1/health").json()["models_loaded"]


def test_the_validation_picture_comes_back_as_png(server, files):
    url, _ = server
    reply = _post(url, "xrd_cnn1d", files["xrd"], picture="true")
    assert reply.status_code == 200, reply.text
    (r,) = reply.json()["results"]
    png = base64.b64decode(r["picture_png_base64"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000 and "picture" not in r


def test_bad_requests_are_4xx_naming_the_field(server, files, tmp_path):
    url, _ = server
    cases = []
    reply = _post(url, "no_such_model", files["xrd"])
    cases.append((reply, 404, "no model named 'no_such_model'"))
    reply = _post(url, "xrd_cnn1d.onnx", files["xrd"])  # a path on the server: refused
    cases.append((reply, 422, "a registry name is needed"))
    reply = _post(url, "-x", files["xrd"])
    cases.append((reply, 422, "a registry name is needed"))
    reply = _post(url, "..%2Fmodels%2Fxrd_cnn1d", files["xrd"])  # no route has a slash
    cases.append((reply, 404, "Not Found"))
    reply = _post(url, "pacbed_srtio3", files["pacbed"], {"conv_angle_mrad": -1})
    cases.append((reply, 422, "conv_angle_mrad"))
    reply = _post(url, "pacbed_srtio3", files["pacbed"], {"colour": "red"})
    cases.append((reply, 422, "colour"))
    reply = _post(url, "pacbed_srtio3", files["pacbed"], {"conv_angle_mrad": 40})
    cases.append((reply, 422, "conv_angle_mrad = 40.0 is outside the model's range"))
    reply = _post(url, "pacbed_srtio3", files["pacbed"], {"conv_angle_mrad": 20, "energy_kev": 200})
    cases.append((reply, 422, "energy_kev = 200"))
    raw = tmp_path / "frame.raw"
    raw.write_bytes(bytes(1000))
    reply = _post(url, "pacbed_srtio3", raw, {"dtype": "<u2", "shape": [20, 30]})
    cases.append((reply, 422, "frame.raw"))
    bad = tmp_path / "broken.xy"
    bad.write_text("1 2\nnot numbers here\n")
    reply = _post(url, "xrd_cnn1d", bad)
    cases.append((reply, 422, "broken.xy"))
    reply = _post(url, "axis_model3", files["xrd"])
    cases.append((reply, 422, "is a 'axis-regressor' model; the analyses served are"))
    reply = _post(url, "flake_classifier_cnn4", files["flake"])
    cases.append((reply, 422, "pixel_size_um is needed"))
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((1200, 1200), np.float32))  # 5.8 MB > max_upload_mb = 4
    reply = _post(url, "pacbed_srtio3", big)
    cases.append((reply, 413, "max_upload_mb = 4"))
    for reply, status, words in cases:
        assert reply.status_code == status, (words, reply.text)
        assert words in reply.text, reply.text
        assert str(tmp_path) not in reply.text  # no server paths in the answer


def test_flakescan_serve_runs_the_service_and_refuses_a_network_host(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from flakescan.daemon.cli import main as cli

    assert cli(["serve", "--host", "0.0.0.0"]) == 2
    assert "host = '0.0.0.0' is not a loopback address" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flakescan.daemon", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "flakescan serve did not answer in 60 s"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["models_loaded"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_analyze_with_server_gives_the_local_answer(server, files, tmp_path, capsys):
    from flakescan.daemon.cli import main as cli

    url, _ = server
    runs = [
        ["xrd", str(files["xrd"])],
        ["pacbed", str(files["pacbed"]), "--system", "SrTiO3", "--conv-angle-mrad", "20"],
        ["phase", str(files["phase"])],
    ]
    for argv in runs:
        assert cli(["analyze", *argv]) == 0
        local = json.loads(capsys.readouterr().out)
        assert cli(["analyze", *argv, "--server", url]) == 0
        remote = json.loads(capsys.readouterr().out)
        assert remote == local, argv
    plots = tmp_path / "plots"
    assert (
        cli(["analyze", "xrd", str(files["xrd"]), "--server", url, "--plot-dir", str(plots)]) == 0
    )
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert Path(r["picture"]) == plots / "hbn.xrd.png" and (plots / "hbn.xrd.png").stat().st_size
    assert (
        cli(["analyze", "pacbed", str(files["pacbed"]), "--server", url, "--energy-kev", "80"]) == 2
    )
    assert "energy_kev = 80" in capsys.readouterr().err
    assert cli(["analyze", "xrd", str(files["xrd"]), "--server", "http://127.0.0.1:9"]) == 1
    assert "--server http://127.0.0.1:9" in capsys.readouterr().err


def test_the_browser_form_in_headless_chromium(server, files, tmp_path):
    """The form from GET /: choose a model, upload, read the answer on the page."""
    from .browser import analyse_in_form, browser_page, chromium_missing

    missing = chromium_missing()
    if missing and os.environ.get("FLAKESCAN_REQUIRE_BROWSER"):  # CI: must run
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)
    url, service = server
    local = service.analyze("xrd", [files["xrd"]], model="xrd_cnn1d")["results"][0]
    with browser_page() as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        summary, error = analyse_in_form(page, url, "xrd_cnn1d", [files["xrd"]])
        assert error == "" and summary == f"hbn.xy: {local['phase']}"
        assert page.evaluate("document.querySelector('#pictures img').naturalWidth") > 500
        shown = json.loads(page.text_content("#result"))
        assert shown["results"][0]["probabilities"] == local["probabilities"]
        page.screenshot(path=str(tmp_path / "form.png"))
        assert (tmp_path / "form.png").stat().st_size > 20_000

        fields = {"conv_angle_mrad": 40}
        summary, error = analyse_in_form(page, url, "pacbed_srtio3", [files["pacbed"]], fields)
        assert summary == "" and "HTTP 422" in error and "conv_angle_mrad = 40.0" in error
        assert page.is_visible("#pacbed-fields") and "SrTiO3" in page.text_content("#model-info")
        fields = {"conv_angle_mrad": 20, "energy_kev": 300, "zone_axis": "[001]"}
        summary, error = analyse_in_form(page, url, "pacbed_srtio3", [files["pacbed"]], fields)
        assert error == "" and summary.startswith("disc.npy: thickness ")
        fields = {"pixel_size_um": 0.57}
        summary, error = analyse_in_form(
            page, url, "flake_classifier_cnn4", [files["flake"]], fields
        )
        local = service.analyze("flake", [files["flake"]], AnalysisParams(pixel_size_um=0.57))
        hits = local["results"][0]["hits"]
        assert error == "" and summary.startswith(f"tile.png: {len(hits)} flake(s)")
    outside = [u for u in requested if not u.startswith((url, "data:"))]
    assert requested and outside == []  # the form needs nothing from outside the server


def test_the_python_client_over_http(server, files):
    from flakescan.client import (
        Client,
        ClientError,
        FlakeResult,
        PacbedResult,
        PhaseResult,
        XrdResult,
    )

    url, service = server
    client = Client(url)
    assert "pacbed_srtio3" in {m["name"] for m in client.models()}
    answer = client.analyze(files["xrd"], "xrd_cnn1d", picture=True)
    (r,) = answer.results
    local = service.analyze("xrd", [files["xrd"]], model="xrd_cnn1d")["results"][0]
    assert isinstance(r, XrdResult) and r.phase == local["phase"] and r.source == "hbn.xy"
    assert r.probabilities == local["probabilities"] and r.picture_png[:4] == b"\x89PNG"
    image = np.load(files["pacbed"])
    answer = client.analyze(image, "pacbed_srtio3", conv_angle_mrad=20.0)
    (p,) = answer.results
    expected = service.analyze(
        "pacbed", [files["pacbed"]], AnalysisParams(conv_angle_mrad=20.0), model="pacbed_srtio3"
    )["results"][0]
    assert isinstance(p, PacbedResult) and p.thickness_nm == expected["thickness_nm"]
    assert p.mistilt_mrad == expected["mistilt_mrad"] and p.picture_png is None
    with pytest.raises(ClientError, match=r"conv_angle_mrad = 40\.0 is outside"):
        client.analyze(image, "pacbed_srtio3", conv_angle_mrad=40.0)
    (f,) = client.analyze(files["flake"], "flake_classifier_cnn4", pixel_size_um=0.57).results
    flake_local = service.analyze("flake", [files["flake"]], AnalysisParams(pixel_size_um=0.57))
    (ph,) = client.analyze(files["phase"], "phase_unet").results
    phase_local = service.analyze("phase", [files["phase"]], model="phase_unet")["results"][0]
    assert isinstance(ph, PhaseResult) and ph.phases == phase_local["phases"]
    assert isinstance(f, FlakeResult)
    assert [h["x_um"] for h in f.hits] == [h["x_um"] for h in flake_local["results"][0]["hits"]]
    with pytest.raises(ValueError, match=r"inputs\[0\]: an image array must be 2-D"):
        client.analyze(np.zeros(5), "pacbed_srtio3")
    with pytest.raises(ClientError, match="HTTP 404"):
        client.analyze(files["xrd"], "no_such_model")


def test_damaged_files_of_every_kind_are_422_naming_the_upload(server, tmp_path):
    url, _ = server
    junk = np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    cases = [
        ("pacbed_srtio3", "frame.npy", {"conv_angle_mrad": 20}),
        ("pacbed_srtio3", "frame.tif", {"conv_angle_mrad": 20}),
        ("pacbed_srtio3", "frame.dm4", {"conv_angle_mrad": 20}),
        ("xrd_cnn1d", "powder.xy", {}),
        ("phase_unet", "refl.hkl", {}),
        ("flake_classifier_cnn4", "tile.png", {"pixel_size_um": 0.5}),
        ("flake_classifier_cnn4", "tile.npy", {"pixel_size_um": 0.5}),
    ]
    for model, name, params in cases:
        path = tmp_path / name
        path.write_bytes(junk)
        reply = _post(url, model, path, params)
        assert reply.status_code == 422, (name, reply.status_code, reply.text)
        assert name in reply.text and str(tmp_path) not in reply.text, reply.text


def test_concurrent_requests_share_the_loaded_models_and_agree(server, files):
    """16 requests at once (PACBED and flake finding, whose pipeline keeps state per
    image) give the answers one request at a time gives."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = server
    jobs = [("pacbed_srtio3", files["pacbed"], {"conv_angle_mrad": 20.0})] * 8
    jobs += [("flake_classifier_cnn4", files["flake"], {"pixel_size_um": 0.57})] * 8

    def answer(job) -> list:
        reply = _post(url, *job)
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        for r in results:
            r.pop("timings_ms", None)
        return results

    alone = {job[0]: answer(job) for job in jobs[::8]}
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(answer, jobs))
    assert all(got == alone[job[0]] for job, got in zip(jobs, together, strict=True))
