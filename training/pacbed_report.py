"""The Markdown evaluation report of a PACBED model: figures from its card and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flakescan.inference.model_card import ModelCard
from flakescan.inference.pacbed import plot_pacbed

from .plots import _save, plot_training_curves, plt
from .report_table import metric_rows

__all__ = ["plot_predicted_vs_true", "plot_scale_errors", "write_pacbed_report"]


def plot_predicted_vs_true(arrays: dict, path: Path) -> Path:
    """Predicted against true thickness and mistilt, one row per set."""
    sets = [k for k in ("val", "test") if k in arrays]
    fig, axes = plt.subplots(len(sets), 2, figsize=(9, 4 * len(sets)), squeeze=False)
    for row, name in zip(axes, sets, strict=True):
        a = arrays[name]
        for ax, key, unit in ((row[0], "thickness", "nm"), (row[1], "mistilt", "mrad")):
            t, p = np.asarray(a[f"{key}_true"]), np.asarray(a[f"{key}_pred"])
            lo, hi = 0.0, float(max(t.max(), p.max())) * 1.05
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
            ax.scatter(t, p, s=6, alpha=0.5)
            mae = float(np.abs(p - t).mean())
            ax.set_title(f"{name}: {key} (MAE {mae:.2f} {unit}, n={len(t)})", fontsize=9)
            ax.set_xlabel(f"true {key} ({unit})")
            ax.set_ylabel(f"predicted {key} ({unit})")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_scale_errors(arrays: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in ("val", "test"):
        if name in arrays:
            a = arrays[name]
            err = 100 * (np.asarray(a["scale_pred"]) / np.asarray(a["scale_true"]) - 1)
            ax.hist(
                err, bins=40, histtype="step", label=f"{name} (mean |e| {np.abs(err).mean():.2f} %)"
            )
    ax.set_xlabel("scale error (%)")
    ax.set_ylabel("patterns")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _total(training: dict, key: str) -> float:
    return round(float(sum(training.get("history", {}).get(key, []))), 1)


def write_pacbed_report(out_dir: Path, card: ModelCard, arrays: dict) -> Path:
    """report.md with the card's numbers and the figures, in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tr, spec = card.training, card.training.get("pacbed", {})
    held = tr.get("heldout", {})
    timing = card.metrics.get("timing", {})
    lines = [
        f"# PACBED model `{card.name}`",
        "",
        f"{card.architecture}; {card.parameters:,} parameters.",
        f"System {spec.get('system', {}).get('id')} ({spec.get('system', {}).get('name')}, "
        f"{spec.get('system', {}).get('direction')}), {spec.get('energy_kev'):g} keV, "
        f"convergence angles {spec.get('conv_angles_mrad')} mrad; thickness bins "
        f"0-{spec['thickness_bins_nm'][-1]:g} nm ({len(spec['thickness_bins_nm'])}), mistilt "
        f"bins 0-{spec['mistilt_bins_mrad'][-1]:g} mrad ({len(spec['mistilt_bins_mrad'])}).",
        "",
        f"Command (wall {tr.get('wall_seconds')} s: held-out sets {tr.get('data_seconds')} s, "
        f"training {tr.get('train_seconds')} s of which drawing and preprocessing the fresh "
        f"patterns {_total(tr, 'epoch_data_seconds')} s and steps "
        f"{_total(tr, 'epoch_step_seconds')} s, evaluation {tr.get('eval_seconds')} s):",
        "",
        f"    {tr.get('command')}",
        "",
        "Libraries:",
        "",
    ]
    for lib in tr.get("libraries", []):
        lines.append(
            f"- `{lib['folder']}`: {lib['conv_angle_mrad']:g} mrad, {lib['tilts_stored']} of "
            f"{lib['tilts_total']} tilts stored ({'complete' if lib['complete'] else 'partial'}), "
            f"mistilts covered to {lib['mistilt_covered_mrad']:g} mrad, {lib['thicknesses']} "
            f"thicknesses, frozen phonons {lib['frozen_phonons']}"
        )
    lines += [
        "",
        f"Held out: thickness {held.get('thickness')}; tilts {held.get('tilts_mrad')} mrad.",
        f"- val: {held.get('val')}",
        f"- test: {held.get('test')}",
        "",
        "Both are noisy (Poisson, log-uniform dose), blurred, rotated, off-centre and at random "
        "scale, and are analysed by the exported ONNX model exactly as served (two passes).",
        "",
        "| set | patterns | thickness MAE (nm) | median | p90 | within 2 nm | mistilt MAE (mrad) "
        "| median | p90 | within 1 mrad | scale error mean (%) | p95 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += metric_rows(
        card.metrics,
        [
            "patterns",
            "thickness_mae_nm",
            "thickness_median_ae_nm",
            "thickness_p90_ae_nm",
            "thickness_within_2nm",
            "mistilt_mae_mrad",
            "mistilt_median_ae_mrad",
            "mistilt_p90_ae_mrad",
            "mistilt_within_1mrad",
            "scale_error_pct_mean",
            "scale_error_pct_p95",
        ],
        digits=3,
    )
    by_tilt = card.metrics.get("test", {}).get("by_tilt")
    if by_tilt:
        lines += ["", "Test by held-out tilt (wedge image):", ""]
        lines += [
            f"- {k}: |t| = {v['mistilt_true_mrad']:g} mrad, n = {v['n']}, thickness MAE "
            f"{v['thickness_mae_nm']:.2f} nm, mistilt MAE {v['mistilt_mae_mrad']:.3f} mrad"
            for k, v in by_tilt.items()
        ]
    for name in ("val", "test"):
        groups = card.metrics.get(name, {}).get("by_group")
        if groups:
            lines += ["", f"{name.capitalize()} by convergence angle and thickness hold-out:", ""]
            lines += [
                f"- {k}: n = {v['n']}, thickness MAE {v['thickness_mae_nm']:.2f} nm, mistilt "
                f"MAE {v['mistilt_mae_mrad']:.3f} mrad"
                for k, v in groups.items()
            ]
    if timing:
        lines += [
            "",
            f"Inference per pattern (batch 1, {timing.get('threads')} thread(s), "
            f"{timing.get('patterns')} patterns): whole analysis median "
            f"{timing.get('analysis_ms_median')} ms (p95 {timing.get('analysis_ms_p95')} ms), "
            f"of which the two ONNX runs {timing.get('onnx_two_passes_ms_median')} ms.",
        ]
    diff = card.metrics.get("onnx_vs_torch_max_abs_diff", float("nan"))
    lines.append(f"ONNX vs PyTorch max |diff| {diff:.2g}.")
    figs = []
    keep = ("epoch_train_loss", "epoch_val_")  # the parts of the loss are in the card
    hist = {k: v for k, v in tr.get("history", {}).items() if k.startswith(keep)}
    curves = plot_training_curves({"history": hist}, out_dir / "training_curves.png", card.name)
    if curves:
        figs.append(("Training curves (val: one pass of the torch model)", curves))
    if arrays:
        figs.append(
            ("Predicted vs true", plot_predicted_vs_true(arrays, out_dir / "predicted_vs_true.png"))
        )
        figs.append(("Scale error", plot_scale_errors(arrays, out_dir / "scale_error.png")))
        ex = arrays.get("test", {}).get("example")
        if ex is not None:
            result, prepared = ex
            path = plot_pacbed(
                result, prepared, out_dir / "example.png", truth=arrays["test"]["example_truth"]
            )
            figs.append(("Example (first test pattern; black: truth)", path))
    for title, path in figs:
        lines += ["", f"## {title}", "", f"![{title}]({Path(path).name})"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
