"""The Markdown evaluation report of an XRD model: figures from its card and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flakescan.inference.model_card import ModelCard

from .plots import _save, plot_training_curves, plt
from .report_table import metric_rows

__all__ = ["plot_confusion", "plot_novelty", "write_xrd_report"]


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    c = np.asarray(confusion, dtype=float)
    rows = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if c[i, j]:
                ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("decided (anomaly class or novelty)")
    ax.set_ylabel("true")
    return _save(fig, path)


def plot_novelty(arrays: dict, threshold: float, path: Path) -> Path:
    """Novelty distances by kind, and recall against false alarms for each score alone."""
    nov, kind, known = arrays["novelty"], arrays["kind"], arrays["known"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    bins = np.linspace(0, np.percentile(nov, 99.5), 60)
    for k in ("phase", "mixture", "outside", "unseen"):
        m = kind == k
        if m.any():
            ax.hist(nov[m], bins=bins, histtype="step", density=True, label=f"{k} ({m.sum()})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("novelty (Mahalanobis distance to nearest phase)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    for name, score in (("novelty", nov), ("p(anomaly)", arrays["p_anomaly"])):
        cuts = np.unique(np.quantile(score[known], np.linspace(0, 1, 201)))
        fa = [(score[known] > t).mean() for t in cuts]
        rec = [(score[~known] > t).mean() for t in cuts]
        bx.plot(fa, rec, label=f"{name} alone")
    bx.set_xscale("symlog", linthresh=0.01)
    bx.set_xlim(0, 1)
    bx.set_xlabel("false alarms on known phases")
    bx.set_ylabel("anomaly recall")
    bx.axvline(0.05, color="grey", lw=0.8, ls=":")
    bx.legend(fontsize=8)
    return _save(fig, path)


def write_xrd_report(out_dir: Path, card: ModelCard, arrays: dict) -> Path:
    """report.md with the card's numbers and three figures, in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(card.output.classes)
    lines = [
        f"# XRD model `{card.name}`",
        "",
        f"{card.architecture}; {card.parameters:,} parameters; classes: {', '.join(classes)}.",
        f"Novelty threshold {card.threshold:.3f}. Command: `{card.training.get('command')}`",
        "",
        "| set | patterns | argmax accuracy (trained kinds) | known identified | false alarms "
        "| anomaly recall | mixtures | foreign (trained) | unseen phases |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += metric_rows(
        card.metrics,
        [
            "patterns",
            "argmax_accuracy_trained_kinds",
            "known_identified",
            "false_alarm",
            "anomaly_recall",
            "recall_mixture",
            "recall_outside",
            "recall_unseen",
        ],
        digits=4,
    )
    test = card.metrics.get("test", {})
    if test.get("recall_unseen_by_phase"):
        lines += ["", "Unseen phases, share flagged:", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in test["recall_unseen_by_phase"].items()]
    figs = []
    curves = plot_training_curves(card.training, out_dir / "training_curves.png", card.name)
    if curves:
        figs.append(("Training curves", curves))
    if test.get("confusion_trained_kinds"):
        figs.append(
            (
                "Confusion on the test set (trained kinds)",
                plot_confusion(test["confusion_trained_kinds"], classes, out_dir / "confusion.png"),
            )
        )
    if "test" in arrays:
        figs.append(
            (
                "Novelty and anomaly scores on the test set",
                plot_novelty(arrays["test"], float(card.threshold), out_dir / "novelty.png"),
            )
        )
    for title, path in figs:
        lines += ["", f"## {title}", "", f"![{title}]({Path(path).name})"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
