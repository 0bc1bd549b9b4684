"""`flakescan train pacbed`: PACBED thickness / mistilt / scale CNN on simulated libraries.

Reads one library per convergence angle (simulators/pacbed.py; a library still being
simulated is used as far as its tilts reach), draws fresh augmented patterns every epoch
(training/pacbed_data.py: symmetry azimuth, tilt interpolation, scale, rotation, centre
offset, blur, Poisson noise) and passes them through the served preprocessing, trains the
three-headed network (training/pacbed_models.py), exports ONNX + card (task "pacbed"), and
evaluates the exported file exactly as `flakescan analyze pacbed` serves it (two passes:
scale, then thickness and mistilt) on held-out noisy patterns at random scale:

* val: held-out thicknesses (every k-th), tilts anywhere in the trained range;
* test: held-out thicknesses at held-out tilts (random interior wedge tilts, never touched by
  training's interpolation), the simulated patterns at exactly those tilts.

Reports thickness MAE (nm), mistilt MAE (mrad), scale error and per-pattern inference time
of the ONNX model on `--threads` cores, with a Markdown report and plots.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flakescan.inference.backends import create_backend
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
from flakescan.inference.pacbed import PACBED_TASK, PacbedAnalyzer
from flakescan.inference.pacbed_preprocess import PreprocessConfig
from flakescan.inference.registry import ModelEntry
from flakescan.simulators.pacbed_augment import AugmentSpec
from flakescan.simulators.pacbed_library import PacbedLibrary

from .cli_checks import require_at_least
from .export import dataset_sha256, export_onnx, verify_onnx, write_card
from .pacbed_data import Draw, PacbedSampler, choose_heldout_tilts, covered_tilt_radius
from .pacbed_models import PacbedLayout, PacbedNet, pacbed_loss, split_outputs
from .pacbed_report import write_pacbed_report

__all__ = [
    "OUTPUT_NAME",
    "evaluate_analyzer",
    "load_libraries",
    "main",
    "time_analyzer",
    "torch_metrics",
    "train_model",
]

OUTPUT_NAME = "outputs"
INPUT_NAME = "input"


# -- libraries -----------------------------------------------------------------------------
def load_libraries(folders: Sequence[Path]) -> list[PacbedLibrary]:
    """Open every folder; ValueError unless they hold one material system at one energy,
    each at its own convergence angle."""
    libs = []
    for f in folders:
        f = Path(f)
        if not f.is_dir():
            raise FileNotFoundError(f"--library {str(f)!r}: no such folder")
        lib = PacbedLibrary(f)
        if len(lib.tilts) == 0:
            raise ValueError(f"--library {str(f)!r}: no tilt is simulated yet")
        libs.append(lib)
    first = libs[0]
    for lib in libs[1:]:
        if lib.system.id != first.system.id:
            raise ValueError(
                f"--library {str(lib.folder)!r} is system {lib.system.id} ({lib.system.name}), "
                f"{str(first.folder)!r} is {first.system.id} ({first.system.name}): one model "
                "per material system"
            )
        if not math.isclose(lib.energy_kev, first.energy_kev):
            raise ValueError(
                f"--library {str(lib.folder)!r} is at {lib.energy_kev:g} keV, "
                f"{str(first.folder)!r} at {first.energy_kev:g} keV: one energy per model"
            )
    angles = [lib.conv_angle_mrad for lib in libs]
    if len(set(angles)) != len(angles):
        raise ValueError(f"--library: two libraries share a convergence angle ({angles} mrad)")
    return libs


# -- training ------------------------------------------------------------------------------
def _tensor(d: Draw, idx=None):
    sl = slice(None) if idx is None else idx
    x = np.empty((len(d.patterns[sl]), 2, *d.patterns.shape[1:]), np.float32)
    x[:, 0] = d.patterns[sl]
    x[:, 1] = d.conv_angle[sl][:, None, None]
    return torch.from_numpy(x)


def torch_metrics(model: PacbedNet, d: Draw, batch: int = 128) -> dict:
    """One-pass metrics of the torch model on preprocessed patterns (training curves)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(d), batch):
            outs.append(model(_tensor(d, slice(i, i + batch))))
    out = torch.cat(outs)
    s, t, m = split_outputs(out, model.layout)
    tc = torch.tensor(model.layout.thickness_nm)
    mc = torch.tensor(model.layout.mistilt_mrad)
    t_hat = (torch.softmax(t, 1) @ tc).numpy()
    m_hat = (torch.softmax(m, 1) @ mc).numpy()
    return {
        "thickness_mae_nm": float(np.abs(t_hat - d.thickness_nm).mean()),
        "mistilt_mae_mrad": float(np.abs(m_hat - d.mistilt_mrad).mean()),
        "scale_error_pct": float(100 * np.abs(np.expm1(s.numpy() - d.log_scale)).mean()),
    }


def train_model(
    a: argparse.Namespace,
    sampler: PacbedSampler,
    layout: PacbedLayout,
    val: Draw | None,
    log,
    rng: np.random.Generator,
) -> tuple[PacbedNet, dict]:
    """Fresh patterns every epoch, each seen `reuse` times (the network is invariant to
    detector rotation and mirrors by construction, so flips would add nothing); AdamW with
    a one-cycle schedule. The feature standardisation is fitted on the first epoch's
    patterns."""
    torch.manual_seed(a.seed)
    conv_ref = float(np.mean([lib.conv_angle_mrad for lib in sampler.libraries]))
    model = PacbedNet(
        layout,
        size=a.size,
        n_radii=a.radii,
        n_angles=a.angles,
        harmonics=a.harmonics,
        width=a.width,
        conv_ref_mrad=conv_ref,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    per_epoch = a.reuse * math.ceil(a.patterns_per_epoch / a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=a.lr, total_steps=a.epochs * per_epoch, pct_start=0.15
    )
    hist: dict[str, list[float]] = {
        k: []
        for k in (
            "epoch_train_loss",
            "epoch_train_thickness_loss",
            "epoch_train_mistilt_loss",
            "epoch_train_expectation_loss",
            "epoch_train_scale_loss",
            "epoch_val_thickness_mae_nm",
            "epoch_val_mistilt_mae_mrad",
            "epoch_val_scale_error_pct",
            "epoch_data_seconds",
            "epoch_step_seconds",
        )
    }
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        d = sampler.draw(rng, a.patterns_per_epoch)
        t1 = time.perf_counter()
        if epoch == 0:
            model.fit_normalisation(_tensor(d, slice(0, 2000)))
        model.train()
        sums = np.zeros(5)
        count = 0
        for _ in range(a.reuse):
            order = rng.permutation(len(d))
            for i in range(0, len(d), a.batch_size):
                idx = order[i : i + a.batch_size]
                if len(idx) < 2:
                    continue  # batch norm needs two
                out = model(_tensor(d, idx))
                loss, parts = pacbed_loss(
                    out,
                    layout,
                    torch.from_numpy(d.thickness_nm[idx]),
                    torch.from_numpy(d.mistilt_mrad[idx]),
                    torch.from_numpy(d.log_scale[idx]),
                    a.sigma_thickness_nm,
                    a.sigma_mistilt_mrad,
                    a.scale_weight,
                    a.expectation_weight,
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                sums += len(idx) * np.array(
                    [float(loss.detach())]
                    + [parts[k] for k in ("thickness", "mistilt", "expectation", "scale")]
                )
                count += len(idx)
        t2 = time.perf_counter()
        sums /= max(count, 1)
        keys = ("loss", "thickness_loss", "mistilt_loss", "expectation_loss", "scale_loss")
        for key, v in zip(keys, sums, strict=True):
            hist[f"epoch_train_{key}"].append(round(float(v), 5))
        hist["epoch_data_seconds"].append(round(t1 - t0, 1))
        hist["epoch_step_seconds"].append(round(t2 - t1, 1))
        msg = (
            f"epoch {epoch + 1}/{a.epochs} loss {sums[0]:.4f} "
            f"({t1 - t0:.0f} s data, {t2 - t1:.0f} s steps)"
        )
        if val is not None and len(val):
            vm = torch_metrics(model, val)
            hist["epoch_val_thickness_mae_nm"].append(round(vm["thickness_mae_nm"], 4))
            hist["epoch_val_mistilt_mae_mrad"].append(round(vm["mistilt_mae_mrad"], 4))
            hist["epoch_val_scale_error_pct"].append(round(vm["scale_error_pct"], 4))
            msg += (
                f" | val thickness MAE {vm['thickness_mae_nm']:.2f} nm, mistilt MAE "
                f"{vm['mistilt_mae_mrad']:.2f} mrad, scale {vm['scale_error_pct']:.2f} %"
            )
        log(msg)
    return model.eval(), {k: v for k, v in hist.items() if v}


# -- evaluation of the exported model ------------------------------------------------------
def evaluate_analyzer(
    analyzer: PacbedAnalyzer,
    d: Draw,
    batch: int = 64,
    block_nm: tuple[float, float] | None = None,
) -> tuple[dict, dict]:
    """Metrics of the served two-pass analysis on raw labelled patterns, and the arrays
    (true / predicted) for the report's plots. Patterns are analysed in batches of one
    convergence angle; with several angles, or a held-out thickness block, the metrics are
    also broken down by angle and by block / interleaved thickness."""
    n = len(d)
    t_hat, m_hat, s_hat, t_std, m_std = (np.zeros(n) for _ in range(5))
    example = None
    for conv in sorted(set(d.conv_angle.tolist())):
        rows = np.flatnonzero(d.conv_angle == conv)
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            results, pres = analyzer.analyze_images([d.patterns[j] for j in part], float(conv))
            if example is None and 0 in part:
                at = int(np.flatnonzero(part == 0)[0])
                example = (results[at], pres[at].pattern)
            for j, r in zip(part, results, strict=True):
                t_hat[j], m_hat[j], s_hat[j] = r.thickness_nm, r.mistilt_mrad, r.scale
                t_std[j], m_std[j] = r.thickness_std_nm, r.mistilt_std_mrad
    te = np.abs(t_hat - d.thickness_nm)
    me = np.abs(m_hat - d.mistilt_mrad)
    se = np.abs(s_hat / d.scale - 1)
    metrics = {
        "patterns": len(d),
        "thickness_mae_nm": float(te.mean()),
        "thickness_median_ae_nm": float(np.median(te)),
        "thickness_p90_ae_nm": float(np.percentile(te, 90)),
        "thickness_within_2nm": float((te <= 2).mean()),
        "mistilt_mae_mrad": float(me.mean()),
        "mistilt_median_ae_mrad": float(np.median(me)),
        "mistilt_p90_ae_mrad": float(np.percentile(me, 90)),
        "mistilt_within_1mrad": float((me <= 1).mean()),
        "scale_error_pct_mean": float(100 * se.mean()),
        "scale_error_pct_p95": float(100 * np.percentile(se, 95)),
        "thickness_std_nm_mean": float(np.mean(t_std)),
        "mistilt_std_mrad_mean": float(np.mean(m_std)),
    }
    by_tilt = {}
    tilts = np.round(np.abs(d.tilt), 6)
    keys = [tuple(sorted(t, reverse=True)) for t in tilts]  # the wedge image of |tilt|
    if len(set(keys)) <= 12:
        for k in sorted(set(keys)):
            m = np.array([kk == k for kk in keys])
            by_tilt[f"({k[0]:g}, {k[1]:g})"] = {
                "n": int(m.sum()),
                "thickness_mae_nm": round(float(te[m].mean()), 4),
                "mistilt_mae_mrad": round(float(me[m].mean()), 4),
                "mistilt_true_mrad": round(float(d.mistilt_mrad[m][0]), 4),
            }
        metrics["by_tilt"] = by_tilt
    groups: dict[str, np.ndarray] = {}
    if len(set(d.conv_angle.tolist())) > 1:
        for conv in sorted(set(d.conv_angle.tolist())):
            groups[f"{conv:g} mrad"] = d.conv_angle == conv
    if block_nm is not None:
        inside = (d.thickness_nm >= block_nm[0] - 1e-6) & (d.thickness_nm <= block_nm[1] + 1e-6)
        groups[f"block {block_nm[0]:g}-{block_nm[1]:g} nm"] = inside
        groups["outside the block"] = ~inside
    metrics["by_group"] = {
        name: {
            "n": int(m.sum()),
            "thickness_mae_nm": round(float(te[m].mean()), 4),
            "mistilt_mae_mrad": round(float(me[m].mean()), 4),
        }
        for name, m in groups.items()
        if m.any()
    }
    arrays = {
        "thickness_true": d.thickness_nm,
        "thickness_pred": t_hat,
        "mistilt_true": d.mistilt_mrad,
        "mistilt_pred": m_hat,
        "scale_true": d.scale,
        "scale_pred": s_hat,
        "example": example,
        "example_truth": {
            "thickness_nm": float(d.thickness_nm[0]),
            "mistilt_mrad": float(d.mistilt_mrad[0]),
        },
    }
    return metrics, arrays


def time_analyzer(analyzer: PacbedAnalyzer, d: Draw, n: int) -> dict:
    """Per-pattern wall time of the served analysis, one pattern at a time (batch 1): the
    whole two-pass analysis, and the two ONNX runs alone."""
    n = min(n, len(d))
    total, model_only = [], []
    conv = float(d.conv_angle[0])
    pre = analyzer.analyze_images([d.patterns[0]], conv)[1][0].pattern if n else None
    for i in range(n):
        t0 = time.perf_counter()
        analyzer.analyze_images([d.patterns[i]], float(d.conv_angle[i]))
        total.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        analyzer.run(pre[None], conv)
        analyzer.run(pre[None], conv)
        model_only.append(time.perf_counter() - t0)
    return {
        "patterns": n,
        "analysis_ms_median": round(1e3 * float(np.median(total)), 2) if n else None,
        "analysis_ms_p95": round(1e3 * float(np.percentile(total, 95)), 2) if n else None,
        "onnx_two_passes_ms_median": round(1e3 * float(np.median(model_only)), 2) if n else None,
    }


# -- command line --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan train pacbed",
        description="Train the PACBED thickness / mistilt / scale CNN on simulated libraries "
        "(one per convergence angle); export ONNX + model card; evaluate on held-out noisy "
        "patterns at random scale; write a Markdown report.",
        fromfile_prefix_chars="@",
    )
    p.add_argument(
        "--library",
        type=Path,
        action="append",
        required=True,
        help="library folder (repeat: one per convergence angle)",
    )
    p.add_argument("--out", type=Path, required=True, help="model.onnx (card: model.json)")
    p.add_argument("--report-dir", type=Path, help="Markdown report + plots (default: beside)")
    g = p.add_argument_group("input and bins")
    g.add_argument("--size", type=int, default=96, help="network input side (px), multiple of 16")
    g.add_argument("--crop-radii", type=float, default=2.0, help="crop half-width (disc radii)")
    g.add_argument(
        "--max-mistilt-mrad", type=float, help="mistilt range (default: what the libraries cover)"
    )
    g.add_argument("--thickness-step-nm", type=float, default=1.0, help="thickness bin width")
    g.add_argument("--mistilt-step-mrad", type=float, default=0.25, help="mistilt bin width")
    g.add_argument("--sigma-thickness-nm", type=float, help="soft-label width (default: step)")
    g.add_argument("--sigma-mistilt-mrad", type=float, help="soft-label width (default: step)")
    g.add_argument(
        "--conv-angle-tolerance-mrad",
        type=float,
        default=1.0,
        help="served angles may lie this far outside the trained ones",
    )
    g = p.add_argument_group("held out")
    g.add_argument(
        "--holdout-thickness-every",
        type=int,
        default=8,
        help="hold out every k-th thickness (0: none)",
    )
    g.add_argument(
        "--holdout-thickness-block",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="also hold out every thickness from LO to HI nm (a gap wider than a step)",
    )
    g.add_argument("--holdout-tilts", type=int, default=2, help="random interior wedge tilts")
    g = p.add_argument_group("augmentation")
    g.add_argument("--scale-range", type=float, nargs=2, default=(0.9, 1.1), metavar=("LO", "HI"))
    g.add_argument(
        "--dose-range",
        type=float,
        nargs=2,
        default=(1e5, 1e8),
        metavar=("LO", "HI"),
        help="electrons per pattern (log-uniform)",
    )
    g.add_argument("--blur-px", type=float, nargs=2, default=(0.0, 1.5), metavar=("LO", "HI"))
    g.add_argument("--max-shift-px", type=float, default=1.0, help="centre offset (library px)")
    g.add_argument(
        "--radius-jitter",
        type=float,
        default=0.02,
        help="relative radius error of second-pass-like inputs",
    )
    g.add_argument(
        "--measured-fraction",
        type=float,
        default=0.5,
        help="share of inputs preprocessed with the measured radius",
    )
    g = p.add_argument_group("training")
    g.add_argument("--width", type=int, default=32, help="channels of the first conv layer")
    g.add_argument("--radii", type=int, default=64, help="rings of the polar features")
    g.add_argument("--angles", type=int, default=256, help="angles per ring")
    g.add_argument("--harmonics", type=int, default=8, help="angular harmonics per ring")
    g.add_argument("--epochs", type=int, default=12)
    g.add_argument("--patterns-per-epoch", type=int, default=3000, help="fresh every epoch")
    g.add_argument("--reuse", type=int, default=3, help="passes over each epoch's patterns")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--scale-weight", type=float, default=1.0, help="weight of the scale loss")
    g.add_argument(
        "--expectation-weight",
        type=float,
        default=1.0,
        help="weight of the L1 loss of the curves' expectations",
    )
    g.add_argument("--val-patterns", type=int, default=300)
    g.add_argument("--test-patterns", type=int, default=600)
    g.add_argument("--timing-patterns", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    return p


def _log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _heldout_thickness_text(a: argparse.Namespace) -> str:
    """The held-out thicknesses in words, for the log and the card."""
    parts = []
    if a.holdout_thickness_every:
        k = a.holdout_thickness_every
        parts.append(f"every {k}th library thickness (index % {k} == {k // 2})")
    if a.holdout_thickness_block:
        lo, hi = a.holdout_thickness_block
        parts.append(f"every thickness from {lo:g} to {hi:g} nm")
    return " and ".join(parts) or "none"


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    require_at_least(p, a, 1, "epochs", "patterns_per_epoch", "reuse", "batch_size", "threads")
    require_at_least(p, a, 1, "width", "val_patterns", "test_patterns", "harmonics")
    require_at_least(p, a, 4, "radii", "angles")
    if a.radii % 4:
        p.error(f"--radii must be a multiple of 4, got {a.radii}")
    if a.harmonics >= a.angles // 2:
        p.error(f"--harmonics must be below --angles / 2 = {a.angles // 2}, got {a.harmonics}")
    require_at_least(p, a, 0, "holdout_thickness_every", "holdout_tilts", "timing_patterns")
    block = a.holdout_thickness_block
    if block is not None and not 0 <= block[0] < block[1]:
        p.error(f"--holdout-thickness-block must be 0 <= LO < HI nm, got {block[0]:g} {block[1]:g}")
    if a.out.suffix != ".onnx":
        p.error(f"--out must end in .onnx, got {a.out}")
    if a.size % 16 or a.size < 16:
        p.error(f"--size must be a multiple of 16 (>= 16), got {a.size}")
    for name in ("thickness_step_nm", "mistilt_step_mrad", "crop_radii", "lr"):
        if not getattr(a, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    for name in ("scale_range", "dose_range", "blur_px"):
        lo, hi = getattr(a, name)
        if not (0 <= lo <= hi) or (name != "blur_px" and lo <= 0):
            p.error(f"--{name.replace('_', '-')} must be 0 < LO <= HI, got {lo} {hi}")
    if not 0 <= a.radius_jitter < 0.2:
        p.error(f"--radius-jitter must be in [0, 0.2), got {a.radius_jitter}")
    if not 0 <= a.measured_fraction <= 1:
        p.error(f"--measured-fraction must be in [0, 1], got {a.measured_fraction}")
    if a.conv_angle_tolerance_mrad < 0:
        p.error(f"--conv-angle-tolerance-mrad must be >= 0, got {a.conv_angle_tolerance_mrad}")
    if a.max_mistilt_mrad is not None and not a.max_mistilt_mrad > 0:
        p.error(f"--max-mistilt-mrad must be positive, got {a.max_mistilt_mrad}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    a = p.parse_args(argv)
    _check_args(p, a)
    a.sigma_thickness_nm = a.sigma_thickness_nm or a.thickness_step_nm
    a.sigma_mistilt_mrad = a.sigma_mistilt_mrad or a.mistilt_step_mrad
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    try:
        libs = load_libraries(a.library)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    covered = {str(lib.folder): covered_tilt_radius(lib) for lib in libs}
    reach = min(covered.values())
    for lib in libs:
        _log(
            f"{lib.folder.name}: {len(lib.tilts)}/{len(lib.spec.tilts)} tilts, "
            f"{len(lib.thickness_a)} thicknesses to {lib.thickness_a[-1] / 10:.1f} nm, "
            f"{lib.conv_angle_mrad:g} mrad; mistilts covered to {covered[str(lib.folder)]:g} mrad"
        )
    if reach <= 0:
        p.error(f"--library: the stored tilts cover no mistilt range yet ({covered})")
    max_tilt = a.max_mistilt_mrad if a.max_mistilt_mrad is not None else reach
    if max_tilt > reach + 1e-9:
        worst = min(covered, key=covered.get)
        p.error(
            f"--max-mistilt-mrad {max_tilt:g} exceeds the {reach:g} mrad that library "
            f"{worst} covers with the tilts stored so far"
        )
    rng = np.random.default_rng(a.seed)
    try:
        heldout_tilts = choose_heldout_tilts(libs, max_tilt, a.holdout_tilts, rng)
    except ValueError as exc:
        p.error(str(exc))
    augment = AugmentSpec(
        max_tilt_mrad=max_tilt,
        scale=tuple(a.scale_range),
        max_shift_px=a.max_shift_px,
        blur_px=tuple(a.blur_px),
        dose=tuple(a.dose_range),
    )
    config = PreprocessConfig(size=a.size, crop_radii=a.crop_radii)
    block = tuple(a.holdout_thickness_block) if a.holdout_thickness_block else None
    try:
        sampler = PacbedSampler(
            libs,
            max_tilt,
            augment,
            config,
            holdout_thickness_every=a.holdout_thickness_every,
            heldout_tilts=heldout_tilts,
            holdout_thickness_block_nm=block,
            radius_jitter=a.radius_jitter,
            measured_fraction=a.measured_fraction,
        )
    except ValueError as exc:
        p.error(str(exc))
    max_t_nm = max(float(lib.thickness_a[-1]) for lib in libs) / 10
    layout = PacbedLayout.uniform(max_t_nm, a.thickness_step_nm, max_tilt, a.mistilt_step_mrad)
    _log(
        f"mistilt 0-{max_tilt:g} mrad ({len(layout.mistilt_mrad)} bins), thickness "
        f"0-{layout.thickness_nm[-1]:g} nm ({len(layout.thickness_nm)} bins); held out: "
        f"{_heldout_thickness_text(a)}, tilts {heldout_tilts}"
    )
    eval_rng = np.random.default_rng(a.seed + 7919)
    val_pre = sampler.draw(eval_rng, a.val_patterns, heldout=True)
    val_raw = sampler.draw(eval_rng, a.val_patterns, heldout=True, preprocess=False)
    test_raw = sampler.draw(
        eval_rng, a.test_patterns, heldout=True, exact_tilts=True, preprocess=False
    )
    data_s = time.perf_counter() - started

    t0 = time.perf_counter()
    model, history = train_model(a, sampler, layout, val_pre, _log, rng)
    train_s = time.perf_counter() - t0

    size = a.size
    example = torch.from_numpy(np.zeros((2, 2, size, size), np.float32) + 0.5)
    example[:, 1] = model.conv_ref_mrad
    versions = export_onnx(model, a.out, example, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    check = _tensor(val_pre, slice(0, 32)).numpy()
    max_diff = verify_onnx(
        model,
        a.out,
        check,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        tolerance=1e-3,
        relative_tolerance=1e-4,
    )
    system = libs[0].system
    pacbed_spec = {
        "system": {
            "id": system.id,
            "name": system.name,
            "material": system.material,
            "direction": system.direction_label,
        },
        "energy_kev": libs[0].energy_kev,
        "conv_angles_mrad": [lib.conv_angle_mrad for lib in libs],
        "conv_angle_tolerance_mrad": a.conv_angle_tolerance_mrad,
        "disc_radius_px": {f"{lib.conv_angle_mrad:g}": lib.disc_radius_px for lib in libs},
        "thickness_bins_nm": list(layout.thickness_nm),
        "mistilt_bins_mrad": list(layout.mistilt_mrad),
        "preprocess": config.model_dump(mode="json"),
        "passes": "1: measured radius -> scale head; 2: radius / residual scale -> "
        "thickness and mistilt heads",
    }
    nt, nm = len(layout.thickness_nm), len(layout.mistilt_mrad)
    card = ModelCard(
        name=a.out.stem,
        task=PACBED_TASK,
        architecture=f"PacbedNet: polar features ({a.radii} rings x {a.angles} angles; ring "
        f"mean + |harmonics 1-{a.harmonics}|), 1-D CNN along the radius (width {a.width}) + "
        "wide path, convergence angle concatenated; heads scale / thickness / mistilt",
        parameters=sum(int(q.numel()) for q in model.parameters()),
        input=ModelInput(
            name=INPUT_NAME,
            shape=[None, 2, size, size],
            representation=f"channel 0: PACBED preprocessed by inference/pacbed_preprocess "
            f"(size {size}, crop {a.crop_radii:g} disc radii, max 1); channel 1: the "
            "convergence angle in mrad in every pixel",
        ),
        output=ModelOutput(
            name=OUTPUT_NAME,
            activation="softmax",
            encoding=f"column 0: log residual scale (radius used / true disc radius); "
            f"columns 1-{nt}: thickness logits over training.pacbed.thickness_bins_nm; "
            f"columns {nt + 1}-{nt + nm}: mistilt logits over training.pacbed.mistilt_bins_mrad",
        ),
        onnx_sha256=file_sha256(a.out),
    )
    entry = ModelEntry(
        a.out.stem, a.out, card.model_copy(update={"training": {"pacbed": pacbed_spec}})
    )
    analyzer = PacbedAnalyzer(entry, create_backend(a.out, intra_op_threads=a.threads))
    t0 = time.perf_counter()
    metrics: dict = {"onnx_vs_torch_max_abs_diff": max_diff}
    arrays = {}
    for name, d in (("val", val_raw), ("test", test_raw)):
        metrics[name], arrays[name] = evaluate_analyzer(analyzer, d, block_nm=block)
    metrics["timing"] = {
        **time_analyzer(analyzer, test_raw, a.timing_patterns),
        "threads": a.threads,
    }
    eval_s = time.perf_counter() - t0
    for name in ("val", "test"):
        m = metrics[name]
        _log(
            f"{name}: thickness MAE {m['thickness_mae_nm']:.2f} nm, mistilt MAE "
            f"{m['mistilt_mae_mrad']:.3f} mrad, scale error {m['scale_error_pct_mean']:.2f} %"
        )
    stacks = sorted(
        {
            lib.folder / "tilts" / f
            for lib in libs
            for f in {r["Path"].split("#")[0].split("/")[-1] for r in lib.rows}
        }
    )
    card = card.model_copy(
        update={
            "metrics": metrics,
            "training": {
                "command": "flakescan train pacbed " + shlex.join(argv),
                "pacbed": pacbed_spec,
                "libraries": [
                    {
                        "folder": str(lib.folder),
                        "conv_angle_mrad": lib.conv_angle_mrad,
                        "sampling_mrad": lib.sampling_mrad,
                        "complete": lib.complete,
                        "tilts_stored": len(lib.tilts),
                        "tilts_total": len(lib.spec.tilts),
                        "thicknesses": len(lib.thickness_a),
                        "frozen_phonons": lib.spec.frozen_phonons,
                        "mistilt_covered_mrad": covered[str(lib.folder)],
                    }
                    for lib in libs
                ],
                # the stacks read (immutable once written; the index grows with the library)
                "dataset_sha256": dataset_sha256(stacks),
                "tilts_stored_mrad": [[list(map(float, t)) for t in lib.tilts] for lib in libs],
                "heldout": {
                    "thickness": _heldout_thickness_text(a),
                    "thickness_block_nm": list(block) if block else None,
                    "tilts_mrad": [list(t) for t in heldout_tilts],
                    "val": "held-out thicknesses, interpolated tilts in the trained range",
                    "test": "held-out thicknesses at the held-out tilts (exact simulated "
                    "patterns, any symmetry-equivalent azimuth)"
                    if heldout_tilts
                    else "held-out thicknesses at the stored tilts in range (exact simulated "
                    "patterns, any symmetry-equivalent azimuth; no tilt held out)",
                },
                "max_mistilt_mrad": max_tilt,
                "augment": augment.model_dump(mode="json"),
                "radius_jitter": a.radius_jitter,
                "measured_fraction": a.measured_fraction,
                "loss": f"soft-label cross-entropy (Gaussian sigma {a.sigma_thickness_nm:g} nm, "
                f"{a.sigma_mistilt_mrad:g} mrad) + {a.expectation_weight:g} x (|E[t] - t| / 10 "
                f"nm + |E[m] - m| / 1 mrad) + {a.scale_weight:g} x (log-scale error / 1 %)^2",
                "features": {"radii": a.radii, "angles": a.angles, "harmonics": a.harmonics},
                "epochs": a.epochs,
                "patterns_per_epoch": a.patterns_per_epoch,
                "reuse": a.reuse,
                "batch_size": a.batch_size,
                "lr": a.lr,
                "weight_decay": a.weight_decay,
                "width": a.width,
                "seed": a.seed,
                "threads": a.threads,
                "history": history,
                "data_seconds": round(data_s, 1),
                "train_seconds": round(train_s, 1),
                "eval_seconds": round(eval_s, 1),
                "wall_seconds": round(time.perf_counter() - started, 1),
                **versions,
            },
        }
    )
    card = write_card(card, a.out)
    report_dir = a.report_dir or a.out.with_name(a.out.stem + "-report")
    write_pacbed_report(report_dir, card, arrays)
    summary = {
        k: {n: v for n, v in m.items() if not isinstance(v, dict)} if isinstance(m, dict) else m
        for k, m in metrics.items()
    }
    print(json.dumps(summary, indent=1))
    print(f"wrote {a.out}, {a.out.with_suffix('.json')} and {report_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
