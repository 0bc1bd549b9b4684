"""After a scan: the overview map, the full-resolution OME-TIFF, shape queries, notes and
flags, and the export archive. One real scan (simulated microscope, real model, SQLite)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from flakescan.daemon.cli import main
from flakescan.daemon.overview import preview_path, render_overview, write_ome_tiff
from flakescan.daemon.scan import ScanRequest
from flakescan.db.engine import open_database, sqlite_url
from flakescan.db.queries import FlakeQuery, find_flakes
from flakescan.inference.annotate import CLASS_COLOURS
from tests.sim_helpers import scan_runner, sim_microscope

# 1.6 x 1.2 mm of the default chip: 9 tiles with overlaps, about 18 hits.
REQUEST = ScanRequest(
    region_um=(1000.0, 1000.0, 2600.0, 2200.0),
    overlap_pct=10.0,
    chip_id="chip-W",
    keep_tiles=True,
    overview_um_per_px=4.0,
)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """(db path, images root, scan id, outcome) of one finished scan."""
    root = tmp_path_factory.mktemp("workflow")
    mic = sim_microscope()
    engine = open_database(sqlite_url(root / "flakescan.db"))
    runner = scan_runner(mic, engine, root / "thumbnails")
    plan = runner.plan(REQUEST)
    scan_id = runner.open_scan(REQUEST, plan, {"overview_um_per_px": 4.0})
    outcome = runner.run(scan_id, REQUEST, plan)
    mic.close()
    engine.dispose()
    assert outcome.status == "completed", outcome.reason
    return root / "flakescan.db", root / "thumbnails", scan_id, outcome


def _tiles_and_origin(db: Path, scan_id: int) -> tuple[list, tuple[float, float]]:
    """The tiles (index, x, y) and the map's top-left corner in stage um, worked out here
    from the rows: the region, grown where a tile's field reaches beyond it."""
    with open_database(sqlite_url(db), create=False).connect() as c:
        rows = c.exec_driver_sql(
            "SELECT tile_index, x_um, y_um FROM tiles WHERE scan_id = ?", (scan_id,)
        ).fetchall()
        scan = c.exec_driver_sql(
            "SELECT region_x0_um, region_y0_um, fov_width_um, fov_height_um FROM scans"
        ).one()
    x0 = min(scan[0], min(r[1] for r in rows) - scan[2] / 2)
    y0 = min(scan[1], min(r[2] for r in rows) - scan[3] / 2)
    return rows, (x0, y0)


def _flakes(db: Path, **filters) -> list[dict]:
    engine = open_database(sqlite_url(db), create=False)
    try:
        return find_flakes(engine, FlakeQuery(**filters))
    finally:
        engine.dispose()


def test_every_scan_leaves_an_overview_with_each_tile_where_the_stage_was(scanned):
    db, images, scan_id, outcome = scanned
    folder = images / f"scan-{scan_id}"
    assert outcome.overview == str(folder / "overview.png")
    engine = open_database(sqlite_url(db), create=False)
    again = render_overview(engine, scan_id, folder, folder / "again.png")
    engine.dispose()
    assert again.tiles == 9 and again.tiles_missing == 0 and again.um_per_px == 4.0
    assert (folder / "again.png").read_bytes() == (folder / "overview.png").read_bytes()
    overview = np.asarray(Image.open(folder / "overview.png").convert("RGB"))
    assert overview.shape[:2] == (again.size_px[1], again.size_px[0])
    assert len(list((folder / "previews").glob("*.png"))) == 9
    # Each tile sits where the stage was: round every flake well inside one tile's cell,
    # the bare map shows that tile's preview pixel for pixel.
    engine = open_database(sqlite_url(db), create=False)
    render_overview(engine, scan_id, folder, folder / "bare.png", marks=False)
    engine.dispose()
    bare = np.asarray(Image.open(folder / "bare.png").convert("RGB")).astype(int)
    rows, (x0, y0) = _tiles_and_origin(db, scan_id)
    checked = 0
    for f in _flakes(db, scan_id=scan_id):
        inside = [r for r in rows if abs(f["x_um"] - r[1]) < 200 and abs(f["y_um"] - r[2]) < 150]
        if len(inside) != 1:
            continue
        index, tx, ty = inside[0]
        preview = np.asarray(Image.open(preview_path(folder, index)).convert("RGB")).astype(int)
        ph, pw = preview.shape[:2]
        pr, pc = int((f["y_um"] - ty) / 4 + ph / 2), int((f["x_um"] - tx) / 4 + pw / 2)
        patch = preview[pr - 8 : pr + 9, pc - 8 : pc + 9]
        # Search +-4 px round the stage position: found within a pixel (4 um), exactly.
        row, col = int((f["y_um"] - y0) / 4), int((f["x_um"] - x0) / 4)
        errors = {
            (dr, dc): np.abs(
                bare[row - 8 + dr : row + 9 + dr, col - 8 + dc : col + 9 + dc] - patch
            ).max()
            for dr in range(-4, 5)
            for dc in range(-4, 5)
        }
        (dr, dc), err = min(errors.items(), key=lambda kv: kv[1])
        assert abs(dr) <= 1 and abs(dc) <= 1 and err == 0, (f["id"], dr, dc, err)
        # and it is the flake's own patch: 3 px off, the flake's pixels differ.
        assert min(e for (r, c), e in errors.items() if max(abs(r), abs(c)) >= 3) >= 4
        checked += 1
    assert checked >= 4


def test_hits_are_outlined_in_their_class_colour(scanned):
    db, images, scan_id, _ = scanned
    overview = np.asarray(Image.open(images / f"scan-{scan_id}" / "overview.png").convert("RGB"))
    flakes = _flakes(db, scan_id=scan_id)
    _, (x0, y0) = _tiles_and_origin(db, scan_id)
    assert flakes
    for f in flakes:
        outline = json.loads(f["outline_json"])
        assert len(outline) >= 3
        colour = np.array(CLASS_COLOURS[f["flake_class"]])
        # Some pixel within a pixel of the outline's vertices carries the class colour.
        near = []
        for x, y in outline:
            col, row = round((x - x0) / 4), round((y - y0) / 4)
            patch = overview[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3].reshape(-1, 3)
            near.append(np.abs(patch.astype(int) - colour).sum(axis=1).min())
        assert min(near) == 0, f"flake {f['id']} not outlined in class {f['flake_class']}"


def test_full_resolution_ome_tiff_holds_the_camera_pixels_and_the_pixel_size(scanned, tmp_path):
    db, images, scan_id, _ = scanned
    folder = images / f"scan-{scan_id}"
    engine = open_database(sqlite_url(db), create=False)
    info = write_ome_tiff(engine, scan_id, folder, tmp_path / "mosaic.ome.tif")
    engine.dispose()
    with tifffile.TiffFile(tmp_path / "mosaic.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert len(series.levels) == info["levels"] >= 2
        mosaic = series.levels[0].asarray()
        ome = tif.ome_metadata
    assert mosaic.shape[:2] == tuple(info["shape"])
    assert 'PhysicalSizeX="0.57"' in ome
    # The camera's pixels, untouched, where the stage was: tile 0's centre patch is found
    # in the mosaic within a pixel (0.57 um) of the stage position, value for value.
    rows, (x0, y0) = _tiles_and_origin(db, scan_id)
    index, tx, ty = rows[0]
    tile = tifffile.imread(folder / "tiles" / f"tile{index:04d}.tif")
    h, w = tile.shape[:2]
    patch = tile[h // 2 - 6 : h // 2 + 7, w // 2 - 6 : w // 2 + 7]
    row, col = int((ty - y0) / 0.57), int((tx - x0) / 0.57)
    hits = [
        (dr, dc)
        for dr in range(-2, 3)
        for dc in range(-2, 3)
        if np.array_equal(mosaic[row - 6 + dr : row + 7 + dr, col - 6 + dc : col + 7 + dc], patch)
    ]
    assert len(hits) == 1 and max(map(abs, hits[0])) <= 1, hits


def test_overview_command_regenerates_the_map_and_says_what_is_missing(scanned, tmp_path, capsys):
    db, images, scan_id, _ = scanned
    out = tmp_path / "again.png"
    gone = preview_path(images / f"scan-{scan_id}", 5)
    kept = gone.read_bytes()
    gone.unlink()
    try:
        assert main(["overview", str(scan_id), "--db", str(db), "--out", str(out)]) == 0
    finally:
        gone.write_bytes(kept)
    doc = json.loads(capsys.readouterr().out)
    assert doc["tiles"] == 8 and doc["tiles_missing"] == 1 and out.exists()
    assert main(["overview", "99", "--db", str(db)]) == 2
    assert "no scan with id 99" in capsys.readouterr().err


def test_shape_queries_select_what_device_makers_ask_for(scanned):
    db, _, scan_id, _ = scanned
    every = _flakes(db, scan_id=scan_id)
    assert all(f["aspect_ratio"] >= 1 and f["rect_width_um"] > 0 for f in every)
    assert all(f["rect_width_um"] <= f["inscribed_diameter_um"] + 1e-6 for f in every)
    wide = _flakes(db, scan_id=scan_id, min_rect_width_um=8.0, order_by="rect_width")
    assert wide == sorted(
        [f for f in every if f["rect_width_um"] >= 8.0], key=lambda f: -f["rect_width_um"]
    )
    long = _flakes(db, scan_id=scan_id, min_aspect_ratio=2.0)
    assert {f["id"] for f in long} == {f["id"] for f in every if f["aspect_ratio"] >= 2.0}
    # An axis window that wraps round 0 = 30 deg.
    window = _flakes(db, scan_id=scan_id, axis_min_deg=25.0, axis_max_deg=5.0)
    expect = {
        f["id"]
        for f in every
        if f["axis_angle_deg"] is not None
        and (f["axis_angle_deg"] >= 25 or f["axis_angle_deg"] <= 5)
    }
    assert {f["id"] for f in window} == expect and expect


def test_notes_and_flags_are_kept_and_queried(scanned, capsys, tmp_path):
    db, _, scan_id, _ = scanned
    fid = _flakes(db, scan_id=scan_id)[0]["id"]
    assert (
        main(["flake", str(fid), "--db", str(db), "--note", "nice monolayer", "--favourite"]) == 0
    )
    assert main(["flake", str(fid), "--db", str(db), "--note", "taken for D12", "--append"]) == 0
    assert main(["flake", str(fid), "--db", str(db), "--used"]) == 0
    capsys.readouterr()
    assert main(["flake", str(fid), "--db", str(db)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["notes"] == "nice monolayer\ntaken for D12"
    assert row["favourite"] is True and row["used"] is True and row["annotated_at"]
    assert [f["id"] for f in _flakes(db, favourite=True)] == [fid]
    assert fid not in {f["id"] for f in _flakes(db, used=False)}
    assert [f["id"] for f in _flakes(db, notes_contain="D12")] == [fid]
    assert main(["flake", "99999", "--db", str(db), "--used"]) == 2
    assert "no flake with id 99999" in capsys.readouterr().err
    # Undo, so the other tests see the scan as it was.
    assert (
        main(["flake", str(fid), "--db", str(db), "--unused", "--no-favourite", "--note", ""]) == 0
    )


def test_export_archive_holds_rows_thumbnails_overview_and_a_manifest(scanned, tmp_path, capsys):
    db, _, scan_id, _ = scanned
    out = tmp_path / "out" / "class1.zip"
    assert (
        main(["export", "--db", str(db), "--scan", str(scan_id), "--class", "1", "--out", str(out)])
        == 0
    )
    expect = _flakes(db, scan_id=scan_id, flake_class=1)
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        rows = list(csv.DictReader(io.StringIO(zf.read("flakes.csv").decode())))
        assert [int(r["id"]) for r in rows] == [f["id"] for f in expect]
        assert json.loads(zf.read("flakes.json")) == expect
        for f in expect:
            assert f"thumbnails/flake-{f['id']}.png" in names
        assert f"overview/scan-{scan_id}.png" in names
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
    assert manifest["flakes"] == len(expect) and manifest["missing"] == []
    assert manifest["query"]["flake_class"] == 1
    assert list(out.parent.iterdir()) == [out]  # no temporary file left beside it
    # Bad input: no match, or not a .zip: exit 2, nothing written.
    assert (
        main(["export", "--db", str(db), "--min-area", "1e9", "--out", str(tmp_path / "x.zip")])
        == 2
    )
    assert not (tmp_path / "x.zip").exists()
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "x.tar")]) == 2
    assert "x.tar" in capsys.readouterr().err and not (tmp_path / "x.tar").exists()


def test_calibrate_from_catalogue_flakes_and_scan_with_the_preset(scanned, tmp_path, capsys):
    db, _, scan_id, _ = scanned
    ones = _flakes(db, scan_id=scan_id, flake_class=1)[:3]
    twos = _flakes(db, scan_id=scan_id, flake_class=2)[:2]
    state = tmp_path / "state"
    specs = [f"{f['id']}:1" for f in ones] + [f"{f['id']}:2" for f in twos]
    args = ["calibrate", "--name", "gr-285", "--db", str(db), "--state-dir", str(state)]
    assert main([*args, *(w for s in specs for w in ("--flake", s))]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert set(fitted["layers"]) == {"1", "2"} and (state / "presets" / "gr-285.json").is_file()
    mono = np.median([f["contrast_r"] for f in ones])
    assert fitted["layers"]["1"]["mean"][0] == pytest.approx(mono, abs=0.01)
    # A scan with it: the window of the preset replaces the configured one.
    region = ["--region", "2000", "2000", "2600", "2400"]
    scan = ["scan", "--local", "--state-dir", str(state), "--no-progress", *region]
    assert main([*scan, "--preset", "gr-285"]) == 0
    assert main([*scan, "--preset", "nope"]) == 2
    assert "no preset 'nope'" in capsys.readouterr().err
    assert main([*args, "--flake", "12"]) == 2
    assert "expected ID:LAYERS" in capsys.readouterr().err
