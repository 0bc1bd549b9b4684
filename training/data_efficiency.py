"""Data efficiency: does SimCLR pre-training help when few labelled crops exist?

The GrapheneClassifier seed compared a CNN trained from scratch with a contrastively
pre-trained network, evaluated by linear evaluation (LE: backbone frozen, linear head
trained) and fine-tuning (FT: LE, then every layer at a lower learning rate), on
subsets of the labelled training data. This module repeats that comparison on simulated
chips at a size a CPU finishes in about a quarter of an hour:

1. labelled crops of `--train-chips` and `--test-chips` (disjoint chip seeds) and
   unlabelled crops of the training chips plus `--unlabelled-chips` more, all written in
   the seed's folder convention and read back through `crop_folder` (the classifier's
   input transform);
2. SimCLR (`clr.pretrain`) on the unlabelled crops;
3. for each labelled fraction: scratch, LE and FT, F1 per class and their harmonic mean
   on the test chips; `--repeats` different subsets for fractions below 1.

Writes a Markdown table (`--out-md`), the raw numbers (`.json` next to it) and a figure
(`--figure`).

    python -m flakescan.training.data_efficiency --out-md runs/data-efficiency.md \
        --figure docs/figures/data-efficiency.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .cli_checks import require_at_least
from .clr import ClrConfig, pretrain
from .crop_folder import CropSet, load_crop_folder
from .flake_dataset import CLASS_NAMES
from .resnet import ARCHS
from .train_classifier import (
    TrainConfig,
    build_model,
    per_class_metrics,
    predict_logits,
    train,
)

__all__ = ["harmonic_mean", "main", "subset_indices"]

PROG = "python -m flakescan.training.data_efficiency"
METHODS = ("scratch", "LE", "FT")


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of F1 scores; 0 if any class is never found (F1 = 0)."""
    v = np.asarray(values, float)
    return 0.0 if (v <= 0).any() else float(len(v) / np.sum(1.0 / v))


def subset_indices(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A random `fraction` of the crops that holds at least one positive of every class."""
    n = max(2, round(fraction * len(y)))
    if n >= len(y):
        return np.arange(len(y))
    for _ in range(1000):
        idx = np.sort(rng.choice(len(y), size=n, replace=False))
        if y[idx].sum(axis=0).min() > 0:
            return idx
    raise ValueError(f"no subset of {n} crops holds every class; use a larger fraction")


def _folder(root: Path, seeds: list[int], labelled: bool, input_px: int) -> CropSet:
    """Write (or reuse) a classifier-convention folder of the chips `seeds` and read it."""
    from flakescan.simulators.datasets import write_classifier_set

    manifest = root / "dataset.json"
    if not (manifest.is_file() and json.loads(manifest.read_text())["chip_seeds"] == seeds):
        tmp = root.with_name(root.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        write_classifier_set(tmp, seeds)
        if root.exists():
            import shutil

            shutil.rmtree(root)
        tmp.replace(root)
    return load_crop_folder(root, input_px, labelled=labelled)


def _scores(model: torch.nn.Module, test: CropSet, threshold: float = 0.5) -> dict:
    logits = predict_logits(model, test.x.astype(np.float32))
    pred = 1.0 / (1.0 + np.exp(-logits)) >= threshold
    per_class = per_class_metrics(pred, test.y)
    f1 = [per_class[c]["f1"] for c in CLASS_NAMES]
    return {"f1": f1, "harmonic_mean": round(harmonic_mean(f1), 4)}


def _epochs_for(n: int, cfg: TrainConfig, min_steps: int) -> int:
    """Enough epochs that a small subset still gets `min_steps` optimiser steps."""
    steps_per_epoch = max(math.ceil(n / cfg.batch_size), 1)
    return max(cfg.epochs, math.ceil(min_steps / steps_per_epoch))


def run(a: argparse.Namespace) -> dict:
    """The whole comparison; returns every score and timing (also written as JSON)."""
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    work = Path(a.work_dir)
    train_seeds = list(range(a.seed, a.seed + a.train_chips))
    test_seeds = list(range(20_001, 20_001 + a.test_chips))
    extra_seeds = list(range(30_001, 30_001 + a.unlabelled_chips))
    labelled = _folder(work / "train", train_seeds, True, a.input_px)
    test = _folder(work / "test", test_seeds, True, a.input_px)
    x_unlab = labelled.x
    if extra_seeds:
        x_unlab = np.concatenate(
            [x_unlab, _folder(work / "unlabelled", extra_seeds, False, a.input_px).x]
        )
    t_data = time.perf_counter() - t0
    log = not a.quiet
    if log:
        print(
            f"data: {len(labelled)} labelled, {len(test)} test, {len(x_unlab)} unlabelled "
            f"crops in {t_data:.0f} s",
            flush=True,
        )

    t1 = time.perf_counter()
    clr_cfg = ClrConfig(
        arch=a.arch,
        width=a.width,
        epochs=a.clr_epochs,
        batch_size=a.clr_batch,
        temperature=a.temperature,
        seed=a.seed,
    )
    pretrained, clr_loss = pretrain(x_unlab, clr_cfg, log=log)
    t_clr = time.perf_counter() - t1

    base = TrainConfig(
        arch=a.arch, width=a.width, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed
    )
    rows: list[dict] = []
    t2 = time.perf_counter()
    for fraction in a.fractions:
        repeats = 1 if fraction >= 1 else a.repeats
        for r in range(repeats):
            rng = np.random.default_rng([a.seed, r, round(fraction * 1e6)])
            idx = subset_indices(labelled.y, fraction, rng)
            x, y = labelled.x[idx], labelled.y[idx]
            cfg = replace(base, epochs=_epochs_for(len(idx), base, a.min_steps), seed=a.seed + r)
            results = {}
            torch.manual_seed(cfg.seed)
            scratch = build_model(cfg)
            train(scratch, x, y, cfg, log=False)
            results["scratch"] = _scores(scratch, test)
            torch.manual_seed(cfg.seed)
            le = build_model(cfg)
            le.backbone.load_state_dict(pretrained.backbone.state_dict())
            train(le, x, y, replace(cfg, freeze_backbone=True), log=False)
            results["LE"] = _scores(le, test)
            ft = copy.deepcopy(le)
            for p in ft.parameters():
                p.requires_grad_(True)
            train(ft, x, y, replace(cfg, lr=a.ft_lr), log=False)
            results["FT"] = _scores(ft, test)
            rows.append(
                {
                    "fraction": fraction,
                    "repeat": r,
                    "train_crops": len(idx),
                    "epochs": cfg.epochs,
                    **results,
                }
            )
            if log:
                hm = "  ".join(f"{m} {results[m]['harmonic_mean']:.3f}" for m in METHODS)
                print(f"{fraction:>5.0%} ({len(idx)} crops, repeat {r}): {hm}", flush=True)
    t_cls = time.perf_counter() - t2
    return {
        "command": a.command,
        "arch": a.arch,
        "width": a.width,
        "input_px": a.input_px,
        "train_chip_seeds": train_seeds,
        "test_chip_seeds": test_seeds,
        "unlabelled_extra_chip_seeds": extra_seeds,
        "labelled_crops": labelled.counts(),
        "test_crops": test.counts(),
        "unlabelled_crops": len(x_unlab),
        "clr": {**asdict(clr_cfg), "loss_per_epoch": [round(v, 4) for v in clr_loss]},
        "classifier": asdict(base) | {"min_steps": a.min_steps, "ft_lr": a.ft_lr},
        "rows": rows,
        "seconds": {
            "data": round(t_data, 1),
            "clr": round(t_clr, 1),
            "classifiers": round(t_cls, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }


def _summary(rows: list[dict]) -> list[dict]:
    """Mean, min and max over repeats of every score, per fraction and method."""
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        sel = [r for r in rows if r["fraction"] == fraction]
        for m in METHODS:
            f1 = np.array([r[m]["f1"] for r in sel])
            hm = np.array([r[m]["harmonic_mean"] for r in sel])
            out.append(
                {
                    "fraction": fraction,
                    "crops": sel[0]["train_crops"],
                    "method": m,
                    "repeats": len(sel),
                    "f1": f1.mean(axis=0).round(3).tolist(),
                    "hm": float(hm.mean()),
                    "hm_min": float(hm.min()),
                    "hm_max": float(hm.max()),
                }
            )
    return out


def markdown_table(result: dict) -> str:
    """F1 per class (mean over repeats) and harmonic mean (min-max over repeats)."""
    head = (
        "| labelled crops | method | F1 class 1 | F1 class 2 | F1 class 3 | F1 any | "
        "harmonic mean (min-max) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for s in _summary(result["rows"]):
        spread = f" ({s['hm_min']:.3f}-{s['hm_max']:.3f})" if s["repeats"] > 1 else ""
        lines.append(
            f"| {s['fraction']:.0%} ({s['crops']}) | {s['method']} | "
            + " | ".join(f"{v:.3f}" for v in s["f1"])
            + f" | {s['hm']:.3f}{spread} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Harmonic-mean F1 against labelled crops per method (the seed's right-hand panel)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _summary(result["rows"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for m, marker in zip(METHODS, "osd", strict=True):
        s = [r for r in summary if r["method"] == m]
        x = [r["crops"] for r in s]
        y = [r["hm"] for r in s]
        err = [[r["hm"] - r["hm_min"] for r in s], [r["hm_max"] - r["hm"] for r in s]]
        label = {
            "scratch": "from scratch",
            "LE": "SimCLR + linear eval",
            "FT": "SimCLR + fine-tune",
        }[m]
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=label)
    ax.set_xscale("log")
    crops = sorted({r["crops"] for r in summary})
    ax.set_xticks(crops, [str(c) for c in crops])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("labelled training crops")
    ax.set_ylabel("harmonic mean of F1 (4 classes)")
    ax.set_title(
        f"{result['arch']} width {result['width']:g}, {result['input_px']} px, "
        f"{len(result['test_chip_seeds'])} test chips",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0], fromfile_prefix_chars="@"
    )
    p.add_argument("--train-chips", type=int, default=8)
    p.add_argument("--test-chips", type=int, default=4)
    p.add_argument(
        "--unlabelled-chips",
        type=int,
        default=8,
        help="extra chips for SimCLR beyond the training chips",
    )
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.25, 1.0])
    p.add_argument("--repeats", type=int, default=3, help="subsets per fraction below 1")
    p.add_argument("--arch", choices=ARCHS, default="cnn4")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--input-px", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--min-steps", type=int, default=100, help="optimiser steps per run, at least")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    p.add_argument("--clr-epochs", type=int, default=15)
    p.add_argument("--clr-batch", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/data-efficiency"),
        help="where the simulated crop folders are written (reused if present)",
    )
    p.add_argument("--out-md", type=Path, default=Path("runs/data-efficiency/table.md"))
    p.add_argument("--figure", type=Path, default=Path("docs/figures/data-efficiency.png"))
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; write the table, its JSON and the figure."""
    import shlex
    import sys

    p = _parser()
    a = p.parse_args(argv)
    require_at_least(
        p,
        a,
        1,
        "train_chips",
        "test_chips",
        "repeats",
        "epochs",
        "min_steps",
        "batch_size",
        "clr_epochs",
        "threads",
    )
    require_at_least(p, a, 0, "unlabelled_chips")
    if a.clr_batch < 2 or a.batch_size < 2:
        p.error("--clr-batch and --batch-size must be >= 2")
    bad = [f for f in a.fractions if not 0 < f <= 1]
    if bad:
        p.error(f"--fractions must be in (0, 1], got {bad[0]}")
    args = list(argv) if argv is not None else sys.argv[1:]
    a.command = f"{PROG} {shlex.join(args)}".strip()
    result = run(a)
    a.out_md.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(result)
    for path, text in (
        (a.out_md, table),
        (a.out_md.with_suffix(".json"), json.dumps(result, indent=1) + "\n"),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    plot(result, a.figure)
    if not a.quiet:
        print(table)
        print(f"timings {result['seconds']}; wrote {a.out_md}, {a.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
