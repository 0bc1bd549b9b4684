"""Phase retrieval: structure factors against Dans_Diffraction, Friedel symmetry, origin and
enantiomorph handling, density R-factor, the four models (training, ONNX), the readers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flakescan.inference.phase_grid import (
    N_MAX,
    canonical_origin,
    density,
    friedel_mate,
    grid_hkl,
    model_input,
    r_factor,
    score_phases,
)
from flakescan.inference.phase_retrieval import (
    PHASE_TASK,
    ReflectionError,
    analyze_phase,
    place_on_grid,
    read_amplitude_csv,
    read_hkl,
    read_reflections,
    write_hkl,
)
from flakescan.simulators import structure_factors as sf

pytest.importorskip("Dans_Diffraction", reason="the structure-factor tests need Dans_Diffraction")
CRYSTALS = ("Rutile", "ZnO", "LiCoO2", "Diamond")


@pytest.fixture(scope="module")
def crystals() -> dict[str, sf.CrystalStructure]:
    paths = {p.stem: p for p in sf.dans_cif_paths()}
    return {name: sf.load_cif(paths[name]) for name in CRYSTALS}


@pytest.fixture(scope="module")
def samples(crystals):
    """Displaced copies of each crystal: (F at the canonical origin, mask, structure)."""
    rng = np.random.default_rng(4)
    out = {}
    for name, s in crystals.items():
        s = s.with_default_uiso(0.005)
        f = sf.structure_factors(s, sf.displaced_positions(s, rng, 6))
        out[name] = (canonical_origin(f)[0], sf.limiting_sphere_mask(s.lattice), s)
    return out


@pytest.mark.parametrize("name", CRYSTALS)
def test_numpy_structure_factors_equal_dans(crystals, name):
    s = crystals[name]
    ours = sf.structure_factors(s).reshape(-1)
    ref = sf.dans_structure_factors(s.source, grid_hkl().reshape(-1, 3))
    assert np.max(np.abs(ours - ref)) < 1e-10 * np.max(np.abs(ref))


def test_displaced_structure_factors_equal_dans_sum(crystals):
    """The batched sum for displaced positions is the plain per-reflection sum."""
    from Dans_Diffraction import functions_crystallography as fc

    s = crystals["Rutile"]
    pos = sf.displaced_positions(s, np.random.default_rng(0), 2, sigma_iso_angstrom=0.05)
    hkl = grid_hkl().reshape(-1, 3)
    q = sf.q_magnitudes(s.lattice).reshape(-1)
    ff = fc.xray_scattering_factor(list(s.elements), q) * fc.debyewaller(s.uiso, q)
    ref = (ff * s.occupancy * np.exp(2j * np.pi * hkl @ pos[1].T)).sum(axis=1)
    assert np.allclose(sf.structure_factors(s, pos)[1].reshape(-1), ref, atol=1e-10)


def test_friedel_symmetry(samples):
    f, _mask, _s = samples["ZnO"]  # non-centrosymmetric, and displaced
    assert np.allclose(friedel_mate(f), np.conj(f), atol=1e-9)


def test_rigid_shift_keeps_amplitudes_and_canonical_origin_restores_labels(crystals):
    s = crystals["LiCoO2"].with_default_uiso(0.005)
    pos = sf.displaced_positions(s, np.random.default_rng(1), 3)
    shift = np.array([0.31, 0.77, 0.12])
    f = sf.structure_factors(s, pos)
    g = sf.structure_factors(s, np.mod(pos + shift, 1.0))
    assert np.allclose(np.abs(f), np.abs(g), atol=1e-9)
    assert np.abs(np.angle(f * np.conj(g))).max() > 1.0  # the raw labels differ
    cf, x_f = canonical_origin(f)
    cg, x_g = canonical_origin(g)
    assert np.allclose(cf, cg, atol=1e-6 * np.abs(f).max())
    assert np.allclose(np.mod(x_g - x_f - shift + 0.5, 1.0) - 0.5, 0, atol=1e-6)


def test_density_r_factor(samples):
    rng = np.random.default_rng(2)
    for f, mask, _s in samples.values():
        m = np.broadcast_to(mask, f.shape)
        amp, ph = np.abs(f), np.angle(f)
        true = score_phases(ph, ph, amp, m)
        assert true.r_factor.max() < 1e-9 and true.loss.max() < 1e-9
        # the same structure shifted and inverted is the same answer
        t = rng.random(3)
        moved = -(ph + 2 * np.pi * (grid_hkl() @ t))
        assert score_phases(moved, ph, amp, m).r_factor.max() < 1e-6
        rand = rng.uniform(-np.pi, np.pi, ph.shape)
        rand = 0.5 * (rand - friedel_mate(rand))
        assert score_phases(rand, ph, amp, m).r_factor.min() > 0.8


def test_density_convention_puts_an_atom_where_it_is(crystals):
    """rho(x) = (1/V) sum F exp(-2 pi i h.x): a single atom at x0 peaks at x0."""
    s = crystals["Rutile"]
    x0 = np.array([0.25, 0.5, 0.75])
    one = sf.CrystalStructure("one", "t", s.lattice, x0[None], ("Ti",), np.ones(1), np.zeros(1))
    rho = density(sf.structure_factors(one), 24)
    assert np.unravel_index(np.argmax(rho), rho.shape) == (6, 12, 18)
    assert r_factor(rho, rho) == 0


torch = pytest.importorskip("torch", reason="the model tests need torch (train extra)")
TINY = {"linear": 8, "fc": 16, "cnn": 4, "unet": 4}


@pytest.fixture(scope="module")
def tiny_set(samples):
    f = np.concatenate([v[0] for v in samples.values()])
    mask = np.concatenate([np.broadcast_to(v[1], v[0].shape) for v in samples.values()])
    x = model_input(np.abs(f), mask)
    return x, np.where(mask, np.angle(f), 0).astype(np.float32), np.abs(f), mask


def test_invariant_loss_ignores_origin_and_hand(tiny_set):
    from flakescan.training.phase_models import loss_weights, phase_loss

    x, ph, _a, _m = tiny_set
    t = np.random.default_rng(3).random((len(x), 3))
    moved = -(ph + 2 * np.pi * np.einsum("hklc,nc->nhkl", grid_hkl(), t))
    out = torch.from_numpy(np.stack([np.cos(moved), np.sin(moved)], 1).astype(np.float32))
    xt = torch.from_numpy(x)
    w = loss_weights(xt)
    assert float(phase_loss(out, torch.from_numpy(ph), w)) < 1e-5
    assert float(phase_loss(out, torch.from_numpy(ph), w, mode="canonical")) > 0.1


@pytest.mark.filterwarnings("ignore:Constant folding")
@pytest.mark.parametrize("name", list(TINY))
def test_tiny_training_lowers_loss_and_onnx_matches(tmp_path, tiny_set, name):
    from flakescan.inference.backends import create_backend
    from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
    from flakescan.inference.phase_retrieval import OUTPUT_NAME, PhaseModel
    from flakescan.training.export import export_onnx, verify_onnx, write_card
    from flakescan.training.train_phase import PhaseTrainConfig, train_model

    torch.set_num_threads(1)
    x, ph, amp, mask = tiny_set
    cfg = PhaseTrainConfig(model=name, width=TINY[name], epochs=6, batch_size=8, lr=3e-3)
    model, history = train_model(cfg, x, ph, {"train": (x, ph)}, select=None, log=lambda *_: 0)
    curve = history["train_loss_per_epoch"]
    assert curve[-1] < curve[0], curve
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    mate = out[:, :, ::-1, ::-1, ::-1]
    assert np.allclose(out[:, 0], mate[:, 0], atol=1e-5)  # Friedel: cos even, sin odd
    assert np.allclose(out[:, 1], -mate[:, 1], atol=1e-5)
    path = tmp_path / f"phase_{name}.onnx"
    export_onnx(model, path, torch.from_numpy(x[:2]), output_name=OUTPUT_NAME)
    assert verify_onnx(model, path, x, output_name=OUTPUT_NAME) < 1e-4
    card = ModelCard(
        name=path.stem,
        task=PHASE_TASK,
        architecture=name,
        parameters=1,
        input=ModelInput(name="input", shape=[None, 2, 13, 13, 13], representation="test"),
        output=ModelOutput(name=OUTPUT_NAME, activation="none"),
        onnx_sha256=file_sha256(path),
    )
    card = write_card(card, path)
    served = PhaseModel(create_backend(path, intra_op_threads=1), card)
    phases = served.predict(amp, mask)
    assert np.allclose(np.cos(phases), np.cos(np.arctan2(out[:, 1], out[:, 0])), atol=1e-3)


def test_hkl_round_trip_and_grid(tmp_path, samples):
    f, mask, _s = samples["Rutile"]
    f = f[0]
    hkl = grid_hkl()[mask & (np.arange(13**3).reshape(13, 13, 13) > 13**3 // 2)]
    hkl = np.concatenate([hkl, [[7, 0, 0], [0, -9, 1]]])  # two beyond the grid
    amp = np.abs(f[tuple((hkl[:-2] + N_MAX).T)])
    scale = 50.0 / amp.max()  # keep I within the F8.2 field
    intensity = np.concatenate([(scale * amp) ** 2, [5.0, -3.0]])
    path = write_hkl(tmp_path / "x.hkl", hkl, intensity, np.sqrt(np.abs(intensity)) + 1)
    refl = read_reflections(path)
    assert refl.source_format == "shelx-hklf4" and len(refl.hkl) == len(hkl)
    assert np.array_equal(refl.hkl, hkl)
    assert np.allclose(refl.amplitude[:-2] ** 2, np.round(intensity[:-2], 2), atol=1e-9)
    assert refl.negative_intensities == 1 and refl.amplitude[-1] == 0
    grid = place_on_grid(refl.hkl, refl.amplitude)
    assert grid.outside_grid == 2
    assert np.array_equal(grid.mask, mask)  # Friedel mates filled in
    assert np.allclose(grid.amplitudes, friedel_mate(grid.amplitudes))
    assert np.allclose(grid.amplitudes[mask], scale * np.abs(f)[mask], rtol=1e-3, atol=0.075)


def test_hkl_reader_refuses_bad_input(tmp_path):
    bad = tmp_path / "bad.hkl"
    bad.write_text("   1   0   0  100.00    1.00\n   1   x   0  100.00    1.00\n")
    with pytest.raises(ReflectionError, match=r"bad.hkl:2: k \(columns 5-8\) is 'x'"):
        read_hkl(bad)
    bad.write_text("   1   0   0  1o0.00    1.00\n")
    with pytest.raises(ReflectionError, match=r":1: I \(columns 13-20\) is '1o0.00'"):
        read_hkl(bad)
    bad.write_text("1 0 0 100 1\n")
    with pytest.raises(ReflectionError, match="too short for HKLF 4"):
        read_hkl(bad)
    bad.write_text("   0   0   0    0.00    0.00\n")
    with pytest.raises(ReflectionError, match="no reflections"):
        read_hkl(bad)
    csv = tmp_path / "f.csv"
    csv.write_text("h,k,l,I\n1,0,0,3\n")
    with pytest.raises(ReflectionError, match="missing f"):
        read_amplitude_csv(csv)
    csv.write_text("h,k,l,F\n1,0,0,-3\n")
    with pytest.raises(ReflectionError, match=r"f.csv:2: F is -3.0, an amplitude must be >= 0"):
        read_amplitude_csv(csv)
    other = tmp_path / "f.txt"
    other.write_text("1\n")
    with pytest.raises(ReflectionError, match="unknown reflection format"):
        read_reflections(other)


def test_analyze_phase_csv(tmp_path, samples):
    """End to end on a CSV: an (untrained) exported model, JSON result and picture."""
    from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
    from flakescan.inference.phase_retrieval import OUTPUT_NAME
    from flakescan.training.export import export_onnx, write_card
    from flakescan.training.phase_models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", 4)
    path = tmp_path / "models" / "phase_test.onnx"
    export_onnx(model, path, torch.zeros(2, 2, 13, 13, 13), output_name=OUTPUT_NAME)
    write_card(
        ModelCard(
            name="phase_test",
            task=PHASE_TASK,
            architecture="cnn",
            parameters=1,
            input=ModelInput(name="input", shape=[None, 2, 13, 13, 13], representation="t"),
            output=ModelOutput(name=OUTPUT_NAME, activation="none"),
            onnx_sha256=file_sha256(path),
        ),
        path,
    )
    f, mask, _s = samples["ZnO"]
    hkl = grid_hkl()[mask]
    rows = ["h,k,l,F", *(f"{h},{k},{l_},{abs(f[0][h + 6, k + 6, l_ + 6]):.4f}" for h, k, l_ in hkl)]
    data = tmp_path / "zno.csv"
    data.write_text("\n".join(rows) + "\n")
    out_png = tmp_path / "zno.png"
    result = analyze_phase(data, "phase_test", out_png, registry=[path.parent])
    json.dumps(result)
    assert result["reflections"]["on_grid"] == int(mask.sum())
    assert result["model"] == "phase_test" and out_png.stat().st_size > 1000
    assert len(result["phases"]) == int(mask.sum()) // 2
    assert result["density"]["peaks"][0]["frac"] == [0.0, 0.0, 0.0]  # highest peak at origin


@pytest.mark.filterwarnings("ignore:Constant folding")
def test_train_phase_command(tmp_path, capsys):
    """The command end to end on a tiny set: data set written, model + card + report."""
    from flakescan.inference.model_card import load_model_card
    from flakescan.training import train_phase

    data = tmp_path / "set.npz"
    common = ["--data", str(data), "--samples-per-structure", "2", "--held-out-samples", "1"]
    common += ["--val-fraction", "0.5", "--test-structures", "2", "--select-structures", "1"]
    common += ["--structures", "Rutile", "ZnO", "Copper", "Gold", "Diamond", "NaCl", "CaF2"]
    out = tmp_path / "models"
    args = [*common, "--models", "linear", "--epochs", "1", "--width", "linear=4"]
    assert train_phase.main([*args, "--out-dir", str(out)]) == 0
    card = load_model_card(out / "phase_linear.onnx")
    assert card.task == PHASE_TASK and card.training["structures"]["test"] >= 2
    assert set(card.metrics) >= {"val", "select", "test", "onnx_vs_torch_max_abs_diff"}
    assert (out / "report.md").is_file() and (out / "density_slices.png").is_file()
    # the same data path with other settings is refused, naming the problem
    assert train_phase.main([*args, "--sigma-a", "0.02", "--out-dir", str(out)]) == 2
    assert "made with other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_phase.main([*args, "--width", "unet=0", "--out-dir", str(out)])
    assert "--width 'unet=0'" in capsys.readouterr().err


def test_write_hkl_refuses_values_beyond_its_fields(tmp_path):
    with pytest.raises(ValueError, match="does not fit the HKLF 4 fields"):
        write_hkl(tmp_path / "x.hkl", [[1, 0, 0]], [123456.0], [1.0])


def test_analyze_phase_through_the_cli_with_the_shipped_unet(tmp_path, samples, capsys):
    """`flakescan analyze phase` on a SHELX file of a displaced crystal, with the shipped
    default model: a density map, its picture, the model's name and backend in the JSON."""
    from flakescan.daemon.cli import main

    f, mask, _s = samples["ZnO"]
    f = f[0]
    hkl = grid_hkl()[mask]
    amp = np.abs(f[tuple((hkl + N_MAX).T)])
    intensity = (50.0 / amp.max() * amp) ** 2
    path = write_hkl(tmp_path / "zno.hkl", hkl, intensity, np.sqrt(intensity) + 1)
    assert main(["analyze", "phase", str(path), "--plot-dir", str(tmp_path / "plots")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "phase" and doc["model"]["name"] == "phase_unet"
    (r,) = doc["results"]
    assert r["source"].endswith("zno.hkl")
    assert (tmp_path / "plots" / "zno.phase.png").stat().st_size > 10_000
    bad = tmp_path / "bad.hkl"
    bad.write_text("   1   0   0    abc     1.00\n")
    assert main(["analyze", "phase", str(bad)]) == 2
    assert "bad.hkl" in capsys.readouterr().err
