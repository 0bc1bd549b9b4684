"""Figures of an evaluation: training curves, F1 against threshold, angle-error histograms.

Agg backend (no display on the lab PC's service account or in CI). Every function writes one
PNG atomically (temporary name, then rename) and returns its path, or None when there is
nothing to draw (a card without per-epoch history), so a report can simply skip it.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["epoch_series", "plot_angle_errors", "plot_f1_vs_threshold", "plot_training_curves"]

# Words that say which split or that a list is per epoch; what remains names the quantity.
_SPLIT_WORDS = {"train", "training", "val", "valid", "validation", "heldout", "test", "per"}
_EPOCH_WORDS = {"epoch", "epochs"}


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def _is_series(v: object) -> bool:
    return (
        isinstance(v, list)
        and len(v) >= 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
    )


def epoch_series(training: dict) -> dict[str, list[float]]:
    """Per-epoch number lists in a card's `training` section (one level of nesting too),
    keyed by their (dotted) name. Only keys that say "epoch" count: `pos_weight` is a list
    of numbers but no history."""
    found: dict[str, list[float]] = {}
    for key, v in training.items():
        if isinstance(v, dict):
            for sub, w in v.items():
                name = f"{key}.{sub}"
                if _is_series(w) and ("epoch" in name.lower() or "history" in name.lower()):
                    found[name] = [float(x) for x in w]
        elif _is_series(v) and "epoch" in key.lower():
            found[key] = [float(x) for x in v]
    return found


def _quantity(name: str) -> str:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower().split(".")[-1]) if w]
    kept = [w for w in words if w not in _SPLIT_WORDS | _EPOCH_WORDS]
    return "_".join(kept) or name


def plot_training_curves(training: dict, path: Path, title: str = "") -> Path | None:
    """One panel per quantity (loss, MAE, ...) with every split's curve in it."""
    series = epoch_series(training)
    if not series:
        return None
    groups: dict[str, dict[str, list[float]]] = {}
    for name, values in series.items():
        groups.setdefault(_quantity(name), {})[name] = values
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (quantity, curves) in zip(axes[0], groups.items(), strict=True):
        for name, values in curves.items():
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_f1_vs_threshold(
    thresholds: np.ndarray,
    f1: np.ndarray,
    classes: Sequence[str],
    path: Path,
    card_threshold: float | None = None,
    best: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """F1 of each class against the decision threshold; the card's threshold and each
    class's best one marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, name in enumerate(classes):
        (line,) = ax.plot(thresholds, f1[:, k], label=name)
        if best is not None:
            i = int(np.argmin(np.abs(np.asarray(thresholds) - best[k])))
            ax.plot(thresholds[i], f1[i, k], "o", color=line.get_color())
    if card_threshold is not None:
        ax.axvline(card_threshold, color="k", ls="--", lw=1, label=f"card {card_threshold:g}")
    ax.set_xlabel("threshold on the sigmoid score")
    ax.set_ylabel("F1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    ax.set_title(title or "F1 vs threshold (dots: best per class)")
    return _save(fig, path)


def plot_angle_errors(
    errors: dict[str, np.ndarray], path: Path, modulus: float = 30.0, title: str = ""
) -> Path:
    """Overlaid histograms of |circular error| per method (NaN = no answer, left out)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finite = [np.abs(e[np.isfinite(e)]) for e in errors.values()]
    top = max([float(a.max()) for a in finite if a.size] + [2.0])
    top = min(float(np.ceil(top)), modulus / 2)
    bins = np.linspace(0, top, int(max(top / 0.25, 8)) + 1)
    for (name, e), a in zip(errors.items(), finite, strict=True):
        failed = int((~np.isfinite(e)).sum())
        label = f"{name} (MAE {a.mean():.2f} deg, n={a.size}" if a.size else f"{name} (n=0"
        label += f", {failed} no answer)" if failed else ")"
        ax.hist(np.clip(a, 0, top), bins=bins, alpha=0.55, label=label)
    ax.set_xlabel(f"|angle error| (deg, mod {modulus:g})")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Axis angle error")
    return _save(fig, path)
