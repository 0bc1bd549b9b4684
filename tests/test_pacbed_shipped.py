"""The shipped PACBED models on patterns no library holds: a fresh abTEM thickness series at
an off-grid tilt and a convergence angle between the trained ones, scaled, rotated and
counted as a camera would give it. About 20 s of multislice per system on one core."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("abtem")

from flakescan.inference.backends import create_backend
from flakescan.inference.pacbed import PACBED_TASK, PacbedAnalyzer, model_for_system
from flakescan.inference.registry import ModelRegistry
from flakescan.simulators.pacbed import LibrarySpec, simulate_series
from flakescan.simulators.pacbed_augment import poisson_noise, transform

TILT = (3.3, 1.4)  # mrad: off the 1 and 2 mrad library grids, in no symmetry wedge's corner


@pytest.mark.parametrize("system", ["SrTiO3", "TiO2-rutile"])
def test_shipped_model_reads_a_fresh_series_between_trained_angles(system):
    entry = model_for_system(ModelRegistry(), system)
    spec = entry.card.training["pacbed"]
    conv = float(np.mean(spec["conv_angles_mrad"]))  # never trained at exactly this angle
    series = simulate_series(
        LibrarySpec(
            system=spec["system"]["id"],
            conv_angle_mrad=conv,
            energy_kev=spec["energy_kev"],
            max_thickness_nm=25.0,
        ),
        TILT,
    )
    analyzer = PacbedAnalyzer(entry, create_backend(entry.path, intra_op_threads=1))
    rng = np.random.default_rng(0)
    picks = range(4, len(series.thickness_a), 7)
    patterns = [
        poisson_noise(transform(series.patterns[i], scale=1.04, rotation_deg=23.0), 1e6, rng)
        for i in picks
    ]
    results, _ = analyzer.analyze_images(patterns, conv)
    truth_nm = series.thickness_a[list(picks)] / 10
    thickness_err = np.abs([r.thickness_nm for r in results] - truth_nm)
    mistilt_err = np.abs([r.mistilt_mrad for r in results] - np.hypot(*TILT))
    scale_err = np.abs([r.scale / 1.04 - 1 for r in results])
    assert len(results) >= 8 and entry.card.task == PACBED_TASK
    assert thickness_err.mean() <= 2.0, thickness_err  # the targets, on fresh patterns
    assert mistilt_err.mean() <= 1.0, mistilt_err
    assert scale_err.max() <= 0.02, scale_err
