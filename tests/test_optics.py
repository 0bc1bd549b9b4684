"""Thin-film contrasts against published and measured values (physics-notes.md)."""

from __future__ import annotations

import numpy as np
import pytest

from flakescan.simulators.optics import MATERIALS, StackOptics, refractive_index


@pytest.mark.parametrize(
    ("layers", "expected_rgb_pct"),
    [
        (1, (7.7, 7.4, 0.2)),
        (2, (14.9, 13.8, None)),
        (3, (21.5, 19.4, None)),
        (5, (33.1, 28.2, None)),
    ],
)
def test_graphene_on_285nm_matches_the_multilayer_model(layers, expected_rgb_pct):
    c = 100 * StackOptics(MATERIALS["graphene"], 285).contrast(layers)
    for got, want in zip(c, expected_rgb_pct, strict=True):
        if want is not None:
            assert got == pytest.approx(want, abs=0.3)


def test_graphene_monolayer_on_90nm_and_oxide_dependence():
    assert 100 * StackOptics(MATERIALS["graphene"], 90).contrast(1) == pytest.approx(
        [13.0, 13.1, 8.5], abs=0.3
    )
    # Red is the robust channel against oxide variation, green swings (Blake et al. 2007).
    r270, g270, _ = 100 * StackOptics(MATERIALS["graphene"], 270).contrast(1)
    r300, g300, _ = 100 * StackOptics(MATERIALS["graphene"], 300).contrast(1)
    assert (r270, g270) == pytest.approx((5.2, 10.0), abs=0.3)
    assert (r300, g300) == pytest.approx((9.6, 3.6), abs=0.3)


def test_blake_2007_graphene_contrast_peaks_near_10_percent_on_300nm_oxide():
    # Blake et al. measured about 8-10 % monolayer contrast in green-red light on 300 nm SiO2.
    o = StackOptics(MATERIALS["graphene"], 300)
    assert 0.08 <= max(o.contrast(1)[:2]) <= 0.11


def test_numerical_aperture_lowers_contrast_at_high_na_only():
    ideal = StackOptics(MATERIALS["graphene"], 285).contrast(1)[0]
    assert StackOptics(MATERIALS["graphene"], 285, 0.15).contrast(1)[0] == pytest.approx(
        ideal, abs=0.002
    )
    assert 100 * StackOptics(MATERIALS["graphene"], 285, 0.5).contrast(1)[0] == pytest.approx(
        6.1, abs=0.3
    )
    assert 100 * StackOptics(MATERIALS["graphene"], 285, 0.9).contrast(1)[0] == pytest.approx(
        2.9, abs=0.3
    )


def test_seed_bins_hold_once_measured_contrast_runs_below_the_model():
    # With the simulator's flare (measured = ideal / 1.15) monolayers fall in class 1
    # (R <= 12 %) and 3-5 layers in classes 2-3, as the GrapheneClassifier seed reports.
    o = StackOptics(MATERIALS["graphene"], 285, 0.14)
    measured = [o.contrast(n)[0] / 1.15 for n in range(1, 7)]
    assert measured[0] <= 0.12
    assert 0.12 < measured[2] <= 0.19
    assert 0.19 < measured[4] <= 0.30


@pytest.mark.parametrize(
    ("nm", "expected"),
    [(3, (15, -12, -13)), (10, (36, -62, -40)), (30, (-20, -238, -73))],
)
def test_hbn_interference_colours(nm, expected):
    o = StackOptics(MATERIALS["hBN"], 285)
    sub = o.channel_reflectance(0)
    c = 100 * (sub - o.channel_reflectance(nm)) / sub
    assert c == pytest.approx(expected, abs=2.0)


def test_indices_are_physical():
    wl = np.linspace(400, 720, 20)
    for name in ("Si", "SiO2", "graphene", "hBN", "polymer"):
        n = refractive_index(name, wl)
        assert np.all(n.real > 1) and np.all(n.imag >= 0), name
    assert refractive_index("Si", np.array([450.0]))[0] == pytest.approx(4.69 + 0.086j, abs=0.01)
    with pytest.raises(KeyError):
        refractive_index("unobtainium", wl)
