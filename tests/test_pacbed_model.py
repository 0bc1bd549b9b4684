"""PACBED network, trainer and analyzer on a tiny SrTiO3 library (a few seconds of abTEM).

The library is 2x2 cells at 72 gpts, a 4x4 scan, 10 cells (3.9 nm) thick, the 4mm wedge on a
1 mrad grid to 1 mrad (three tilts): patterns of about 41 px with a disc of 8 px, preprocessed
to 32 px. Nothing here measures accuracy; it checks that the pieces fit and fail clearly.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("abtem")
pytest.importorskip("torch")

import torch

from flakescan.inference.backends import create_backend
from flakescan.inference.model_card import load_model_card
from flakescan.inference.pacbed import (
    PacbedAnalyzer,
    _rotate,
    analyze_pacbed,
    best_match,
    model_input,
)
from flakescan.inference.pacbed_preprocess import PreprocessConfig, preprocess_pattern
from flakescan.inference.registry import ModelEntry
from flakescan.simulators.pacbed import LibrarySpec, simulate_library
from flakescan.simulators.pacbed_augment import AugmentSpec, poisson_noise, transform
from flakescan.simulators.pacbed_library import PacbedLibrary
from flakescan.training.export import export_onnx, verify_onnx
from flakescan.training.pacbed_data import (
    PacbedSampler,
    choose_heldout_tilts,
    covered_tilt_radius,
    thickness_split,
)
from flakescan.training.pacbed_models import PacbedLayout, PacbedNet, pacbed_loss
from flakescan.training.train_pacbed import main

SIZE = 32
SPEC = LibrarySpec(
    system=1,
    repeat=(2, 2),
    gpts=72,
    scan_gpts=4,
    max_batch=16,
    tilt_max_mrad=1.0,
    tilt_step_mrad=1.0,
    max_thickness_nm=3.95,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> PacbedLibrary:
    root = tmp_path_factory.mktemp("pacbed-lib")
    return PacbedLibrary(simulate_library(SPEC, root, progress=False))


def _toy_training_args(out: Path) -> list[str]:
    """The trainer's options at toy size (add --library ...)."""
    return [
        "--out",
        str(out),
        "--size",
        str(SIZE),
        "--width",
        "8",
        "--radii",
        "16",
        "--angles",
        "64",
        "--epochs",
        "1",
        "--patterns-per-epoch",
        "32",
        "--batch-size",
        "16",
        "--reuse",
        "1",
        "--val-patterns",
        "8",
        "--test-patterns",
        "8",
        "--timing-patterns",
        "2",
        "--holdout-tilts",
        "0",
        "--holdout-thickness-every",
        "4",
        "--thickness-step-nm",
        "0.5",
    ]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """The trainer's command line end to end, at toy size: (model path, its card)."""
    out = tmp_path_factory.mktemp("pacbed-model") / "tiny_pacbed.onnx"
    argv = [*_toy_training_args(out), "--library", str(tiny.folder)]
    assert main(argv) == 0
    return out, load_model_card(out)


def _analyzer(path, library=None) -> PacbedAnalyzer:
    card = load_model_card(path)
    return PacbedAnalyzer(ModelEntry(path.stem, path, card), create_backend(path), library)


def _measured(lib: PacbedLibrary, index: int, tilt, seed: int = 0) -> np.ndarray:
    """A library pattern as a camera might give it: larger, rotated, counted, offset."""
    rng = np.random.default_rng(seed)
    p = transform(lib.pattern_by_index(index, tilt), scale=1.05, rotation_deg=30.0)
    return poisson_noise(p, 2e6, rng) + 5.0  # a dark-current offset the border removes


def test_covered_radius_splits_and_heldout_tilts(tiny):
    assert covered_tilt_radius(tiny) == pytest.approx(1.0)
    nm = np.arange(10, dtype=float)
    train, held = thickness_split(nm, 4)
    assert held.tolist() == [2, 6] and len(train) == 8
    assert thickness_split(nm[:5], 0)[1].tolist() == list(range(5))
    train, held = thickness_split(nm, 4, block_nm=(4.0, 5.0))
    assert held.tolist() == [2, 4, 5, 6] and 4 not in train and 5 not in train
    assert thickness_split(nm, 0, block_nm=(7.5, 9.0))[1].tolist() == [8, 9]
    with pytest.raises(ValueError, match=r"holdout_thickness_block_nm = \(0.0, 9.0\)"):
        thickness_split(nm, 0, block_nm=(0.0, 9.0))
    with pytest.raises(ValueError, match="holdout_tilts = 1"):
        choose_heldout_tilts([tiny], 1.0, 1, np.random.default_rng(0))


def test_heldout_tilts_are_stored_in_every_library():
    """With a 1 mrad and a 2 mrad grid, held-out tilts come from the tilts both store,
    interior by the coarser step."""

    def grid(step: float, n: int) -> SimpleNamespace:
        tilts = [(i * step, j * step) for i in range(n + 1) for j in range(i + 1)]
        return SimpleNamespace(tilts=np.array(tilts), spec=SimpleNamespace(tilt_step_mrad=step))

    fine, coarse = grid(1.0, 6), grid(2.0, 3)
    picks = {
        tuple(t)
        for seed in range(30)
        for t in choose_heldout_tilts([fine, coarse], 6.0, 1, np.random.default_rng(seed))
    }
    assert picks == {(2.0, 0.0), (2.0, 2.0), (4.0, 0.0)}  # |t| <= 6 - 2 on both grids
    assert (1.0, 0.0) in {
        tuple(t)
        for seed in range(30)
        for t in choose_heldout_tilts([fine], 6.0, 1, np.random.default_rng(seed))
    }
    with pytest.raises(ValueError, match="only 3 interior tilts"):
        choose_heldout_tilts([fine, coarse], 6.0, 3, np.random.default_rng(0))


def test_sampler_holds_out_and_preprocesses(tiny):
    cfg = PreprocessConfig(size=SIZE)
    sampler = PacbedSampler([tiny], 1.0, AugmentSpec(max_tilt_mrad=1.0), cfg, 4)
    rng = np.random.default_rng(1)
    d = sampler.draw(rng, 24)
    held_nm = tiny.thickness_a[[2, 6]] / 10
    assert d.patterns.shape == (24, SIZE, SIZE) and d.patterns.max() == pytest.approx(1.0)
    assert np.abs(d.thickness_nm[:, None] - held_nm[None]).min() > 0.1
    assert (d.mistilt_mrad <= 1.0 + 1e-6).all() and (np.abs(d.log_scale) < 0.05).all()
    h = sampler.draw(rng, 8, heldout=True, exact_tilts=True, preprocess=False)
    assert np.abs(h.thickness_nm[:, None] - held_nm[None]).min(axis=1).max() < 1e-4
    assert set(np.round(h.mistilt_mrad, 4)) <= {0.0, 1.0, 1.4142}
    assert h.patterns.shape[1:] == tiny.stack((0, 0)).shape[1:]


def test_training_steps_lower_the_loss_and_onnx_matches_torch(tiny, tmp_path):
    torch.manual_seed(0)
    cfg = PreprocessConfig(size=SIZE)
    d = PacbedSampler([tiny], 1.0, AugmentSpec(max_tilt_mrad=1.0), cfg).draw(
        np.random.default_rng(2), 32
    )
    layout = PacbedLayout.uniform(4.0, 0.5, 1.0, 0.25)
    model = PacbedNet(layout, size=SIZE, n_radii=16, n_angles=64, width=8)
    x = torch.from_numpy(model_input(d.patterns, d.conv_angle))
    model.fit_normalisation(x)
    labels = [torch.from_numpy(v) for v in (d.thickness_nm, d.mistilt_mrad, d.log_scale)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        model.train()
        loss, _ = pacbed_loss(model(x), layout, *labels, 0.5, 0.25)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.7 * losses[0]
    path = tmp_path / "m.onnx"
    export_onnx(model, path, x[:2], input_name="input", output_name="outputs")
    diff = verify_onnx(model, path, x.numpy(), output_name="outputs", tolerance=1e-4)
    assert diff < 1e-4


def test_features_ignore_detector_rotation_and_mirror(tiny):
    """The polar harmonic magnitudes do not change under any 90-degree turn or mirror, and
    barely under an arbitrary rotation (bilinear resampling)."""
    cfg = PreprocessConfig(size=SIZE)
    p = preprocess_pattern(tiny.pattern_by_index(8, (1.0, 1.0)), cfg).pattern
    model = PacbedNet(PacbedLayout.uniform(4.0, 0.5, 1.0, 0.25), size=SIZE, n_radii=16, n_angles=64)
    views = [p, np.rot90(p), p[::-1], p.T, _rotate(p, 37.0)]
    f = model.features(torch.from_numpy(model_input(np.stack(views).copy(), 20.0))).numpy()
    scale = np.abs(f[0]).max()
    for k in (1, 2, 3):
        assert np.abs(f[k] - f[0]).max() < 1e-5 * scale
    assert np.abs(f[4][0] - f[0][0]).max() < 0.05 * scale  # ring means under 37 degrees
    assert np.abs(f[0, 1]).max() > 1e-3 * scale  # a tilt puts weight in harmonic 1


def test_trainer_writes_model_card_and_report(trained):
    path, card = trained
    assert card.task == "pacbed" and card.input.shape == [None, 2, SIZE, SIZE]
    spec = card.training["pacbed"]
    assert spec["system"] == {
        "id": 1,
        "name": "SrTiO3",
        "material": "Strontium titanate",
        "direction": "[001]",
    }
    assert spec["conv_angles_mrad"] == [20.0] and spec["energy_kev"] == 300.0
    assert spec["preprocess"]["size"] == SIZE and spec["mistilt_bins_mrad"][-1] == 1.0
    assert card.metrics["onnx_vs_torch_max_abs_diff"] < 1e-3
    for key in ("thickness_mae_nm", "mistilt_mae_mrad", "scale_error_pct_mean"):
        assert np.isfinite(card.metrics["test"][key])
    assert card.metrics["timing"]["analysis_ms_median"] > 0
    report = path.with_name(path.stem + "-report")
    assert (report / "report.md").is_file() and (report / "predicted_vs_true.png").is_file()
    assert "flakescan train pacbed" in card.training["command"]


def test_trainer_on_two_convergence_angles_with_a_thickness_block(tiny, tmp_path):
    """Two libraries (20 and 16 mrad) train one model; the card and report break the
    held-out metrics down by angle and by the held-out thickness block."""
    other = PacbedLibrary(
        simulate_library(
            SPEC.model_copy(update={"conv_angle_mrad": 16.0}), tmp_path, progress=False
        )
    )
    out = tmp_path / "two_angles.onnx"
    argv = [
        *_toy_training_args(out),
        *("--library", str(other.folder), "--library", str(tiny.folder)),
        *("--holdout-thickness-block", "1.5", "2.5"),
    ]
    assert main(argv) == 0
    card = load_model_card(out)
    assert card.training["pacbed"]["conv_angles_mrad"] == [16.0, 20.0]
    assert card.training["heldout"]["thickness_block_nm"] == [1.5, 2.5]
    groups = card.metrics["test"]["by_group"]
    assert {"16 mrad", "20 mrad", "block 1.5-2.5 nm", "outside the block"} <= set(groups)
    assert sum(groups[k]["n"] for k in ("16 mrad", "20 mrad")) == card.metrics["test"]["patterns"]
    report = (out.with_name(out.stem + "-report") / "report.md").read_text()
    assert "block 1.5-2.5 nm: n = " in report and "every thickness from 1.5 to 2.5 nm" in report


def test_analyzer_end_to_end_on_npy_and_raw(tiny, trained, tmp_path):
    path, _ = trained
    image = _measured(tiny, 7, (1.0, 1.0))
    np.save(tmp_path / "a.npy", image)
    image.astype("<f4").tofile(tmp_path / "b.raw")
    analyzer = _analyzer(path, library=tiny.folder)
    docs = analyze_pacbed(
        [tmp_path / "a.npy", tmp_path / "b.raw"],
        analyzer,
        conv_angle_mrad=20.0,
        plot_dir=tmp_path / "plots",
        dtype="<f4",
        shape=image.shape,
    )
    assert len(docs) == 2
    json.dumps(docs)  # JSON-able
    a, b = docs
    for key in ("thickness_nm", "mistilt_mrad", "scale", "radius_px", "centre_px"):
        assert a[key] == pytest.approx(b[key])
    assert sum(a["thickness_curve"]["probability"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(a["mistilt_curve"]["probability"]) == pytest.approx(1.0, abs=1e-3)
    assert 0 <= a["thickness_nm"] <= 4.0 and 0 <= a["mistilt_mrad"] <= 1.0
    # the disc is measured to about 1 % before the scale head's correction
    assert a["measured_radius_px"] == pytest.approx(1.05 * tiny.disc_radius_px, rel=0.03)
    assert a["conv_angle_source"] == "given" and a["system"]["id"] == 1
    assert a["best_match"]["library"] == str(tiny.folder)
    assert (tmp_path / "plots" / "a.pacbed.png").is_file()
    assert a["picture"].endswith("a.pacbed.png")
    # no angle given: a model trained at one angle uses it, and says so
    res = analyzer.analyze_images([image])[0][0]
    assert res.conv_angle_mrad == 20.0 and res.conv_angle_source.startswith("model")


def test_best_match_finds_the_rotation(tiny):
    cfg = PreprocessConfig(size=SIZE)
    raw = tiny.pattern_by_index(6, (1.0, 0.0))
    measured = _rotate(preprocess_pattern(raw, cfg, radius_px=tiny.disc_radius_px).pattern, 40)
    m = best_match(tiny, float(tiny.thickness_a[6]) / 10, 1.0, np.clip(measured, 0, None), cfg)
    assert m.thickness_nm == pytest.approx(tiny.thickness_a[6] / 10)
    assert np.hypot(*m.tilt_mrad) == pytest.approx(1.0)
    assert m.correlation > 0.95
    # 4mm: the pattern at (1, 0) repeats every 180 deg and is mirror-symmetric
    assert (
        min(abs((m.rotation_deg - 40 + 90) % 180 - 90), abs((m.rotation_deg + 40 + 90) % 180 - 90))
        <= 2
    )


def test_bad_inputs_name_field_and_value(tiny, trained, tmp_path, capsys):
    path, _ = trained
    analyzer = _analyzer(path)
    with pytest.raises(ValueError, match=r"conv_angle_mrad = 30.0 is outside .* 19-21 mrad"):
        analyzer.conv_angle(30.0)
    with pytest.raises(ValueError, match=r"conv_angle_mrad = 30\.0"):
        analyze_pacbed([], analyzer, conv_angle_mrad=30.0)
    with pytest.raises(FileNotFoundError, match="library = '/no/such/lib'"):
        _analyzer(path, library="/no/such/lib")
    with pytest.raises(FileNotFoundError, match="no such file"):
        analyze_pacbed([tmp_path / "missing.npy"], analyzer)
    with pytest.raises(ValueError, match="needs both dtype and shape"):
        (tmp_path / "c.raw").write_bytes(b"\0" * 16)
        analyze_pacbed([tmp_path / "c.raw"], analyzer)
    np.save(tmp_path / "dark.npy", np.zeros((40, 40), np.float32))
    with pytest.raises(ValueError, match=r"dark\.npy: image is all zeros"):
        analyze_pacbed([tmp_path / "dark.npy"], analyzer)
    base = ["--out", str(tmp_path / "x.onnx")]
    cases = [
        (["--library", "/no/such/lib", *base], "--library '/no/such/lib': no such folder"),
        (
            ["--library", str(tiny.folder), "--max-mistilt-mrad", "3", *base],
            "--max-mistilt-mrad 3 exceeds the 1 mrad",
        ),
        (["--library", str(tiny.folder), "--size", "40", *base], "--size must be a multiple of 16"),
        (
            ["--library", str(tiny.folder), "--scale-range", "1.1", "0.9", *base],
            "--scale-range must be 0 < LO <= HI, got 1.1 0.9",
        ),
        (["--library", str(tiny.folder), "--epochs", "0", *base], "--epochs must be >= 1, got 0"),
        (
            ["--library", str(tiny.folder), "--holdout-thickness-block", "3", "1", *base],
            "--holdout-thickness-block must be 0 <= LO < HI nm, got 3 1",
        ),
        (
            [
                *("--library", str(tiny.folder), "--holdout-tilts", "0"),
                *("--holdout-thickness-block", "0", "9", *base),
            ],
            "leave no thickness to train",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_analyze_pacbed_through_the_cli(tiny, trained, tmp_path, capsys):
    from flakescan.daemon.cli import main as cli

    path, _ = trained
    image = _measured(tiny, 7, (1.0, 1.0), seed=3)
    image.astype("<u2").tofile(tmp_path / "c.raw")
    rows, cols = image.shape
    argv = ["analyze", "pacbed", str(tmp_path / "c.raw"), "--model", str(path), "--dtype",
            "<u2", "--shape", str(rows), str(cols), "--conv-angle-mrad", "20"]  # fmt: skip
    assert cli(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "pacbed" and doc["model"]["name"] == path.stem
    (r,) = doc["results"]
    assert r["source"].endswith("c.raw") and r["conv_angle_source"] == "given"
    # files are read before any model is opened: a raw file without its layout stops first
    assert cli(["analyze", "pacbed", str(tmp_path / "c.raw"), "--model", "no_such_model"]) == 2
    assert "needs both dtype and shape" in capsys.readouterr().err
    np.save(tmp_path / "c.npy", image)
    assert cli(["analyze", "pacbed", str(tmp_path / "c.npy"), "--model", "no_such_model"]) == 2
    assert "no model named 'no_such_model'" in capsys.readouterr().err
    # --system picks the model trained for the material, the lab's folder first
    config = tmp_path / "service.toml"
    config.write_text(f'[models]\nregistry = ["{path.parent}"]\n')
    lab = ["analyze", "pacbed", str(tmp_path / "c.npy"), "--config", str(config)]
    assert cli([*lab, "--system", "srtio3", "--conv-angle-mrad", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == path.stem
    assert cli([*lab, "--system", "7"]) == 2
    err = capsys.readouterr().err
    assert "system = '7': no PACBED model for it" in err and "1 (SrTiO3)" in err
    # the microscope's settings are checked against the model's card, naming the field
    here = ["analyze", "pacbed", str(tmp_path / "c.npy"), "--model", str(path)]
    refusals = [
        (["--energy-kev", "200"], "energy_kev = 200: model 'tiny_pacbed' was trained at 300 keV"),
        (
            ["--zone-axis", "[110]"],
            "zone_axis = '[110]': model 'tiny_pacbed' was trained for [001]",
        ),
        (["--system", "rutile"], "system = 'rutile': model 'tiny_pacbed' is for system 1"),
        (["--conv-angle-mrad", "-1"], "conv_angle_mrad"),
        (["--model", "xrd_cnn1d"], "model 'xrd_cnn1d' serves 'xrd' analyses, not 'pacbed'"),
    ]
    for extra, message in refusals:
        assert cli([*here, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    ok = [*here, "--energy-kev", "300", "--zone-axis", "001", "--conv-angle-mrad", "20"]
    assert cli(ok) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["conv_angle_mrad"] == 20.0
