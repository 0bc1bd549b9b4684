"""Pattern readers (raw, .npy, TIFF, DM3/DM4) and PACBED preprocessing; numpy/scipy only.

The DM files are real DigitalMicrograph files (tests/data/dm/README.md), fetched on first use
by tests/dm_files.py: rosettasciio reads but cannot write them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flakescan.inference.pacbed_preprocess import (
    PreprocessConfig,
    otsu_threshold,
    preprocess_pattern,
)
from flakescan.inference.pattern_readers import (
    electron_wavelength_angstrom,
    read_pattern,
    read_raw,
)


@pytest.fixture(scope="module")
def dm() -> Path:
    from tests.dm_files import fetch_dm_files

    return fetch_dm_files()


def _pattern(shape=(40, 50)) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 4000, shape)


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<f4", "<i4", "u1"])
def test_raw_round_trip(tmp_path, dtype):
    a = _pattern().astype(dtype)
    path = tmp_path / "frame.raw"
    a.tofile(path)
    got = read_pattern(path, dtype=dtype, shape=a.shape)
    assert got.data.dtype == np.float32 and np.array_equal(got.data, a.astype(np.float32))
    assert got.metadata.format == "raw" and got.metadata.shape == a.shape


def test_raw_with_header_offset(tmp_path):
    a = _pattern().astype("<u2")
    path = tmp_path / "frame.bin"
    path.write_bytes(b"H" * 64 + a.tobytes())
    assert np.array_equal(read_raw(path, "<u2", a.shape, offset=64).data, a)


def test_raw_refuses_a_size_mismatch_naming_both_sizes(tmp_path):
    path = tmp_path / "frame.raw"
    _pattern().astype("<u2").tofile(path)  # 40 x 50 x 2 = 4000 bytes
    with pytest.raises(ValueError, match=r"4000 bytes.*\(50, 50\).*needs 5000"):
        read_pattern(path, dtype="<u2", shape=(50, 50))
    with pytest.raises(ValueError, match="needs both dtype and shape"):
        read_pattern(path)


def test_npy_round_trip_and_refusals(tmp_path):
    a = _pattern().astype(np.float64)
    np.save(tmp_path / "p.npy", a)
    got = read_pattern(tmp_path / "p.npy")
    assert np.allclose(got.data, a) and got.metadata.dtype == "<f8"
    np.save(tmp_path / "stack.npy", np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match=r"2-D.*\(3, 4, 5\)"):
        read_pattern(tmp_path / "stack.npy")
    np.save(tmp_path / "c.npy", np.zeros((4, 4), complex))
    with pytest.raises(ValueError, match="not a real number"):
        read_pattern(tmp_path / "c.npy")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8])
def test_tiff_round_trip(tmp_path, dtype):
    a = _pattern().astype(dtype)
    path = tmp_path / "p.tif"
    Image.fromarray(a).save(path)
    got = read_pattern(path)
    assert np.array_equal(got.data, a.astype(np.float32)) and got.metadata.format == "tiff"


def test_tiff_refuses_rgb_and_stacks(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.tif")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        read_pattern(tmp_path / "rgb.tif")
    frames = [Image.fromarray(np.full((8, 8), i, np.uint16)) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="3 frames"):
        read_pattern(tmp_path / "stack.tif")


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "p.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown pattern format '\.png'"):
        read_pattern(tmp_path / "p.png")
    with pytest.raises(FileNotFoundError):
        read_pattern(tmp_path / "none.npy")


@pytest.mark.parametrize("name", ["float32_2x2.dm3", "float32_2x2.dm4"])
def test_dm_files(name, dm):
    pytest.importorskip("rsciio")
    got = read_pattern(dm / name)
    assert got.data.dtype == np.float32
    assert got.data.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert got.metadata.format == name[-3:] and got.metadata.pixel_size is None


def test_dm_diffraction_pattern_calibration(dm):
    pytest.importorskip("rsciio")
    got = read_pattern(dm / "diffraction_87x87.dm3")
    m = got.metadata
    assert got.data.shape == (87, 87) and m.dtype == "<i4"
    assert (m.pixel_unit, m.energy_kev) == ("1/nm", 200.0)
    assert m.pixel_size == pytest.approx(0.174433, rel=1e-5)
    # 0.174 1/nm x 2.508 pm = 0.437 mrad per pixel
    assert m.mrad_per_px == pytest.approx(0.174433 * 0.1 * 0.025079 * 1e3, rel=1e-4)
    assert m.with_energy(300).mrad_per_px == pytest.approx(0.174433 * 0.1 * 0.019687e3, rel=1e-4)


def test_dm_without_rosettasciio_names_the_extra(monkeypatch, dm):
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)
    with pytest.raises(ImportError, match=r"flakescan\[diffraction\]"):
        read_pattern(dm / "float32_2x2.dm3")


def test_electron_wavelength():
    assert electron_wavelength_angstrom(200) == pytest.approx(0.025079, rel=1e-4)
    assert electron_wavelength_angstrom(300) == pytest.approx(0.019687, rel=1e-4)
    with pytest.raises(ValueError, match="energy_kev"):
        electron_wavelength_angstrom(0)


def _disc(shape, centre, radius, supersample=4) -> np.ndarray:
    """An anti-aliased uniform disc (area coverage per pixel)."""
    s = supersample
    yy, xx = np.indices((shape[0] * s, shape[1] * s)) / s + (0.5 / s - 0.5)
    inside = np.hypot(yy - centre[0], xx - centre[1]) <= radius
    return inside.reshape(shape[0], s, shape[1], s).mean(axis=(1, 3))


@pytest.mark.parametrize(
    ("centre", "radius"), [((100.3, 87.6), 23.7), ((60.2, 140.9), 11.3), ((128.0, 125.5), 40.0)]
)
def test_preprocessing_recovers_centre_and_radius(centre, radius):
    rng = np.random.default_rng(2)
    image = rng.poisson(1000 * _disc((220, 250), centre, radius) + 50).astype(float)
    got = preprocess_pattern(image)
    assert got.centre_px == pytest.approx(centre, abs=0.15)
    assert got.radius_px == pytest.approx(radius, rel=0.01)
    assert got.background == pytest.approx(50, rel=0.05)
    assert got.mrad_per_px(20.0) == pytest.approx(20.0 / radius, rel=0.01)
    # every camera length gives the same normalised pattern: the disc fills 1/crop_radii
    p = got.pattern
    assert p.shape == (128, 128) and p.max() == pytest.approx(1.0)
    assert got.output_radius_px == 32
    row = p[64] > 0.5
    assert row.sum() == pytest.approx(2 * 32, abs=3)


def test_preprocessing_is_scale_invariant():
    small = preprocess_pattern(_disc((120, 120), (58.0, 61.0), 15.0) + 0.01)
    large = preprocess_pattern(_disc((240, 240), (116.0, 122.0), 30.0) + 0.01)
    assert np.abs(small.pattern - large.pattern).mean() < 0.02
    assert large.scale == pytest.approx(2 * small.scale, rel=0.02)


def test_preprocessing_config_and_known_radius():
    image = _disc((100, 100), (50.0, 50.0), 10.0)
    got = preprocess_pattern(image, PreprocessConfig(size=64, crop_radii=3), radius_px=10.0)
    assert got.pattern.shape == (64, 64) and got.radius_px == 10.0
    with pytest.raises(ValueError, match="crop_radii"):
        PreprocessConfig(crop_radii=0.5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32)), "all zeros"),
        (np.full((32, 32), 7.0), r"constant \(7.0\)"),
        (np.zeros((3, 32, 32)), r"2-D array, got shape \(3, 32, 32\)"),
        (np.zeros(32), r"2-D array, got shape \(32,\)"),
        (np.zeros((4, 40)), "too small"),
        (np.full((32, 32), np.nan), "1024 non-finite pixels"),
        (np.zeros((32, 32), complex), "real numbers"),
    ],
)
def test_preprocessing_refuses_bad_input(image, message):
    with pytest.raises(ValueError, match=message):
        preprocess_pattern(image)


def test_preprocessing_refuses_a_dot():
    image = np.zeros((64, 64))
    image[30:32, 30:32] = 1.0
    with pytest.raises(ValueError, match="below min_radius_px"):
        preprocess_pattern(image)


def test_otsu_splits_two_levels():
    values = np.r_[np.full(100, 1.0), np.full(50, 9.0)]
    assert 1.0 < otsu_threshold(values) < 9.0
