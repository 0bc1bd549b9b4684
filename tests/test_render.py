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
# Even illumination, for measuring reflectances and noise directly.
EVEN = {"vignetting": 0.0, "illumination_offset": (0.0, 0.0), "illumination_gradient": 0.0}


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
    imaging = ImagingSpec(flare=0.15, **EVEN)
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
    spec = ImagingSpec(vignetting=0.2, illumination_offset=(0.0, 0.0), illumination_gradient=0)
    r = FieldRenderer(chip, spec, PX, 0.14, seed=1)
    # Bare wafer on the 3 mm chip, far from objects: the frames' median over many positions.
    frames = [r.render(x, y, frame_index=i).astype(float) for i, (x, y) in enumerate(SPOTS)]
    img = np.median(frames, axis=0)
    corner = img[:20, :20].mean()
    centre = img[374:394, 502:522].mean()
    assert corner == pytest.approx(0.8 * centre, rel=0.05)


SPOTS = [(600.0 + 350 * i, 700.0 + 230 * (i % 4)) for i in range(7)]


def test_the_flat_field_can_be_measured_from_frames_of_the_chip(chip):
    # As a lab does: the median of frames at several chip positions, normalised.
    r = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=1)
    frames = [r.render(x, y, frame_index=i).astype(float) for i, (x, y) in enumerate(SPOTS)]
    measured = np.median(frames, axis=0)[..., 2]  # blue: the brightest channel
    smooth = measured.reshape(48, 16, 64, 16).mean(axis=(1, 3))
    truth = r.flat_field().reshape(48, 16, 64, 16).mean(axis=(1, 3))
    ratio = (smooth / smooth.max()) / (truth / truth.max())
    assert np.percentile(np.abs(ratio - 1), 95) < 0.02
    # The truth is not flat: off-axis hot spot and gradient.
    assert truth.min() < 0.9 * truth.max()


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
    r = FieldRenderer(chip, ImagingSpec(**EVEN), PX, 0.14, seed=1)
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


def test_bit_depth_jpeg_and_srgb_outputs(chip):
    f = big_monolayer(chip)
    x, y = f.centroid_um
    deep = FieldRenderer(chip, ImagingSpec(bit_depth=12), PX, 0.14, seed=1).render(x, y)
    assert deep.dtype == np.uint16 and 1000 < deep.max() <= 4095
    plain = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=1).render(x, y).astype(float)
    jpeg = FieldRenderer(chip, ImagingSpec(jpeg_quality=50), PX, 0.14, seed=1).render(x, y)
    assert jpeg.dtype == np.uint8
    diff = np.abs(jpeg.astype(float) - plain)
    assert 0 < diff.mean() < 4  # artefacts, but the same picture
    srgb = FieldRenderer(chip, ImagingSpec(encoding="srgb"), PX, 0.14, seed=1).render(x, y)
    # The sRGB curve lifts mid-tones: the wafer's green (~40 % of full scale) gets brighter.
    assert np.median(srgb[..., 1]) > 1.3 * np.median(plain[..., 1])
    with pytest.raises(ValueError, match="jpeg_quality needs bit_depth 8"):
        ImagingSpec(bit_depth=12, jpeg_quality=80)


def test_objects_beyond_flakes_are_drawn():
    spec = ChipSpec(width_um=1500, height_um=1500, scratches_per_mm2=3, bubbles_per_mm2=5)
    chip = generate_chip(spec, 2)
    r = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=1)
    sub = r.substrate_reflectance
    for kind in ("bubble", "scratch", "residue"):
        obj = next(o for o in chip.objects if o.kind == kind)
        assert not np.allclose(r.reflectance_of(obj), sub, atol=1e-3), kind
    # A scratch through the oxide down to bare silicon reflects like bare silicon.
    scratch = next(o for o in chip.objects if o.kind == "scratch")
    scratch_bare = type(scratch)(**{**scratch.__dict__, "thickness_nm": 0.0, "_poly": None})
    assert r.reflectance_of(scratch_bare) == pytest.approx([0.35, 0.37, 0.42], abs=0.03)
