"""The phase-retrieval evaluation report: reference scores, tables, plots (matplotlib Agg).

References that need no model, scored exactly as the models are (after the best origin /
enantiomorph alignment): "zero" (every phase 0: the map sum |F| cos 2 pi h.x, a Patterson-
like centrosymmetric map with its peak at the origin) and "random" (uniform phases).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from flakescan.inference.phase_grid import (
    N_MAX,
    PhaseScores,
    apply_alignment,
    density,
    score_phases,
)

__all__ = ["baseline_scores", "write_report"]

_ORDER = ("linear", "fc", "cnn", "unet")
_SPLIT_TEXT = {
    "val": "held-out displacements of training structures",
    "select": "held-out structures (chose each model's epoch)",
    "test": "held-out structures (never used for a choice)",
}


def baseline_scores(ds, parts: dict, splits: list[str], seed: int = 0) -> dict:
    """{"zero": {split: PhaseScores}, "random": {...}} on the given splits."""
    rng = np.random.default_rng(seed)
    out: dict = {"zero": {}, "random": {}}
    for split in splits:
        idx = parts[split]
        a, p, m = ds.amplitudes[idx], ds.phases[idx], ds.mask[idx]
        out["zero"][split] = score_phases(np.zeros_like(p), p, a, m)
        rand = rng.uniform(-np.pi, np.pi, p.shape)
        rand = 0.5 * (rand - rand[:, ::-1, ::-1, ::-1])  # Friedel-consistent
        out["random"][split] = score_phases(rand, p, a, m)
    return out


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _curves(results: dict, path: Path) -> Path:
    names = [n for n in _ORDER if n in results]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        h = results[name]["history"]
        for key, style in (("train", "-"), ("val", "--"), ("select", ":")):
            series = h.get(f"{key}_loss_per_epoch")
            if series:
                ax.plot(h["epoch"], series, style, label=key)
        ax.axvline(h.get("best_epoch", 0), color="grey", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("phase loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _density_figure(ds, parts: dict, results: dict, path: Path, rows: int = 3) -> Path | None:
    """Density plane z = 0 (through the canonical origin) of test crystals: from the true
    phases, from the U-net's and from the linear model's (aligned), measured |F|."""
    split = "test" if len(parts.get("test", [])) else "val"
    idx = parts[split]
    shown = [n for n in ("unet", "linear") if n in results] or [n for n in _ORDER if n in results][
        :2
    ]
    if not len(idx) or not shown:
        return None
    firsts = []
    for s in sorted(set(ds.structure_index[idx].tolist()), key=lambda i: ds.names[i])[:rows]:
        firsts.append(int(np.flatnonzero(ds.structure_index[idx] == s)[0]))
    fig, axes = plt.subplots(
        len(firsts),
        1 + len(shown),
        figsize=(3.3 * (1 + len(shown)), 3.0 * len(firsts)),
        squeeze=False,
    )
    for r, j in enumerate(firsts):
        i = idx[j]
        a, p, m = ds.amplitudes[i], ds.phases[i], ds.mask[i]
        maps = [("true phases", density(np.where(m, a * np.exp(1j * p), 0)), None)]
        for name in shown:
            sc: PhaseScores = results[name]["scores"][split]
            pred = _predicted_phases(results[name], split, j)
            al = apply_alignment(pred[None], sc.shift[j : j + 1], sc.sign[j : j + 1])[0]
            maps.append((name, density(np.where(m, a * np.exp(1j * al), 0)), sc.r_factor[j]))
        lim = np.abs(maps[0][1][:, :, 0]).max()
        for c, (label, rho, rf) in enumerate(maps):
            ax = axes[r, c]
            ax.imshow(
                rho[:, :, 0].T,
                origin="lower",
                extent=(0, 1, 0, 1),
                cmap="RdBu_r",
                vmin=-lim,
                vmax=lim,
            )
            title = f"{ds.names[ds.structure_index[i]]}: {label}"
            ax.set_title(title if rf is None else f"{title}\nR = {rf:.2f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def _predicted_phases(result: dict, split: str, j: int) -> np.ndarray:
    return result["predicted"][split][j]


def _per_structure(ds, parts, results, split="test") -> tuple[list[str], dict]:
    idx = parts.get(split, [])
    if not len(idx):
        return [], {}
    sidx = ds.structure_index[idx]
    names = sorted(set(sidx.tolist()), key=lambda i: ds.names[i])
    table: dict = {}
    models = [n for n in _ORDER if n in results]
    for label in [*models, "zero", "random"]:
        sc = (
            results[label]["scores"][split]
            if label in results
            else results["baselines"][label][split]
        )
        table[label] = {
            ds.names[s]: (float(sc.loss[sidx == s].mean()), float(sc.r_factor[sidx == s].mean()))
            for s in names
        }
    return [ds.names[s] for s in names], table


def _per_structure_figure(names, table, path: Path) -> Path | None:
    if not names:
        return None
    labels = [k for k in (*_ORDER, "zero") if k in table]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.5))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        ax.bar(
            np.arange(len(names)) + k * width,
            [table[label][n][1] for n in names],
            width,
            label=label,
        )
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("density R-factor")
    ax.set_title("held-out test structures (mean over displacements)")
    ax.legend(fontsize=8, ncol=len(labels))
    fig.tight_layout()
    return _save(fig, path)


def write_report(
    out_dir: Path, ds, parts: dict, results: dict, command: str, wall_seconds: float
) -> Path:
    """report.md + metrics.json + PNGs in `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    models = [n for n in _ORDER if n in results]
    splits = [s for s in ("val", "select", "test") if len(parts.get(s, []))]
    metrics = {
        "command": command,
        "wall_seconds": round(wall_seconds, 1),
        "baselines": {
            b: {s: sc.summary() for s, sc in v.items()} for b, v in results["baselines"].items()
        },
        "models": {n: {s: results[n]["scores"][s].summary() for s in splits} for n in models},
        "train_seconds": {n: results[n]["card"].training["train_seconds"] for n in models},
    }
    names, table = _per_structure(ds, parts, results)
    metrics["test_per_structure"] = {
        k: {n: {"loss": round(v[0], 4), "r_factor": round(v[1], 4)} for n, v in t.items()}
        for k, t in table.items()
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    figs = {
        "curves": _curves(results, out_dir / "training_curves.png") if models else None,
        "density": _density_figure(ds, parts, results, out_dir / "density_slices.png"),
        "per_structure": _per_structure_figure(names, table, out_dir / "test_per_structure.png"),
    }
    lines = [
        "# Phase retrieval: evaluation report",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall_seconds:.0f} s (one CPU thread).",
        "",
        "## Data",
        "",
    ]
    for s in ("train", *splits):
        ix = parts.get(s, [])
        st = sorted({ds.names[i] for i in ds.structure_index[ix]})
        text = _SPLIT_TEXT.get(s, "training")
        lines.append(f"- **{s}** ({len(ix)} samples, {len(st)} structures): {text}")
        if s in ("select", "test"):
            fams = sorted({ds.families[ds.names.index(n)] for n in st})
            lines.append(f"  - structures: {', '.join(st)}")
            lines.append(f"  - families: {', '.join(fams)}")
    meta = ds.meta
    lines += [
        "",
        f"Energy {meta.get('energy_kev')} keV; displacements sigma = {meta.get('sigma_a')} a "
        f"along a per atom, isotropic {meta.get('sigma_iso_angstrom')} A; Uiso "
        f"{meta.get('default_uiso')} A^2 where the CIF has none; grid h, k, l in "
        f"-{N_MAX}..{N_MAX}, reflections beyond the limiting sphere and F(000) masked.",
        "",
        "## Scores",
        "",
        "All after the best origin shift and enantiomorph (`phase_grid.align_phases`). "
        "Loss: 1 - |F|-weighted mean cos(phase error). MAE: mean |phase error| in degrees, "
        "|F|-weighted and unweighted. R: density R-factor sum|rho_pred - rho_true| / "
        "sum|rho_true| of the tapered maps without F(000), from the true amplitudes. "
        "Means over samples (medians in metrics.json).",
        "",
    ]
    for s in splits:
        lines += [
            f"### {s}: {_SPLIT_TEXT[s]}",
            "",
            "| model | loss | MAE weighted (deg) | MAE (deg) | R-factor |",
            "| --- | --- | --- | --- | --- |",
        ]
        rows = [(n, results[n]["scores"][s]) for n in models]
        rows += [(f"({b} phases)", results["baselines"][b][s]) for b in ("zero", "random")]
        for label, sc in rows:
            lines.append(
                f"| {label} | {sc.loss.mean():.3f} | {sc.mae_weighted_deg.mean():.1f} | "
                f"{sc.mae_deg.mean():.1f} | {sc.r_factor.mean():.3f} |"
            )
        lines.append("")
    if names:
        labels = [k for k in (*_ORDER, "zero", "random") if k in table]
        lines += [
            "### test, per structure (mean R-factor)",
            "",
            "| structure | " + " | ".join(labels) + " |",
            "| --- |" + " --- |" * len(labels),
        ]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{table[k][n][1]:.3f}" for k in labels) + " |")
        lines.append("")
    lines += [
        "## Models",
        "",
        "| model | parameters | MB | best epoch | train s |",
        "| --- |" * 1 + " --- | --- | --- | --- |",
    ]
    for n in models:
        card = results[n]["card"]
        size = Path(results[n]["path"]).stat().st_size / 1e6
        lines.append(
            f"| {n} ({card.architecture}) | {card.parameters} | {size:.1f} | "
            f"{results[n]['history']['best_epoch']} | {card.training['train_seconds']} |"
        )
    lines.append("")
    lines += ["## Figures", ""]
    for key, title in (
        ("curves", "Training curves (phase loss per epoch; grey line: kept epoch)"),
        ("density", "Density, plane z = 0: true phases vs predicted (aligned)"),
        ("per_structure", "Density R-factor per held-out test structure"),
    ):
        if figs[key] is not None:
            lines += [f"![{title}]({figs[key].name})", "", f"*{title}*", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
