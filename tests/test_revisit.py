"""Revisits: back at a flake at 50x through 20x, re-centred by registration, the image kept
with the flake; in-process against the simulator's truth, and through the daemon."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flakescan.daemon.cli import main
from flakescan.daemon.client import EventSubscriber
from flakescan.daemon.revisit import revisit_flake
from tests.sim_helpers import sim_microscope


def small_flakes(mic, n: int) -> list[dict]:
    """Thin flakes of the simulated chip smaller than the 50x field: their edges are in view."""
    found = []
    for k, o in enumerate(mic.world.chip.objects):
        if o.kind == "flake" and 150 < o.polygon.area < 900 and 500 < o.polygon.centroid.x < 4500:
            c = o.polygon.centroid
            found.append({"id": k + 1, "scan_id": 1, "x_um": c.x, "y_um": c.y})
        if len(found) == n:
            return found
    raise AssertionError("the default chip has too few small flakes")


def test_a_revisit_recentres_on_the_flake_better_than_the_calibration(tmp_path):
    mic = sim_microscope()
    world = mic.world
    snap = mic.snap
    seen: dict[str, tuple[float, float]] = {}

    def spy(index: int = 0):  # where the objective truly looked when the image was taken
        frame = snap(index)
        seen[mic.objective.name] = world.imaged_point(*mic.position())[:2]
        return frame

    mic.snap = spy
    errors, calibration = [], []
    try:
        for flake in small_flakes(mic, 4):
            result = revisit_flake(mic, flake, "50x", tmp_path)
            x, y = seen["50x"]
            errors.append(np.hypot(x - flake["x_um"], y - flake["y_um"]))
            # Where the calibrated offsets alone would have put the 50x view:
            mic.look_at(flake["x_um"], flake["y_um"])
            mic.set_objective("50x")
            mic.look_at(flake["x_um"], flake["y_um"])
            cx, cy, _ = world.imaged_point(*mic.position())
            calibration.append(np.hypot(cx - flake["x_um"], cy - flake["y_um"]))
            mic.set_objective("5x")
            assert result.registered and result.focus == "autofocus"
            assert Path(result.image_path).is_file()
            image = Image.open(result.image_path)
            assert image.size == (1024, 768)
            sidecar = json.loads(Path(result.image_path).with_suffix(".json").read_text())
            assert sidecar["objective"] == "50x" and len(sidecar["steps"]) == 2
        assert mic.objective.name == "5x"  # the scanning objective is back
    finally:
        mic.close()
    print(f"50x centre off the flake, um: registered {errors}; calibration alone {calibration}")
    assert max(errors) < 1.5 and np.median(errors) < 0.5  # the 50x field is 58 x 44 um
    assert min(calibration) > 3.0  # the calibration is off by more: registration did the work


def test_the_daemon_revisits_the_top_hits_and_keeps_their_images(start_daemon, tmp_path, capsys):
    d = start_daemon({"scan": {"region_um": [1000.0, 1000.0, 2100.0, 1800.0]}})
    with EventSubscriber(d.events, ("scan.",)) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        while (ev := sub.next(timeout_s=60)) is not None and ev["topic"] != "scan.finished":
            pass
    assert ev is not None and ev["data"]["status"] == "completed"
    ends = ["--control", d.control, "--events", d.events]
    assert main(["revisit", str(scan_id), "--top", "2", "--objective", "50x", *ends]) == 0
    done = json.loads(capsys.readouterr().out)
    assert len(done["flakes"]) == 2 and not done["stopped"]
    con = sqlite3.connect(d.db_path)
    rows = con.execute("SELECT flake_id, objective, path, focus FROM flake_images").fetchall()
    assert len(rows) == 2 and all(r[1] == "50x" and Path(r[2]).is_file() for r in rows)
    assert d.client.request("status")["state"] == "idle"
    # One more through goto, and a refusal that names the objectives.
    fid = rows[0][0]
    assert main(["goto", str(fid), "--objective", "20x", *ends]) == 0
    capsys.readouterr()
    assert main(["goto", str(fid), "--objective", "100x", *ends]) == 2
    assert "'100x' is not configured" in capsys.readouterr().out
    # The export carries the images.
    out = tmp_path / "f.zip"
    assert main(["export", "--db", str(d.db_path), "--flake", str(fid), "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        names = [n for n in zf.namelist() if n.startswith(f"highmag/flake-{fid}/")]
    assert len([n for n in names if n.endswith(".png")]) == 2  # 50x and 20x
    assert pytest.approx(len(names)) == 4  # each with its JSON sidecar
    # A shutdown mid-revisit finishes the flake in hand, keeps it, and exits 0.
    with EventSubscriber(d.events, ("revisit.",)) as sub:
        params = {"scan_id": scan_id, "top": 5, "objective": "50x"}
        assert d.client.request("revisit", params)["success"]
        first = sub.next(timeout_s=60)
    assert first is not None and first["topic"] == "revisit.flake"
    assert d.client.request("shutdown")["success"]
    assert d.proc.wait(timeout=120) == 0, d.log()
    con = sqlite3.connect(d.db_path)
    paths = [Path(p) for (p,) in con.execute("SELECT path FROM flake_images")]
    assert 4 <= len(paths) < 3 + 5  # stopped early, after the flake it was on
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
