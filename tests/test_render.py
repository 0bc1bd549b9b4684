"""Image formation: geometry, contrast, blur, noise - measured on rendered frames."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Point

from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.optics import MATERIALS, StackOptics
from flakescan.simulators.render import FieldRenderer

PX = 0.57


@pytest.fixture(scope="module")
def chip():
    return generate_chip(ChipSpec(width_um=3000, height_um=3000, thin_flakes_per_mm2=15), 5)


def big_monolayer(chip):
    free = [o for o in chip.flakes(1, 1) if o.parent_id is None and o.area_um2 > 300]
    return max(free, key=lambda o: o.area_um2)


def test_a_flake_appears_where_the_stage_says(chip):
    f = big_monolayer(chip)
    r = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=1)
    x, y = f.centroid_um
    # Put the flake 100 um right of and 50 um below the frame centre.
    refl = r.reflectance_map(x - 100, y - 50)
    sub = r.substrate_reflectance
    h, w = refl.shape[:2]
    row = round((h - 1) / 2 + 50 / PX)
    col = round((w - 1) / 2 + 100 / PX)
    assert f.polygon.contains(Point(x, y))
    assert np.allclose(refl[row, col], r.reflectance_of(f))
    assert not np.allclose(refl[row, col], sub)


def test_measured_contrast_is_the_thin_film_contrast_reduced_by_flare(chip):
    f = big_monolayer(chip)
    imaging = ImagingSpec(vignetting=0.0, flare=0.15)
    r = FieldRenderer(chip, imaging, PX, 0.14, seed=1)
    img = r.render(*f.centroid_um).astype(float)
    h, w = img.shape[:2]
    centre = img[h // 2 - 3 : h // 2 + 4, w // 2 - 3 : w // 2 + 4].reshape(-1, 3).mean(0)
    background = np.median(img.reshape(-1, 3), axis=0)
    measured = (background - centre) / background
    ideal = StackOptics(MATERIALS["graphene"], 285, 0.14).contrast(1)
    assert measured[0] == pytest.approx(ideal[0] / 1.15, abs=0.01)
    assert measured[1] == pytest.approx(ideal[1] / 1.15, abs=0.01)


def test_vignetting_darkens_the_corners(chip):
    r = FieldRenderer(chip, ImagingSpec(vignetting=0.2), PX, 0.14, seed=1)
    img = r.render(-5000, -5000).astype(float)  # off the chip: the uniform holder
    corner = img[:20, :20].mean()
    centre = img[374:394, 502:522].mean()
    assert corner == pytest.approx(0.8 * centre, rel=0.05)


def test_defocus_blurs_edges(chip):
    f = big_monolayer(chip)
    r = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=1)

    def sharpness(img: np.ndarray) -> float:
        g = img[..., 0].astype(float)
        return float(np.mean(np.abs(np.diff(g, axis=1))) + np.mean(np.abs(np.diff(g, axis=0))))

    assert r.blur_sigma_px(40) > 3 * r.blur_sigma_px(0)
    # Noise dominates pixel differences, so compare the same noise on both frames.
    sharp = r.render(*f.centroid_um, frame_index=3)
    blurred = r.render(*f.centroid_um, defocus_um=40, frame_index=3)
    assert sharpness(blurred) < sharpness(sharp)


def test_noise_follows_photon_statistics(chip):
    r = FieldRenderer(chip, ImagingSpec(vignetting=0.0), PX, 0.14, seed=1)
    a = r.render(-20000, -20000, frame_index=1).astype(float)
    b = r.render(-20000, -20000, frame_index=2).astype(float)
    assert not np.array_equal(a, b)  # fresh noise per frame
    assert np.array_equal(a, r.render(-20000, -20000, frame_index=1))  # reproducible
    im = ImagingSpec()
    e_per_adu = im.full_well_e / 255
    diff = (a - b)[..., 2]  # blue, the brightest channel
    mean_e = 0.5 * (a + b)[..., 2].mean() * e_per_adu
    expected_sigma_adu = np.sqrt(2 * (mean_e + im.read_noise_e**2)) / e_per_adu
    assert diff.std() == pytest.approx(expected_sigma_adu, rel=0.25)


def test_frames_are_8_bit_linear_rgb(chip):
    r = FieldRenderer(chip, ImagingSpec(width_px=320, height_px=240), PX, 0.14)
    img = r.render(1500, 1500)
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    # 285 nm oxide reflects blue most: a violet wafer.
    assert img[..., 2].mean() > img[..., 0].mean() > img[..., 1].mean()
