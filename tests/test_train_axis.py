"""AxisID training: file conventions, label transforms under augmentation, loss, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from flakescan.inference.axis import estimate_axis
from flakescan.inference.axis_model import (
    AxisModel,
    axis_input,
    circular_difference,
    dihedral_angle,
    dihedral_view,
    encode_angle,
)
from flakescan.training import test_axis, train_axis
from flakescan.training.axis_data import (
    AxisDataError,
    load_images,
    read_angles_csv,
    read_test_set,
    split_by_basename,
)
from flakescan.training.axis_models import ContrastNorm, PhaseFeatures, build_model
from flakescan.training.train_axis import (
    augment_batch,
    cosine_loss,
    fade_contrast,
    pixel_noise,
    rotate_crop,
)


def _edge_image(theta_deg: float, px: int = 96) -> np.ndarray:
    """A straight edge through the centre along theta (from +x=columns towards +y=rows):
    bright on one side, dark wafer on the other, 8-bit RGB."""
    rows, cols = np.mgrid[0:px, 0:px] + 0.5
    t = np.radians(theta_deg)
    side = -(cols - px / 2) * np.sin(t) + (rows - px / 2) * np.cos(t)
    level = 120 + 80 * np.clip(side / 3.0, -0.5, 0.5)  # ~3 px soft edge
    return np.repeat(level[..., None], 3, axis=2).round().astype(np.uint8)


def _edge_angle_180(image: np.ndarray) -> float:
    """Edge direction mod 180 from the structure tensor (doubled-angle mean of gradients)."""
    g = image[..., 0].astype(np.float64)
    # derivative-of-Gaussian gradients: isotropic, no staircase bias on the pixel grid
    gx = ndimage.gaussian_filter(g, 2.0, order=(0, 1))
    gy = ndimage.gaussian_filter(g, 2.0, order=(1, 0))
    m = 8  # away from borders
    gx, gy = gx[m:-m, m:-m], gy[m:-m, m:-m]
    normal = 0.5 * np.degrees(np.arctan2(2 * np.sum(gx * gy), np.sum(gx * gx - gy * gy)))
    return float((normal + 90.0) % 180.0)


def _write_train_set(tmp_path, rows, make_images=True, suffix=".tif"):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    lines = []
    for base, angle, count in rows:
        lines.append(f"{base},{angle},{count}")
        if make_images:
            for n in range(int(count)):
                Image.fromarray(_edge_image(float(angle), 32)).save(img_dir / f"{base}-{n}{suffix}")
    (tmp_path / "angles.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "angles.csv", img_dir


# --- file conventions ---------------------------------------------------------------------


def test_angles_csv_lists_each_crystal_with_its_count_of_images(tmp_path):
    angles, img_dir = _write_train_set(tmp_path, [("a", "12.5", 2), ("b", "31", 3)])
    crystals = read_angles_csv(angles, img_dir)
    assert [c.basename for c in crystals] == ["a", "b"]
    assert crystals[0].angle_deg == 12.5 and crystals[1].angle_deg == pytest.approx(1.0)
    assert [p.name for p in crystals[1].paths] == ["b-0.tif", "b-1.tif", "b-2.tif"]
    x = load_images(crystals[1].paths, 16)
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8


def test_jpg_images_are_found_too(tmp_path):
    angles, img_dir = _write_train_set(tmp_path, [("j", "3", 1)], suffix=".jpg")
    assert read_angles_csv(angles, img_dir)[0].paths[0].name == "j-0.jpg"


def test_a_missing_image_is_named_with_file_and_line(tmp_path):
    angles, img_dir = _write_train_set(tmp_path, [("a", "1", 2), ("b", "2", 2)])
    (img_dir / "b-1.tif").unlink()
    with pytest.raises(AxisDataError, match=r"angles\.csv:2: image b-1\.tif\|jpg not found"):
        read_angles_csv(angles, img_dir)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a,abc,1", r"angles\.csv:1: axis angle 'abc' is not a number"),
        ("a,nan,1", r"angles\.csv:1: axis angle 'nan' is not finite"),
        ("a,3", r"angles\.csv:1: expected 'basename,axis_angle,count'"),
        ("a,3,0", r"angles\.csv:1: count must be >= 1"),
    ],
)
def test_bad_rows_are_refused_naming_the_line(tmp_path, row, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "angles.csv").write_text(row + "\n")
    with pytest.raises(AxisDataError, match=message):
        read_angles_csv(tmp_path / "angles.csv", tmp_path / "images")


def test_test_set_takes_the_first_field_of_the_first_line(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    for name, text in (("x", "7.25\nedges...\n"), ("y", "44.0,1,2,3,4\n")):
        Image.fromarray(_edge_image(0, 16)).save(tmp_path / "img" / f"{name}.tif")
        (tmp_path / "ann" / f"{name}-edges.csv").write_text(text)
    tests = read_test_set(tmp_path / "img", tmp_path / "ann")
    assert [(t.name, t.angle_deg) for t in tests] == [("x", 7.25), ("y", pytest.approx(14.0))]
    (tmp_path / "ann" / "y-edges.csv").write_text("oops\n")
    with pytest.raises(AxisDataError, match=r"y-edges\.csv:1: axis angle 'oops'"):
        read_test_set(tmp_path / "img", tmp_path / "ann")
    (tmp_path / "ann" / "y-edges.csv").unlink()
    with pytest.raises(AxisDataError, match=r"y-edges\.csv for image y\.tif not found"):
        read_test_set(tmp_path / "img", tmp_path / "ann")


def test_split_keeps_all_copies_of_a_crystal_on_one_side(tmp_path):
    rows = [(f"c{i}", str(i), 2) for i in range(10)]
    angles, img_dir = _write_train_set(tmp_path, rows, make_images=True)
    train, val = split_by_basename(read_angles_csv(angles, img_dir), 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not {c.basename for c in train} & {c.basename for c in val}


# --- augmentation moves the label as it moves the image ------------------------------------


def test_the_edge_measure_reads_the_angle_convention():
    for theta in (0.0, 20.0, 75.0, 130.0):
        assert _edge_angle_180(_edge_image(theta)) == pytest.approx(theta, abs=0.5)


@pytest.mark.parametrize("phi", [-17.0, 11.0])
def test_small_rotation_moves_the_axis_to_theta_minus_phi(phi):
    theta = 20.0
    out = rotate_crop(_edge_image(theta), phi)
    assert out.shape == (96, 96, 3)
    measured = _edge_angle_180(out)
    assert circular_difference(measured, theta - phi, 180) == pytest.approx(0, abs=0.5)
    # the other sign would be wrong by 2 phi: the measure can tell them apart
    assert abs(circular_difference(measured, theta + phi, 180)) > 10
    # no undefined (black) corners come in
    assert out.min() >= 70


def test_augment_batch_labels_follow_the_images_mod_180():
    rng = np.random.default_rng(0)
    thetas = np.array([5.0, 20.0, 47.0, 101.0, 152.0, 170.0] * 3)
    images = np.stack([_edge_image(t) for t in thetas])
    out, labels = augment_batch(images, thetas, rng, modulus=180.0, rotate_deg=20.0)
    measured = np.array([_edge_angle_180(im) for im in out])
    assert np.abs(circular_difference(measured, labels, 180)).max() < 0.6
    assert np.abs(circular_difference(labels, thetas, 180)).max() > 5  # it did move them


def test_fade_scales_the_contrast_and_keeps_the_camera_noise():
    """A thick crystal faded to 10 %: its contrast is a tenth, the wafer noise unchanged,
    the edge still where it was."""
    rng = np.random.default_rng(1)
    img = np.full((96, 96, 3), 150.0) * (1 + rng.normal(0, 0.02, (96, 96, 3)))
    img[30:70, 30:70] *= 0.5  # 50 % contrast
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out = fade_contrast(img, 0.1, np.random.default_rng(2))
    inside = 1 - np.median(out[35:65, 35:65], axis=(0, 1)) / np.median(out, axis=(0, 1))
    assert inside == pytest.approx([0.05] * 3, abs=0.01)
    assert pixel_noise(out) == pytest.approx(pixel_noise(img), rel=0.15)
    wafer = np.clip(np.rint(150 + rng.normal(0, 3.0, (96, 96, 3))), 0, 255).astype(np.uint8)
    assert pixel_noise(wafer) == pytest.approx(3.0, rel=0.1)
    np.testing.assert_array_equal(fade_contrast(img, 1.0, rng), img)
    with pytest.raises(ValueError, match="fade scale"):
        fade_contrast(img, 0.0, rng)
    # In a batch: every crop faded (fade=1), labels moved only by the geometry.
    thetas = np.array([5.0, 17.0, 29.0])
    images = np.stack([_edge_image(t) for t in thetas])
    faded, labels = augment_batch(images, thetas, np.random.default_rng(0), 30.0, fade=1.0)
    plain, same = augment_batch(images, thetas, np.random.default_rng(0), 30.0)
    np.testing.assert_allclose(labels[0], same[0])
    assert all(
        np.ptp(f.astype(float)) < np.ptp(q.astype(float)) for f, q in zip(faded, plain, strict=True)
    )


def test_dihedral_views_agree_with_the_edge_histogram_estimator_mod_30():
    theta = 17.0
    img = _edge_image(theta, 64)[..., 0].astype(np.float32)
    region = img > 120
    for k in range(4):
        for flip in (False, True):
            view = dihedral_view(img, k, flip, axes=(0, 1))
            est = estimate_axis(view, dihedral_view(region, k, flip, axes=(0, 1)))
            want = dihedral_angle(theta, k, flip, 30.0)
            assert circular_difference(est.angle_deg, want, 30) == pytest.approx(0, abs=0.5)


@pytest.mark.parametrize("theta", [3.0, 17.0, 28.5])
def test_phase_features_put_an_edge_at_its_axis_on_the_12_theta_circle(theta):
    x = torch.from_numpy(axis_input(_edge_image(theta + 60.0)))  # 60 = 0 mod 30
    feats = PhaseFeatures(30.0)(x)[0]
    assert feats.shape == (6, 96, 96)
    got = np.degrees(np.arctan2(float(feats[4].sum()), float(feats[3].sum()))) / 12.0
    assert circular_difference(got, theta, 30) == pytest.approx(0, abs=0.5)
    with pytest.raises(ValueError, match="180/modulus"):
        PhaseFeatures(40.0)


def _faint_hexagon(theta_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A small monolayer-like crystal as an AxisID crop of it looks: a hexagon (radius 16
    native px) at 6 % contrast, edges along theta + k 60 deg, area-sampled, blurred by the
    optics (sigma 1.7 px), 1.2 % pixel noise, then box-resized from 56 to 96 px (small
    crystals are cut by windows smaller than the network input); 8-bit RGB."""
    n, sub = 56, 4
    rows, cols = np.mgrid[0 : n * sub, 0 : n * sub] / sub + 0.5 / sub
    inside = np.full(rows.shape, np.inf)
    for k in range(6):
        t = np.radians(theta_deg + 60 * k)
        inside = np.minimum(inside, -(cols - n / 2) * np.sin(t) + (rows - n / 2) * np.cos(t) + 16)
    cover = (inside > 0).reshape(n, sub, n, sub).mean(axis=(1, 3))
    level = 1.0 - 0.06 * ndimage.gaussian_filter(cover, 1.7)
    img = 150 * level[..., None] * (1 + rng.normal(0, 0.012, (n, n, 3)))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).resize((96, 96), Image.Resampling.BOX))


def test_wider_phase_scale_reads_a_faint_small_flake_better():
    """What the front-end alone knows (its weighted mean phase): on faint small crystals the
    1-px gradients are noise-dominated and the 2-px ones are not."""
    rng = np.random.default_rng(0)
    front = PhaseFeatures(30.0, (1.0, 2.0))
    errors: dict[float, list[float]] = {1.0: [], 2.0: []}
    for theta in np.linspace(0.5, 29.5, 12):
        feats = front(torch.from_numpy(axis_input(_faint_hexagon(theta, rng))))[0]
        assert feats.shape == (9, 96, 96)
        for j, sigma in enumerate((1.0, 2.0)):
            w = feats[5 + 3 * j]
            re, im = float((feats[3 + 3 * j] * w).sum()), float((feats[4 + 3 * j] * w).sum())
            got = np.degrees(np.arctan2(im, re)) / 12.0
            errors[sigma].append(abs(float(circular_difference(got, theta, 30))))
    assert np.mean(errors[2.0]) < 0.3 * np.mean(errors[1.0]), errors
    assert np.mean(errors[2.0]) < 1.5, errors
    with pytest.raises(ValueError, match="phase sigmas"):
        PhaseFeatures(30.0, ())


def test_contrast_norm_brings_a_faint_and_a_strong_flake_to_one_scale():
    faint = torch.from_numpy(axis_input(_edge_image(12.0)))
    strong = 6.0 * faint  # the same outline, six times the contrast
    norm = ContrastNorm()
    assert torch.allclose(norm(faint), norm(strong), atol=1e-5)
    rms = float(torch.sqrt((norm(faint) ** 2).mean()))
    assert rms == pytest.approx(1.0, rel=1e-4)
    # A blank wafer (noise far below the floor) is not blown up into a pattern.
    blank = torch.full_like(faint, 1e-4)
    assert float(norm(blank).abs().max()) == pytest.approx(1e-2, rel=1e-3)
    torch.manual_seed(0)
    model = build_model("1", phase=True, contrast_norm=True).eval()
    with torch.no_grad():
        assert torch.allclose(model(faint), model(strong), atol=1e-4)


# --- loss -----------------------------------------------------------------------------------


def _vec(*angles: float) -> torch.Tensor:
    return torch.from_numpy(encode_angle(np.array(angles), 30))


def test_cosine_loss_is_zero_for_equal_angles_and_wraps_at_the_modulus():
    a = _vec(0.1, 12.0, 29.9)
    assert float(cosine_loss(a, a)) == pytest.approx(0, abs=1e-6)
    assert float(cosine_loss(3.5 * a, a)) == pytest.approx(0, abs=1e-6)  # scale-free
    across = float(cosine_loss(_vec(29.9), _vec(0.1)))  # 0.2 deg apart across the wrap
    inside = float(cosine_loss(_vec(10.2), _vec(10.0)))
    assert across == pytest.approx(inside, rel=1e-3) and 0 < across < 1e-3
    assert float(cosine_loss(_vec(30.0), _vec(0.0))) == pytest.approx(0, abs=1e-6)
    assert float(cosine_loss(_vec(15.0), _vec(0.0))) == pytest.approx(2.0, abs=1e-6)


# --- end to end -----------------------------------------------------------------------------


def test_tiny_training_run_exports_a_model_the_daemon_and_test_axis_read(tmp_path, capsys):
    out = tmp_path / "m" / "axis.onnx"
    argv = [
        "--simulate-chips", "1", "--test-chips", "1", "--chip-size-um", "1200", "1000",
        "--crops-per-crystal", "2", "--sim-px", "64", "--data-dir", str(tmp_path / "set"),
        "--model", "1", "--phase-features", "--input-px", "64", "--epochs", "2",
        "--batch-size", "16",
        "--scheduler", "step", "--scheduler-params", "step_size=1", "gamma=0.5",
        "--seed", "3", "--out", str(out),
    ]  # fmt: skip
    assert train_axis.main(argv) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["task"] == "axis-regressor" and card["output"]["modulus_deg"] == 30
    assert card["output"]["encoding"] == "cos_sin_k_theta" and card["output"]["name"] == "angle_vec"
    assert card["input"]["shape"] == [None, 3, 64, 64]
    assert "PhaseFeatures" in card["architecture"]
    assert card["training"]["command"].startswith("flakescan train axis --simulate-chips 1")
    assert (
        len(card["training"]["history"]) == 2
        and len(card["training"]["data"]["dataset_sha256"]) == 64
    )
    assert card["metrics"]["test"]["n"] == card["metrics"]["test_images"] > 0
    manifest = card["training"]["data"]["set_manifest"]
    assert manifest["label"] == "edges" and manifest["terraces"] is True
    assert "mae_deg" in card["metrics"]["test_edge_baseline"]

    model = AxisModel.from_path(out)
    crops = load_images(sorted((tmp_path / "set" / "test" / "images").glob("*.tif"))[:3], 64)
    preds = model.predict(crops)
    assert len(preds) == 3 and all(0 <= p.angle_deg < 30 and 0 <= p.confidence <= 1 for p in preds)

    capsys.readouterr()
    csv_path = tmp_path / "errors.csv"
    set_dir = tmp_path / "set" / "test"
    rc = test_axis.main([
        "--image-dir", str(set_dir / "images"), "--annotation-dir", str(set_dir / "annotations"),
        "--model", str(out), "--csv", str(csv_path), "--json",
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == card["metrics"]["test_images"]
    assert summary["model"] == card["metrics"]["test"]  # as served, same numbers
    assert len(csv_path.read_text().splitlines()) == summary["n_images"] + 1


def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys):
    base = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "m.onnx")]
    for extra, needle in (
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--scheduler", "step", "--scheduler-params", "max_lr=1"], "--scheduler-params"),
        (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
        (["--model", "7"], "--model"),
    ):
        with pytest.raises(SystemExit) as exc:
            train_axis.main(base + extra)
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err
    # data that break the conventions: exit 2, file and line named, nothing written
    angles, img_dir = _write_train_set(tmp_path, [("a", "1", 2)])
    (img_dir / "a-1.tif").unlink()
    rc = train_axis.main(
        [
            "--image-dir",
            str(img_dir),
            "--angles-path",
            str(angles),
            "--out",
            str(tmp_path / "m.onnx"),
        ]
    )
    assert rc == 2 and "angles.csv:1: image a-1.tif|jpg not found" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit) as exc:
        test_axis.main(
            ["--image-dir", str(img_dir), "--annotation-dir", str(img_dir),
             "--model", str(tmp_path / "none.onnx")]
        )  # fmt: skip
    assert exc.value.code == 2 and "none.onnx" in capsys.readouterr().err
