"""PACBED library generator, loader, symmetry and augmentation on a tiny SrTiO3 library.

The library is 2x2 cells at 72 gpts, a 4x4 scan, 10 cells thick, four tilts (the 4mm wedge
on a 2 mrad grid up to 2 mrad, plus one general tilt): a few seconds of abTEM on one core.
Tolerances are measured: the stacks are float16 with each pattern scaled to max 1, so a
stored value is within 2.5e-4 of the simulated one (2.4e-4 measured).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("abtem")

from flakescan.inference.pacbed_preprocess import preprocess_pattern
from flakescan.simulators import pacbed
from flakescan.simulators.pacbed import LibrarySpec, simulate_library, simulate_series
from flakescan.simulators.pacbed_augment import (
    AugmentSpec,
    draw_training_pattern,
    pattern_at_tilt,
    poisson_noise,
    transform,
)
from flakescan.simulators.pacbed_library import PacbedLibrary
from flakescan.simulators.pacbed_symmetry import apply_op, group_ops, map_tilt, wedge_tilts
from flakescan.simulators.pacbed_systems import SYSTEMS, MaterialSystem, get_system

F16_TOL = 1e-3  # float16 storage (2.4e-4 measured) with margin
TILT = (2.0, 1.0)  # off every mirror line: breaks all of 4mm
SPEC = LibrarySpec(
    system=1,
    repeat=(2, 2),
    gpts=72,
    scan_gpts=4,  # symmetric like 8x8, a quarter of the cost; convergence is not tested here
    max_batch=16,
    tilts=((0.0, 0.0), (2.0, 0.0), (2.0, 2.0), TILT),
    tilt_step_mrad=2.0,
    max_thickness_nm=3.95,
)
ROT90, DIAGONAL = group_ops("4mm")[1], group_ops("4mm")[5]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> PacbedLibrary:
    root = tmp_path_factory.mktemp("pacbed")
    return PacbedLibrary(simulate_library(SPEC, root, progress=False))


def _direct(tilt) -> np.ndarray:
    s = simulate_series(SPEC, tilt)
    return s.patterns / s.patterns.reshape(len(s.patterns), -1).max(axis=1)[:, None, None]


def _all_thicknesses(lib: PacbedLibrary, tilt) -> np.ndarray:
    return np.stack([lib.pattern_by_index(i, tilt) for i in range(len(lib.thickness_a))])


def test_register_of_systems():
    assert SYSTEMS[0].material == "Rutile" and SYSTEMS[1].material == "Strontium titanate"
    assert get_system("srtio3").id == 1 and get_system("0").name == "TiO2-rutile"
    sto, rutile = get_system(1), get_system(0)
    assert (sto.energy_kev, sto.conv_angle_mrad, rutile.energy_kev, rutile.conv_angle_mrad) == (
        300,
        20,
        200,
        15,
    )
    assert sto.atoms().get_chemical_formula() == "O3SrTi"
    assert rutile.atoms().get_chemical_formula() == "O4Ti2"
    assert rutile.cell_lengths == pytest.approx((4.594, 4.594, 2.959))
    with pytest.raises(ValueError, match="gpts = 293"):
        MaterialSystem.model_validate({**sto.model_dump(), "gpts": 293})
    with pytest.raises(KeyError, match="known: 0"):
        get_system("graphite")


def test_wedge_grid():
    wedge = wedge_tilts(10, 1, "4mm")
    assert len(wedge) == 66 and all(0 <= my <= mx <= 10 for mx, my in wedge)
    # the 8 operations map the wedge onto the whole square grid, each point at least once
    covered = {map_tilt(op, t) for op in group_ops("4mm") for t in wedge}
    assert covered == {(float(x), float(y)) for x in range(-10, 11) for y in range(-10, 11)}


def test_library_files_and_index(tiny):
    lib = tiny
    assert lib.complete and len(lib) == 4 * 10
    assert lib.thickness_a == pytest.approx(3.905 * np.arange(1, 11))
    with open(lib.folder / "patterns.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["Path", "Thickness", "Mistilt", "Conv_Angle"]
    assert {"Azimuth", "Energy", "Material", "Direction", "Sampling"} <= set(rows[0])
    row = next(r for r in rows if r["Path"].endswith("tilt_mx+2.00_my+1.00.npy#7"))
    assert float(row["Mistilt"]) == pytest.approx(np.hypot(2, 1))
    assert float(row["Azimuth"]) == pytest.approx(np.degrees(np.arctan2(1, 2)))
    assert float(row["Thickness"]) == pytest.approx(8 * 3.905)
    assert (row["Energy"], row["Conv_Angle"], row["Direction"]) == ("300.0", "20.0", "[001]")
    assert np.array_equal(lib.load(row["Path"]), lib.pattern(8 * 3.905, *TILT))
    with open(lib.folder.parent / "Register.csv", newline="") as f:
        register = list(csv.DictReader(f))
    assert register[0]["Folder"] == lib.folder.name and register[0]["Status"] == "complete"
    assert register[0]["System"] == "1"
    meta = json.loads((lib.folder / "library.json").read_text())
    assert meta["timing"]["seconds_per_pattern_mean"] > 0
    assert meta["sampling_mrad"] == pytest.approx(float(row["Sampling"]))
    n = lib.stack(TILT).shape[-1]
    assert n % 2 == 1 and lib.stack(TILT).dtype == np.float16
    with pytest.raises(KeyError, match="nearest"):
        lib.pattern(5.0, 0, 0)


def test_thickness_series_changes_with_thickness(tiny):
    p = _all_thicknesses(tiny, (0, 0))
    steps = np.abs(np.diff(p, axis=0)).max(axis=(1, 2))
    assert steps.min() > 5 * F16_TOL  # one cell (3.9 Å) changes a pattern by >= 0.006
    assert np.abs(p[-1] - p[0]).max() > 0.05


def test_zero_tilt_keeps_4mm_and_a_tilt_breaks_it(tiny):
    zero, tilted = _all_thicknesses(tiny, (0, 0)), _all_thicknesses(tiny, TILT)
    for op in group_ops("4mm"):
        assert np.abs(apply_op(op, zero) - zero).max() < F16_TOL
    for op in group_ops("4mm")[1:]:
        assert np.abs(apply_op(op, tilted[-1]) - tilted[-1]).max() > 5 * F16_TOL


@pytest.mark.parametrize("op", [ROT90, DIAGONAL], ids=["rot90", "diagonal-mirror"])
def test_symmetry_maps_the_wedge_onto_a_direct_simulation(tiny, op):
    target = map_tilt(op, TILT)  # (-1, 2) and (1, 2)
    direct = _direct(target)
    mapped = _all_thicknesses(tiny, target)
    assert np.abs(mapped - direct).max() < F16_TOL
    unmapped = _all_thicknesses(tiny, TILT)
    assert np.abs(unmapped - direct).max() > 5 * F16_TOL


def test_resume_skips_written_tilts_and_refuses_another_spec(tiny, monkeypatch):
    root = tiny.folder.parent
    stack = tiny.folder / "tilts" / "tilt_mx+2.00_my+0.00.npy"
    before = {p.name: p.stat().st_mtime_ns for p in (tiny.folder / "tilts").glob("*.npy")}
    stack.unlink()
    calls = []
    real = pacbed.simulate_series
    monkeypatch.setattr(pacbed, "simulate_series", lambda *a: calls.append(a[1]) or real(*a))
    simulate_library(SPEC, root, progress=False)
    assert calls == [(2.0, 0.0)]
    after = {p.name: p.stat().st_mtime_ns for p in (tiny.folder / "tilts").glob("*.npy")}
    assert {k: v for k, v in after.items() if k != stack.name} == {
        k: v for k, v in before.items() if k != stack.name
    }
    assert not list((tiny.folder / "tilts").glob(".*tmp"))
    with pytest.raises(ValueError, match="another spec"):
        simulate_library(
            SPEC.model_copy(update={"max_thickness_nm": 2.0}),
            root,
            folder=tiny.folder.name,
            progress=False,
        )


def test_detector_beyond_the_grid_is_refused():
    with pytest.raises(ValueError, match="exceeds the grid"):
        simulate_series(SPEC.model_copy(update={"max_angle_factor": 5.0}), (0, 0))


def test_interpolation_and_transforms(tiny):
    i = 5
    a, b = tiny.pattern_by_index(i, (0, 0)), tiny.pattern_by_index(i, (2, 0))
    assert np.array_equal(pattern_at_tilt(tiny, i, (2, 0)), b)
    assert np.allclose(pattern_at_tilt(tiny, i, (1, 0)), (a + b) / 2)
    minus_b = apply_op(ROT90 @ ROT90, b)  # the pattern at (-2, 0)
    assert np.allclose(pattern_at_tilt(tiny, i, (-1.5, 0)), 0.25 * a + 0.75 * minus_b)
    assert np.array_equal(pattern_at_tilt(tiny, i, (0, 1.2), interpolate=False), apply_op(ROT90, b))
    with pytest.raises(KeyError):
        pattern_at_tilt(tiny, i, (3, 0))  # needs (4, 0), beyond the library
    # a 90 deg detector rotation is the symmetry operation, up to rounding
    assert np.allclose(transform(b, rotation_deg=90), apply_op(ROT90, b), atol=1e-5)
    assert np.allclose(transform(b), b)
    zoomed = transform(b, scale=1.2)
    assert preprocess_pattern(zoomed).radius_px == pytest.approx(
        1.2 * preprocess_pattern(b).radius_px, rel=0.03
    )
    counts = poisson_noise(b, 1e6, np.random.default_rng(0))
    assert counts.sum() == pytest.approx(1e6, rel=0.01)


def test_draw_training_pattern_is_reproducible(tiny):
    spec = AugmentSpec(max_tilt_mrad=2.0, dose=(1e5, 1e6))
    p1, l1 = draw_training_pattern(tiny, np.random.default_rng(3), spec)
    p2, l2 = draw_training_pattern(tiny, np.random.default_rng(3), spec)
    assert np.array_equal(p1, p2) and l1 == l2
    assert p1.shape == tiny.stack(TILT).shape[1:] and p1.max() == pytest.approx(1.0)
    assert 0 <= l1["mistilt"] <= 2 and l1["thickness"] in tiny.thickness_a
    assert 0.9 <= l1["scale"] <= 1.1 and l1["conv_angle"] == 20


def test_preprocessing_measures_the_simulated_disc(tiny):
    expected = tiny.disc_radius_px
    for i in (0, 9):
        got = preprocess_pattern(tiny.pattern_by_index(i, TILT))
        assert got.radius_px == pytest.approx(expected, rel=0.03)
        c = (tiny.stack(TILT).shape[-1] - 1) / 2
        assert got.centre_px == pytest.approx((c, c), abs=0.5)


def test_frozen_phonons_are_seeded_and_change_the_pattern():
    spec = SPEC.model_copy(update={"max_thickness_nm": 1.2, "frozen_phonons": 2})
    a, b = simulate_series(spec, (0, 0)), simulate_series(spec, (0, 0))
    other = simulate_series(spec.model_copy(update={"seed": 1}), (0, 0))
    plain = simulate_series(spec.model_copy(update={"frozen_phonons": 0}), (0, 0))
    assert np.array_equal(a.patterns, b.patterns)
    peak = float(plain.patterns.max())
    assert np.abs(a.patterns - other.patterns).max() > 1e-3 * peak
    assert np.abs(a.patterns - plain.patterns).max() > 1e-3 * peak
    assert a.patterns.sum(axis=(1, 2)) == pytest.approx(plain.patterns.sum(axis=(1, 2)), rel=0.02)
