"""`flakescan evaluate-model`: metrics on hand-computed cases, figures, end-to-end reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flakescan.inference.axis_model import AXIS_TASK, REPRESENTATION
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
from flakescan.simulators.config import SimulatorConfig
from flakescan.simulators.datasets import ClassifierSetSpec, write_axis_set, write_classifier_set
from flakescan.training import evaluate_model, metrics, plots

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER = REPO / "inference" / "models" / "flake_classifier_cnn4.onnx"
SMALL = SimulatorConfig.model_validate(
    {"chip": {"width_um": 1200, "height_um": 1000, "thin_flakes_per_mm2": 20}}
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- metrics


def test_precision_recall_f1_at_a_threshold_hand_computed():
    y = np.array([[1], [1], [0], [0], [1]])
    s = np.array([[0.9], [0.4], [0.6], [0.1], [0.7]])
    r = metrics.per_class_at(y, s, 0.5, ["c"])["c"]
    # predicted positive: 0.9, 0.6, 0.7 -> tp 2 (0.9, 0.7), fp 1 (0.6), fn 1 (0.4)
    assert (r["tp"], r["fp"], r["fn"], r["support"]) == (2, 1, 1, 3)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    # A score equal to the threshold counts as positive.
    assert metrics.per_class_at(y, s, 0.4, ["c"])["c"]["tp"] == 3


def test_f1_is_the_harmonic_mean_not_the_seeds_clipped_formula():
    # 4 positives, 2 predicted, 1 right: P = 1/2, R = 1/4, so P + R < 1.
    y = np.array([1, 1, 1, 1, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.8])
    r = metrics.per_class_at(y, s, 0.5)["0"]
    p, rec = r["precision"], r["recall"]
    assert (p, rec) == (0.5, 0.25)
    assert r["f1"] == pytest.approx(1 / 3)  # 2PR/(P+R) = 0.25/0.75
    assert r["f1"] == pytest.approx(2 * r["tp"] / (2 * r["tp"] + r["fp"] + r["fn"]))
    seed_f1 = 2 * p * rec / max(p + rec, 1.0)  # the seed's clip(P+R, min=1)
    assert seed_f1 == pytest.approx(0.25) and abs(r["f1"] - seed_f1) > 0.08
    # Where P + R >= 1 the two agree; where P + R = 0, F1 is 0, not NaN.
    assert metrics.f1_from_pr(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert metrics.f1_from_pr(0.0, 0.0) == 0.0


def test_nothing_predicted_gives_zero_precision_and_f1_without_nan():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.zeros((3, 2))
    r = metrics.per_class_at(y, s, 0.5, ["a", "b"])
    assert r["a"] == {**r["a"], "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["b"]["support"] == 0 and r["b"]["f1"] == 0.0


def test_threshold_sweep_recall_falls_monotonically_and_best_threshold_separates():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(300, 3))
    s = np.clip(0.3 * y + rng.uniform(0, 0.7, size=y.shape), 0, 1)
    sweep = metrics.threshold_sweep(y, s)
    assert sweep["f1"].shape == (len(metrics.DEFAULT_THRESHOLDS), 3)
    assert np.all(np.diff(sweep["recall"], axis=0) <= 0)  # higher threshold, fewer positives
    assert np.all((sweep["f1"] >= 0) & (sweep["f1"] <= 1))
    # Separable scores: best F1 is 1 at a threshold between the classes.
    y2 = np.array([0, 0, 0, 1, 1])[:, None]
    s2 = np.array([0.05, 0.2, 0.3, 0.6, 0.9])[:, None]
    sw2 = metrics.threshold_sweep(y2, s2)
    best = metrics.best_thresholds(sw2)[0]
    assert 0.3 < best <= 0.6
    assert metrics.per_class_at(y2, s2, best)["0"]["f1"] == 1.0
    assert metrics.per_class_at(y2, s2, 0.7)["0"]["f1"] < 1.0


def test_angle_errors_are_circular_across_the_wrap():
    pred = [29.5, 0.2, 14.0, None, 10.0]
    true = [0.5, 29.9, 29.0, 3.0, 10.0]
    e = metrics.angle_errors(pred, true, 30.0)
    assert e[:3] == pytest.approx([-1.0, 0.3, -15.0])  # 14 vs 29: half a period, either way
    assert np.isnan(e[3]) and e[4] == 0.0
    s = metrics.angle_summary(e)
    assert (s["n"], s["answered"], s["failed"]) == (5, 4, 1)
    assert s["mae"] == pytest.approx((1.0 + 0.3 + 15.0 + 0.0) / 4)
    assert s["max"] == pytest.approx(15.0)
    assert s["rms"] == pytest.approx(np.sqrt((1 + 0.09 + 225) / 4))
    assert s["median"] == pytest.approx(0.65)
    assert s["within_1"] == pytest.approx(3 / 4) and s["within_2"] == pytest.approx(3 / 4)
    # Mod 60 the same pair is 29 deg apart, not 1.
    assert metrics.angle_errors([29.5], [0.5], 60.0)[0] == pytest.approx(29.0)


# ----------------------------------------------------------------------------- plots


def test_training_curves_from_whatever_epoch_keys_a_card_has(tmp_path):
    card = json.loads(CLASSIFIER.with_suffix(".json").read_text())
    series = plots.epoch_series(card["training"])
    assert list(series) == ["loss_per_epoch"]  # pos_weight is a list but no history
    png = plots.plot_training_curves(card["training"], tmp_path / "c.png")
    assert png is not None and png.read_bytes()[:8] == PNG_MAGIC
    axis_training = {"train_mae_per_epoch": [5, 3, 2], "val_mae_per_epoch": [6, 4, 3.5]}
    axis_training["history"] = {"train_loss_per_epoch": [1.0, 0.5, 0.4]}
    assert set(plots.epoch_series(axis_training)) == {
        "train_mae_per_epoch",
        "val_mae_per_epoch",
        "history.train_loss_per_epoch",
    }
    assert plots.plot_training_curves(axis_training, tmp_path / "a.png") is not None
    assert (
        plots.plot_training_curves({"epochs": 30, "pos_weight": [1, 2]}, tmp_path / "n.png") is None
    )
    assert not (tmp_path / "n.png").exists()


# ----------------------------------------------------------------------------- inputs


def _hexagon_image(angle_deg: float, size: int = 160) -> np.ndarray:
    """A bright wafer with a darker hexagonal crystal whose edges lie at angle + 30 k."""
    img = Image.new("RGB", (size, size), (200, 180, 120))
    c, r = size / 2, size * 0.3
    pts = []
    for k in range(6):
        # vertices at angle + 30 + 60 k: the edges between them run at angle + 60 k + 120...
        a = np.deg2rad(angle_deg + 30 + 60 * k)
        pts.append((c + r * np.cos(a), c + r * np.sin(a)))
    ImageDraw.Draw(img).polygon(pts, fill=(180, 165, 120))
    return np.asarray(img)


@pytest.mark.parametrize("angle", [3.0, 17.5, 28.0])
def test_edge_baseline_finds_a_clean_hexagons_axis(angle):
    found = evaluate_model.axis_baseline(_hexagon_image(angle), 30.0)
    assert found is not None
    assert abs(metrics.angle_errors([found], [angle], 30.0)[0]) < 1.0


def test_classifier_input_is_contrast_against_the_wafer_at_the_cards_size():
    img = np.full((175, 175, 3), 200.0, np.float32)
    img[70:105, 70:105] = 200.0 * (1 - np.array([0.1, 0.08, 0.0]))  # a 10 % R-contrast flake
    x = evaluate_model.classifier_input(img, 0.57, 100.0, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert x[:, 32, 32] == pytest.approx([0.1, 0.08, 0.0], abs=0.005)
    assert np.abs(x[:, 2, 2]).max() < 0.005  # bare wafer: no contrast


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def classifier_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clsset")
    spec = ClassifierSetSpec(positives_per_chip=8, negatives_per_chip=5, background_per_chip=3)
    write_classifier_set(out, [20001], SMALL, spec, vary=True)
    return out


def _tiny_axis_model(path: Path, size: int = 32) -> Path:
    torch = pytest.importorskip("torch")
    from flakescan.training.export import export_onnx, write_card

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    versions = export_onnx(net, path, torch.zeros(1, 3, size, size), output_name="angle_vec")
    card = ModelCard(
        name="tiny_axis",
        task=AXIS_TASK,
        architecture="conv-relu-pool-linear (test)",
        parameters=sum(p.numel() for p in net.parameters()),
        input=ModelInput(name="input", shape=[None, 3, size, size], representation=REPRESENTATION),
        output=ModelOutput(
            name="angle_vec", activation="none", modulus_deg=30.0, encoding="cos_sin_k_theta"
        ),
        training={"train_mae_per_epoch": [7.0, 5.0, 4.0], "val_mae_per_epoch": [7.5, 6.0, 5.5]},
        onnx_sha256=file_sha256(path),
        metrics=versions,
    )
    write_card(card, path)
    return path


@pytest.fixture(scope="module")
def axis_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("axisset")
    counts = write_axis_set(out, [], SMALL, test_seeds=[20002], size_px=48, min_area_um2=150)
    assert counts["test_images"] >= 2
    return out


def test_classifier_end_to_end_report_metrics_and_figures(classifier_set, tmp_path):
    out = tmp_path / "report"
    rc = evaluate_model.main(
        [
            "--classifier",
            str(CLASSIFIER),
            "--classifier-data",
            str(classifier_set),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads((out / "metrics.json").read_text())
    c = result["classifier"]
    labels = np.array(
        [
            list(map(int, p.read_text().split()))
            for p in sorted((classifier_set / "labels").iterdir())
        ]
    )
    assert c["data"]["images"] == len(labels) == 16
    assert c["data"]["pixel_size_source"] == "dataset.json"
    for k, name in enumerate(c["classes"]):
        at, best = c["at_threshold"][name], c["at_best_threshold"][name]
        assert at["support"] == labels[:, k].sum()
        assert at["tp"] + at["fn"] == at["support"]
        assert best["f1"] >= at["f1"]  # the sweep contains the card's threshold
        assert at["f1"] == pytest.approx(float(metrics.f1_from_pr(at["precision"], at["recall"])))
    assert c["model"]["onnx_sha256"] == file_sha256(CLASSIFIER)
    # The served classifier sees flakes: on this set it beats chance on "any".
    assert c["at_best_threshold"]["any"]["f1"] > 0.6
    report = (out / "report.md").read_text()
    assert "flake_classifier_cnn4" in report and c["model"]["onnx_sha256"] in report
    assert "| class1_R_le_12 |" in report and "| any |" in report
    for name in ("eval-f1-vs-threshold.png", "eval-training-classifier.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging removed


def test_axis_end_to_end_model_beside_baseline(axis_set, tmp_path):
    model = _tiny_axis_model(tmp_path / "tiny_axis.onnx")
    out = tmp_path / "axis-report"
    rc = evaluate_model.main(
        ["--axis", str(model), "--axis-test", str(axis_set / "test"), "--out", str(out)]
    )
    assert rc == 0
    a = json.loads((out / "metrics.json").read_text())["axis"]
    n = len(list((axis_set / "test" / "images").iterdir()))
    assert len(a["per_image"]) == a["model"]["errors"]["n"] == a["baseline"]["errors"]["n"] == n
    m = a["model"]["errors"]
    assert 0 <= m["median"] <= m["max"] <= 15 and m["answered"] == n
    for row in a["per_image"]:
        err = abs(metrics.angle_errors([row["model"]], [row["true"]], 30.0)[0])
        assert err <= m["max"] + 2e-3  # per-image angles are rounded to 0.001 deg
    report = (out / "report.md").read_text()
    assert "| model `tiny_axis` |" in report and "| edge-histogram baseline |" in report
    for name in ("eval-axis-errors.png", "eval-training-axis.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        evaluate_model.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_exit_2_naming_argument_and_value(classifier_set, tmp_path, capsys):
    out = tmp_path / "never"
    missing = tmp_path / "no-such-folder"
    err = _fails(
        ["--classifier", str(CLASSIFIER), "--classifier-data", str(missing), "--out", str(out)],
        capsys,
    )
    assert "--classifier-data" in err and str(missing) in err
    bare = tmp_path / "bare.onnx"
    shutil.copy(CLASSIFIER, bare)  # no card beside it
    err = _fails(
        ["--classifier", str(bare), "--classifier-data", str(classifier_set), "--out", str(out)],
        capsys,
    )
    assert "--classifier" in err and "card" in err and str(bare) in err
    err = _fails(
        ["--axis", str(CLASSIFIER), "--axis-test", str(classifier_set), "--out", str(out)], capsys
    )
    assert "--axis" in err and "'flake-classifier'" in err
    assert "nothing to evaluate" in _fails(["--out", str(out)], capsys)
    assert not out.exists()
