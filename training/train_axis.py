"""Train an AxisID crystal-axis regressor and export it as ONNX with its model card.

The seed's `train.py`, rebuilt: AdamW (lr 3e-4, weight decay 0.05, betas 0.9/0.99) on the
cosine loss of the unit-vector target (cos k theta, sin k theta), k = 360 / modulus; a
random 20 % of the crystals (whole crystals, so augmented copies of one never straddle the
split) held out for validation; random quarter turns and flips during training with the
label moved by `dihedral_angle`, optionally small arbitrary rotations (centre crop, so no
undefined corners come in) and fading (`fade_contrast`: a crystal's contrast scaled down to
that of a thin flake, its pixel noise kept -- an axis does not depend on thickness, and
faint small flakes are where the CNN was weakest). Errors are circular differences modulo
the modulus.

The network input is `axis_input` (the serving transform); the exported ONNX file is checked
against PyTorch in ONNX Runtime, then evaluated as served (`AxisModel`, 8 views) on the
validation crystals and, if given, a test set, next to the edge-histogram baseline.

    flakescan train axis --simulate-chips 16 --test-chips 3 --crops-per-crystal 2 \
        --sim-px 128 --data-dir /tmp/axis-set --model 3 --phase-features --input-px 128 \
        --epochs 24 --scheduler onecycle --scheduler-params max_lr=3e-3 pct_start=0.2 \
        --rotate-deg 10 --threads 2 --seed 1 --out inference/models/axis_model3.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from flakescan.inference.axis_model import (
    AXIS_TASK,
    REPRESENTATION,
    AxisModel,
    axis_input,
    circular_difference,
    decode_angle,
    dihedral_angle,
    dihedral_view,
    encode_angle,
)
from flakescan.inference.backends import create_backend
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256

from .axis_data import (
    AxisDataError,
    Crystal,
    load_images,
    read_angles_csv,
    read_test_set,
    split_by_basename,
)
from .axis_models import MODEL_CHOICES, PHASE_SIGMA_RANGE_PX, build_model, describe
from .cli_checks import require_at_least
from .export import dataset_sha256, export_onnx, verify_onnx, write_card
from .test_axis import error_stats, evaluate_test_set

__all__ = [
    "TrainConfig",
    "augment_batch",
    "cosine_loss",
    "fade_contrast",
    "main",
    "rotate_crop",
    "train",
]

OUTPUT_NAME = "angle_vec"
_SCHEDULER_KEYS = {
    "none": set(),
    "step": {"step_size", "gamma"},
    "onecycle": {"max_lr", "pct_start"},
}


@dataclass
class TrainConfig:
    model: str = "3"
    modulus: float = 30.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    scheduler: str = "none"
    scheduler_params: dict = field(default_factory=dict)
    rotate_deg: float = 0.0
    fade: float = 0.0  # share of training crops faded by `fade_contrast`
    fade_min: float = 0.08  # lowest contrast scale of a faded crop (log-uniform up to 1)
    phase_features: bool = False
    phase_sigmas: tuple[float, ...] = (1.0,)  # gradient scales of the phase front-end, px
    contrast_norm: bool = False
    seed: int = 0
    threads: int = 1


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(angle between the normalised prediction and the unit target)."""
    return (1.0 - (F.normalize(pred, dim=1, eps=1e-8) * target).sum(dim=1)).mean()


def rotate_crop(image: np.ndarray, phi_deg: float, out_px: int | None = None) -> np.ndarray:
    """Rotate (H, W, 3) uint8 by `phi_deg` counter-clockwise as displayed (rows down, as
    numpy's rot90 and `dihedral_view`), keep the largest centred square that has no
    undefined corners, resized to `out_px` (default: the input size). One bilinear resample.

    An axis at theta lies at theta - phi in the result (`dihedral_angle`'s convention: a
    quarter turn maps theta to theta - 90).
    """
    h, w = image.shape[:2]
    out_px = out_px or w
    c, s = math.cos(math.radians(phi_deg)), math.sin(math.radians(phi_deg))
    scale = (min(h, w) / (abs(c) + abs(s))) / out_px  # input px per output px
    cx, cy, o = w / 2.0, h / 2.0, out_px / 2.0
    # input = centre + scale * R^T (output - o); R maps input to output offsets.
    a, b = scale * c, -scale * s
    d, e = scale * s, scale * c
    coeffs = (a, b, cx - a * o - b * o, d, e, cy - d * o - e * o)
    pil = Image.fromarray(np.ascontiguousarray(image))
    out = pil.transform((out_px, out_px), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    return np.asarray(out)


def pixel_noise(image: np.ndarray) -> float:
    """Per-pixel noise of an 8-bit crop (mostly wafer): the robust spread of neighbouring
    pixel differences in the green channel, / sqrt 2."""
    d = np.diff(np.asarray(image[..., 1], np.float32), axis=1)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def fade_contrast(image: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """The crop with every contrast against the wafer (its per-channel median) multiplied by
    `scale` in (0, 1], as a thinner crystal of the same outline would show, and fresh noise
    added so the pixel noise stays what the camera gave: the faint, noisy look of a
    monolayer. (H, W, 3) uint8 -> uint8."""
    if not 0 < scale <= 1:
        raise ValueError(f"fade scale must be in (0, 1], got {scale}")
    img = np.asarray(image, np.float32)
    wafer = np.median(img.reshape(-1, 3), axis=0)
    out = wafer + scale * (img - wafer)
    sigma = pixel_noise(image) * math.sqrt(1.0 - scale * scale)
    if sigma > 0:
        out += rng.normal(0.0, sigma, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment_batch(
    images: np.ndarray,
    angles: np.ndarray,
    rng: np.random.Generator,
    modulus: float,
    rotate_deg: float = 0.0,
    fade: float = 0.0,
    fade_min: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Random small rotation (if `rotate_deg`), one of the 8 square symmetries, with each
    label moved as its image is; then, for a `fade` share of the crops, `fade_contrast` by a
    scale log-uniform in [fade_min, 1] (labels unchanged)."""
    out = np.empty_like(images)
    new = np.empty(len(images), dtype=np.float64)
    for i, (img, theta) in enumerate(zip(images, angles, strict=True)):
        if rotate_deg > 0:
            phi = float(rng.uniform(-rotate_deg, rotate_deg))
            img = rotate_crop(img, phi)
            theta = theta - phi
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        out[i] = dihedral_view(img, k, flip, axes=(0, 1))
        new[i] = dihedral_angle(theta, k, flip, modulus)
        if fade > 0 and rng.random() < fade:
            scale = math.exp(rng.uniform(math.log(fade_min), 0.0))
            out[i] = fade_contrast(out[i], scale, rng)
    return out, np.mod(new, modulus)


def _predict_angles(model: nn.Module, images: np.ndarray, modulus: float, batch: int = 128):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(axis_input(images[i : i + batch]))
            out.append(model(x).numpy())
    return decode_angle(np.concatenate(out), modulus)[0]


def _make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    p = cfg.scheduler_params
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            opt, step_size=int(p.get("step_size", 10)), gamma=float(p.get("gamma", 0.5))
        ), "epoch"
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=float(p.get("max_lr", 10 * cfg.lr)),
            epochs=cfg.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=float(p.get("pct_start", 0.3)),
        ), "batch"
    return None, None


def train(
    cfg: TrainConfig,
    train_images: np.ndarray,
    train_angles: np.ndarray,
    val_images: np.ndarray,
    val_angles: np.ndarray,
    log=print,
) -> tuple[nn.Module, list[dict]]:
    """Train; per-epoch history of loss and circular errors (train: the augmented batches
    as seen in training mode; val: the plain validation crops)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(
        cfg.model, cfg.phase_features, cfg.modulus, cfg.contrast_norm, cfg.phase_sigmas
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
    )
    steps = max(1, math.ceil(len(train_images) / cfg.batch_size))
    sched, when = _make_scheduler(opt, cfg, steps)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(train_images))
        losses, errors = [], []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            imgs, angs = augment_batch(
                train_images[idx],
                train_angles[idx],
                rng,
                cfg.modulus,
                cfg.rotate_deg,
                cfg.fade,
                cfg.fade_min,
            )
            x = torch.from_numpy(axis_input(imgs))
            target = torch.from_numpy(encode_angle(angs, cfg.modulus))
            pred = model(x)
            loss = cosine_loss(pred, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if when == "batch":
                sched.step()
            losses.append(float(loss.detach()) * len(idx))
            got = decode_angle(pred.detach().numpy(), cfg.modulus)[0]
            errors.append(circular_difference(got, angs, cfg.modulus))
        if when == "epoch":
            sched.step()
        row = {
            "epoch": epoch,
            "loss": round(sum(losses) / max(1, len(order)), 5),
            "lr": float(opt.param_groups[0]["lr"]),
            "train": error_stats(np.concatenate(errors) if errors else []),
        }
        if len(val_images):
            got = _predict_angles(model, val_images, cfg.modulus)
            row["val"] = error_stats(circular_difference(got, val_angles, cfg.modulus))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(row)
        v = row.get("val", {})
        log(
            f"epoch {epoch:3d} loss {row['loss']:.4f} train MAE {row['train']['mae_deg']} "
            f"val MAE {v.get('mae_deg')} RMS {v.get('rms_deg')} ({row['seconds']} s)"
        )
    return model, history


def _log(*args) -> None:
    print(*args, flush=True)


def _parse_scheduler_params(p: argparse.ArgumentParser, scheduler: str, items: list[str]) -> dict:
    out = {}
    allowed = _SCHEDULER_KEYS[scheduler]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            p.error(
                f"--scheduler-params {item!r}: scheduler {scheduler!r} takes "
                f"{', '.join(sorted(allowed)) or 'no parameters'} as key=value"
            )
        try:
            out[key] = int(value) if key == "step_size" else float(value)
        except ValueError:
            p.error(f"--scheduler-params {item!r}: {value!r} is not a number")
        if out[key] <= 0:
            p.error(f"--scheduler-params {item!r}: must be > 0")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan train axis",
        description="Train an AxisID crystal-axis regressor; export ONNX + model card.",
        fromfile_prefix_chars="@",
    )
    d = p.add_argument_group("data")
    d.add_argument("--image-dir", type=Path, help="training images basename-n.tif|jpg")
    d.add_argument("--angles-path", type=Path, help="angles.csv: basename,axis_angle,count")
    d.add_argument("--test-image-dir", type=Path, help="test images <image>.tif|jpg")
    d.add_argument("--test-annotation-dir", type=Path, help="test <image>-edges.csv files")
    d.add_argument(
        "--data-dir",
        type=Path,
        help="an AxisID set (train/angles.csv, train/images, test/...); with "
        "--simulate-chips it is written first",
    )
    d.add_argument("--simulate-chips", type=int, default=0, help="simulate N training chips")
    d.add_argument("--test-chips", type=int, default=0, help="with --simulate-chips: test chips")
    d.add_argument("--crops-per-crystal", type=int, default=4, help="simulated crops each")
    d.add_argument("--chip-size-um", type=float, nargs=2, metavar=("W", "H"), help="sim chips")
    d.add_argument("--sim-px", type=int, default=256, help="simulated crop size (px)")
    d.add_argument(
        "--sim-label",
        default="edges",
        choices=["edges", "lattice"],
        help="simulated label: what the straight edges agree on (as a person labels) or the "
        "lattice axis the facets scatter about",
    )
    d.add_argument(
        "--sim-min-flake-area",
        type=float,
        default=300.0,
        metavar="UM2",
        help="simulated thin flakes (1-10 layers) from this area; thick crystals from 300 um2",
    )
    d.add_argument(
        "--no-sim-terraces",
        action="store_true",
        help="simulate whole crystals only, not the thin terraces of thick ones",
    )
    t = p.add_argument_group("training")
    t.add_argument("--model", default="3", choices=MODEL_CHOICES, help="architecture")
    t.add_argument("--modulus", type=float, default=30.0, help="angle period (deg)")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99), metavar=("B1", "B2"))
    t.add_argument("--scheduler", default="none", choices=["none", "step", "onecycle"])
    t.add_argument(
        "--scheduler-params",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="step: step_size=N gamma=G; onecycle: max_lr=LR [pct_start=P]",
    )
    t.add_argument("--rotate-deg", type=float, default=0.0, help="max random rotation (deg)")
    t.add_argument(
        "--fade",
        type=float,
        default=0.0,
        help="share of training crops whose contrast is scaled down, noise kept (see "
        "fade_contrast)",
    )
    t.add_argument(
        "--fade-min", type=float, default=0.08, help="lowest contrast scale of a faded crop"
    )
    t.add_argument(
        "--phase-features",
        action="store_true",
        help="feed the network fixed edge-phase channels as well (see axis_models)",
    )
    t.add_argument(
        "--phase-sigmas",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="PX",
        help="gradient scales of the phase front-end (default 1; 1 2 reads faint flakes)",
    )
    t.add_argument(
        "--contrast-norm",
        action="store_true",
        help="scale each input to unit RMS contrast inside the network (see axis_models)",
    )
    t.add_argument("--val-fraction", type=float, default=0.2, help="crystals held out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads")
    t.add_argument("--input-px", type=int, default=256, help="network input size (px)")
    p.add_argument("--out", type=Path, required=True, help="model.onnx (card: model.json)")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict:
    require_at_least(p, a, 1, "epochs", "batch_size", "threads", "crops_per_crystal")
    if a.batch_size < 2:
        p.error(f"--batch-size must be >= 2 (BatchNorm), got {a.batch_size}")
    if not 16 <= a.input_px <= 1024:
        p.error(f"--input-px must be in 16..1024, got {a.input_px}")
    if not a.sim_min_flake_area > 0:
        p.error(f"--sim-min-flake-area must be > 0 um2, got {a.sim_min_flake_area}")
    if not 8 <= a.sim_px <= 1024:
        p.error(f"--sim-px must be in 8..1024, got {a.sim_px}")
    if not (0 < a.modulus <= 360):
        p.error(f"--modulus must be in (0, 360], got {a.modulus}")
    if not (a.lr > 0 and a.weight_decay >= 0):
        p.error(f"--lr must be > 0 and --weight-decay >= 0, got {a.lr}, {a.weight_decay}")
    if not all(0 <= b < 1 for b in a.betas):
        p.error(f"--betas must be in [0, 1), got {list(a.betas)}")
    if not 0 <= a.val_fraction < 1:
        p.error(f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    if not 0 <= a.rotate_deg <= 45:
        p.error(f"--rotate-deg must be in 0..45, got {a.rotate_deg}")
    lo, hi = PHASE_SIGMA_RANGE_PX
    if not all(lo <= s <= hi for s in a.phase_sigmas):
        p.error(f"--phase-sigmas must each be in {lo:g}..{hi:g} px, got {a.phase_sigmas}")
    if not 0 <= a.fade <= 1:
        p.error(f"--fade must be in 0..1, got {a.fade}")
    if not 0.01 <= a.fade_min <= 1:
        p.error(f"--fade-min must be in 0.01..1, got {a.fade_min}")
    if a.simulate_chips < 0 or a.test_chips < 0:
        p.error(
            f"--simulate-chips/--test-chips must be >= 0, got {a.simulate_chips}, {a.test_chips}"
        )
    if a.simulate_chips and not a.data_dir:
        p.error("--simulate-chips needs --data-dir (where the set is written)")
    if a.test_chips and not a.simulate_chips:
        p.error("--test-chips needs --simulate-chips")
    if not a.data_dir and not (a.image_dir and a.angles_path):
        p.error("give --image-dir and --angles-path, or --data-dir")
    if bool(a.test_image_dir) != bool(a.test_annotation_dir):
        p.error("--test-image-dir and --test-annotation-dir go together")
    if a.out.suffix != ".onnx":
        p.error(f"--out must end in .onnx, got {a.out}")
    return _parse_scheduler_params(p, a.scheduler, a.scheduler_params)


def _simulate(a: argparse.Namespace) -> dict:
    """Write (or reuse, if its manifest names the same seeds) a simulated AxisID set."""
    from flakescan.simulators.config import SimulatorConfig
    from flakescan.simulators.datasets import write_axis_set

    seeds = list(range(a.seed, a.seed + a.simulate_chips))
    tests = list(range(a.seed + a.simulate_chips, a.seed + a.simulate_chips + a.test_chips))
    base = SimulatorConfig()
    if a.chip_size_um:
        chip = base.chip.model_copy(
            update={"width_um": a.chip_size_um[0], "height_um": a.chip_size_um[1]}
        )
        base = base.model_copy(update={"chip": chip})
    manifest = a.data_dir / "dataset.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        counts = old.get("counts", {})
        same = (
            old.get("chip_seeds") == seeds + tests
            and old.get("size_px") == a.sim_px
            and old.get("label", "lattice") == a.sim_label
            and old.get("terraces", False) == (not a.no_sim_terraces)
            and old.get("min_flake_area_um2", 300.0) == a.sim_min_flake_area
            and old.get("simulator", {}).get("chip") == json.loads(base.chip.model_dump_json())
            and counts.get("train_images") == a.crops_per_crystal * counts.get("train_crystals", -1)
        )
        if same:
            print(f"reusing the simulated set in {a.data_dir} (same seeds and settings)")
            return old["counts"]
        raise AxisDataError(
            f"--data-dir {a.data_dir} holds another set (chip seeds {old.get('chip_seeds')}, "
            f"{old.get('size_px')} px, label {old.get('label', 'lattice')}, terraces "
            f"{old.get('terraces', False)}); choose an empty folder"
        )
    if a.data_dir.exists() and any(a.data_dir.iterdir()):
        raise AxisDataError(f"--data-dir {a.data_dir} is not empty and has no dataset.json")
    t0 = time.perf_counter()
    counts = write_axis_set(
        a.data_dir,
        seeds,
        base,
        test_seeds=tests,
        crops_per_crystal=a.crops_per_crystal,
        size_px=a.sim_px,
        label=a.sim_label,
        terraces=not a.no_sim_terraces,
        min_flake_area_um2=a.sim_min_flake_area,
    )
    print(f"simulated {counts} in {time.perf_counter() - t0:.0f} s")
    return counts


def _set_manifest(data_dir: Path | None) -> dict | None:
    """What a simulated set's dataset.json says of its labels and crystals (None for a lab's
    own folders): a card must say which angle its errors were measured against."""
    manifest = data_dir / "dataset.json" if data_dir else None
    if manifest is None or not manifest.is_file():
        return None
    d = json.loads(manifest.read_text())
    keys = ("label", "label_means", "terraces", "min_area_um2", "min_flake_area_um2", "size_px")
    return {k: d.get(k) for k in keys} | {"chip_seeds": d.get("chip_seeds")}


def _flatten(crystals: Sequence[Crystal], px: int) -> tuple[np.ndarray, np.ndarray]:
    paths = [p for c in crystals for p in c.paths]
    angles = np.array([c.angle_deg for c in crystals for _ in c.paths], dtype=np.float64)
    if not paths:
        return np.zeros((0, px, px, 3), np.uint8), angles
    return load_images(paths, px), angles


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    a = p.parse_args(argv)
    sched_params = _check_args(p, a)
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    try:
        sim_counts = _simulate(a) if a.simulate_chips else None
        image_dir = a.image_dir or a.data_dir / "train" / "images"
        angles_path = a.angles_path or a.data_dir / "train" / "angles.csv"
        test_dirs = None
        if a.test_image_dir:
            test_dirs = (a.test_image_dir, a.test_annotation_dir)
        elif a.data_dir and (a.data_dir / "test" / "images").is_dir():
            test_dirs = (a.data_dir / "test" / "images", a.data_dir / "test" / "annotations")
        crystals = read_angles_csv(angles_path, image_dir, a.modulus)
        tests = read_test_set(*test_dirs, a.modulus) if test_dirs else []
        train_c, val_c = split_by_basename(crystals, a.val_fraction, a.seed)
        t0 = time.perf_counter()
        x_train, y_train = _flatten(train_c, a.input_px)
        x_val, y_val = _flatten(val_c, a.input_px)
        load_s = time.perf_counter() - t0
    except AxisDataError as exc:
        print(f"flakescan train axis: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{len(train_c)} train crystals ({len(x_train)} images), {len(val_c)} val crystals "
        f"({len(x_val)} images), {len(tests)} test images; input {a.input_px} px"
    )
    cfg = TrainConfig(
        model=a.model,
        modulus=a.modulus,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        betas=tuple(a.betas),
        scheduler=a.scheduler,
        scheduler_params=sched_params,
        rotate_deg=a.rotate_deg,
        fade=a.fade,
        fade_min=a.fade_min,
        phase_features=a.phase_features,
        phase_sigmas=tuple(a.phase_sigmas),
        contrast_norm=a.contrast_norm,
        seed=a.seed,
        threads=a.threads,
    )
    t0 = time.perf_counter()
    model, history = train(cfg, x_train, y_train, x_val, y_val, log=_log)
    train_s = time.perf_counter() - t0

    out = a.out
    example = torch.from_numpy(axis_input(x_train[:2]))
    versions = export_onnx(model, out, example, output_name=OUTPUT_NAME)
    check = axis_input((x_val if len(x_val) else x_train)[:16])
    max_diff = verify_onnx(model, out, check, output_name=OUTPUT_NAME)

    card = ModelCard(
        name=out.stem,
        task=AXIS_TASK,
        architecture=describe(a.model, a.phase_features, a.contrast_norm, a.phase_sigmas),
        parameters=sum(int(q.numel()) for q in model.parameters()),
        input=ModelInput(
            name="input", shape=[None, 3, a.input_px, a.input_px], representation=REPRESENTATION
        ),
        output=ModelOutput(
            name=OUTPUT_NAME,
            activation="none",
            modulus_deg=a.modulus,
            encoding="cos_sin_k_theta",
        ),
        onnx_sha256=file_sha256(out),
    )
    # Evaluate the exported file as the daemon serves it (8 symmetric views).
    served = AxisModel(create_backend(out, intra_op_threads=a.threads), card)
    metrics: dict = {"onnx_vs_torch_max_abs_diff": max_diff}
    if len(x_val):
        got = np.array(
            [
                q.angle_deg
                for i in range(0, len(x_val), 64)
                for q in served.predict(x_val[i : i + 64])
            ]
        )
        metrics["val_served_8view"] = error_stats(circular_difference(got, y_val, a.modulus))
        metrics["val_1view_last_epoch"] = history[-1]["val"]
    if tests:
        _rows, summary = evaluate_test_set(served, tests)
        metrics["test"] = summary["model"]
        metrics["test_edge_baseline"] = summary["edge_baseline"]
        metrics["test_model_on_baseline_images"] = summary["model_on_baseline_images"]
        metrics["test_images"] = len(tests)
    files = sorted({*image_dir.iterdir(), angles_path})
    augmentation = "random quarter turns + row flips (dihedral_angle)"
    if a.rotate_deg:
        augmentation += f", rotations within +-{a.rotate_deg} deg (centre crop)"
    if a.fade:
        augmentation += (
            f", {a.fade:.0%} of crops faded to {a.fade_min:g}-1 x their contrast, noise kept"
        )
    card = card.model_copy(
        update={
            "metrics": metrics,
            "training": {
                "command": "flakescan train axis " + shlex.join(argv),
                "config": {**asdict(cfg), "betas": list(cfg.betas)},
                "input_px": a.input_px,
                "val_fraction": a.val_fraction,
                "split": "by basename (whole crystals)",
                "augmentation": augmentation,
                "loss": "1 - cos(angle between normalised prediction and target unit vector)",
                "train_crystals": len(train_c),
                "train_images": len(x_train),
                "val_crystals": len(val_c),
                "val_images": len(x_val),
                "data": {
                    "angles_path": str(angles_path),
                    "image_dir": str(image_dir),
                    "dataset_sha256": dataset_sha256([f for f in files if f.is_file()]),
                    "simulated": sim_counts,
                    "test_dirs": [str(d) for d in test_dirs] if test_dirs else None,
                    "set_manifest": _set_manifest(a.data_dir),
                },
                "history": history,
                "load_seconds": round(load_s, 1),
                "train_seconds": round(train_s, 1),
                "wall_seconds": round(time.perf_counter() - started, 1),
                **versions,
            },
        }
    )
    write_card(card, out)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')} ({train_s:.0f} s training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
