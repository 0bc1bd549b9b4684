"""`flakescan train xrd`: powder-XRD phase classifier with anomaly detection; ONNX + card.

Simulates (or loads cached) train / validation / test sets of perturbed patterns
(`simulators.xrd_dataset`), trains the seed's GAF CNN or the 1-D CNN, fits the novelty head
on the training embeddings, sets the novelty threshold on the validation set for a chosen
false-alarm rate, exports the scored model, and evaluates the exported file as `flakescan
analyze xrd` serves it: accuracy, anomaly recall by kind (mixtures, trained foreign phases,
phases never seen), false alarms, a Markdown report with plots.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flakescan.inference.backends import create_backend
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
from flakescan.inference.registry import ModelEntry
from flakescan.inference.xrd import XRD_TASK, XrdIdentifier, normalise_pattern
from flakescan.simulators.xrd_dataset import XRD_CLASSES, XrdSet, simulate_xrd_set
from flakescan.simulators.xrd_pattern import CU_KA1, TWO_THETA_GRID
from flakescan.simulators.xrd_phases import KNOWN_PHASES, reflection_list

from .cli_checks import require_at_least
from .export import dataset_sha256, export_onnx, verify_onnx, write_card
from .xrd_models import XRD_ARCHITECTURES, NoveltyHead, ScoredXrdModel, build_xrd_model
from .xrd_report import write_xrd_report

__all__ = ["evaluate_identifier", "main", "prepare_inputs", "reference_sticks"]

OUTPUT_NAME = "scores"
GRID = (float(TWO_THETA_GRID[0]), 0.02, len(TWO_THETA_GRID))


def prepare_inputs(counts: np.ndarray) -> np.ndarray:
    """Counts -> model inputs, with the very function `inference.xrd` serves with."""
    return np.stack([normalise_pattern(row) for row in counts]) if len(counts) else counts


def reference_sticks(max_peaks: int = 30) -> dict[str, list[list[float]]]:
    """Ideal Cu K-alpha-1 peak list (2-theta, relative intensity) of each trained phase, for
    the validation picture: equal d-spacings merged, the strongest `max_peaks` kept."""
    out = {}
    for spec in KNOWN_PHASES:
        refl = reflection_list(spec)
        d = refl.d_spacings()
        sin_t = CU_KA1 / (2 * d)
        ok = sin_t < np.sin(np.radians(TWO_THETA_GRID[-1] / 2))
        theta = np.arcsin(sin_t[ok])
        lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
        tt = np.round(np.degrees(2 * theta), 2)
        inten = refl.f2[ok] * lp
        keys, inv = np.unique(tt, return_inverse=True)
        summed = np.bincount(inv, weights=inten)
        keep = (keys >= TWO_THETA_GRID[0]) & (summed >= 0.01 * summed.max())
        keys, summed = keys[keep], summed[keep] / summed.max()
        top = np.argsort(summed)[::-1][:max_peaks]
        out[spec.name] = [[float(keys[i]), round(float(summed[i]), 4)] for i in sorted(top)]
    return out


# -- data ---------------------------------------------------------------------------------
def _set_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}.npz"


def _load_or_simulate(
    data_dir: Path | None, name: str, params: dict, workers: int, log
) -> tuple[XrdSet, Path | None]:
    path = _set_path(data_dir, name) if data_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            if json.loads(str(z["params"])) == params:
                log(f"{name}: {len(z['labels'])} patterns from {path}")
                return XrdSet(z["counts"], z["labels"], z["kinds"]), path
        log(f"{name}: {path} was made with other parameters; simulating again")
    t0 = time.perf_counter()
    s = simulate_xrd_set(
        params["n_per_class"],
        params["seed"],
        n_anomaly=params["n_anomaly"],
        n_unseen=params["n_unseen"],
        workers=workers,
        progress=sys.stderr.isatty(),
    )
    log(f"{name}: simulated {len(s)} patterns in {time.perf_counter() - t0:.0f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(
            tmp, counts=s.counts, labels=s.labels, kinds=s.kinds, params=json.dumps(params)
        )
        tmp.replace(path)
    return s, path


# -- training -----------------------------------------------------------------------------
def _embeddings(model: nn.Module, x: np.ndarray, batch: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [model.embed(torch.from_numpy(x[i : i + batch])) for i in range(0, len(x), batch)]
        )


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [model(torch.from_numpy(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)]
        )
    return float((pred.numpy() == y).mean()) if len(y) else float("nan")


def train_classifier(a: argparse.Namespace, x, y, xv, yv, log) -> tuple[nn.Module, dict]:
    torch.manual_seed(a.seed)
    model = build_xrd_model(a.arch, len(XRD_CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    steps = max(1, int(np.ceil(len(x) / a.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=a.lr, total_steps=a.epochs * steps, pct_start=0.2
    )
    counts = np.bincount(y, minlength=len(XRD_CLASSES)).astype(np.float64)
    weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(counts), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    rng = np.random.default_rng(a.seed)
    history: dict = {"epoch_train_loss": [], "epoch_val_accuracy": []}
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), a.batch_size):
            idx = order[i : i + a.batch_size]
            if len(idx) < 2:
                continue  # batch norm needs two
            logits = model(torch.from_numpy(x[idx]))
            loss = loss_fn(logits, torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history["epoch_train_loss"].append(round(total / len(x), 5))
        history["epoch_val_accuracy"].append(round(_accuracy(model, xv, yv), 5))
        log(
            f"epoch {epoch + 1}/{a.epochs} loss {history['epoch_train_loss'][-1]:.4f} "
            f"val accuracy {history['epoch_val_accuracy'][-1]:.4f}"
        )
    return model, history


def novelty_threshold(
    known_novelty: np.ndarray, known_flagged_by_class: np.ndarray, false_alarm: float
) -> float:
    """The novelty distance above which a pattern is called unknown, set so that known
    patterns are flagged (by the anomaly class or by novelty) at most `false_alarm` of the
    time on the validation set."""
    budget = false_alarm - float(known_flagged_by_class.mean())
    rest = np.sort(known_novelty[~known_flagged_by_class])
    if budget <= 0 or len(rest) == 0:
        return float(rest[-1]) if len(rest) else float(np.max(known_novelty))
    k = int(np.floor(budget * len(known_novelty)))  # knowns allowed above the threshold
    return float(rest[len(rest) - 1 - k]) if k < len(rest) else float(rest[0])


# -- evaluation of the exported model -----------------------------------------------------
def evaluate_identifier(ident: XrdIdentifier, x: np.ndarray, s: XrdSet) -> dict:
    """Metrics of the served decision rule on a labelled set (inputs already prepared)."""
    probs, novelty = [], []
    for i in range(0, len(x), 256):
        p, n = ident.scores(x[i : i + 256])
        probs.append(p)
        novelty.append(n)
    probs, novelty = np.concatenate(probs), np.concatenate(novelty)
    anomaly_idx = XRD_CLASSES.index("anomaly")
    argmax = probs.argmax(1)
    flagged = (argmax == anomaly_idx) | (novelty > ident.threshold)
    known = s.labels != anomaly_idx
    kind = np.array([k.split(":")[0] for k in s.kinds])
    seen = kind != "unseen"
    out: dict = {
        "patterns": len(x),
        "argmax_accuracy_trained_kinds": float((argmax[seen] == s.labels[seen]).mean()),
        "known_identified": float(((argmax == s.labels) & ~flagged)[known].mean()),
        "false_alarm": float(flagged[known].mean()),
        "anomaly_recall": float(flagged[~known].mean()) if (~known).any() else None,
    }
    for k in ("mixture", "outside", "unseen"):
        m = kind == k
        if m.any():
            out[f"recall_{k}"] = float(flagged[m].mean())
            out[f"n_{k}"] = int(m.sum())
    per_phase = {}
    for k in np.unique(s.kinds[kind == "unseen"]):
        m = s.kinds == k
        per_phase[k.split(":", 1)[1]] = round(float(flagged[m].mean()), 3)
    if per_phase:
        out["recall_unseen_by_phase"] = per_phase
    confusion = np.zeros((len(XRD_CLASSES), len(XRD_CLASSES)), dtype=int)
    decided = np.where(flagged, anomaly_idx, argmax)
    for t, p in zip(s.labels[seen], decided[seen], strict=True):
        confusion[t, p] += 1
    out["confusion_trained_kinds"] = confusion.tolist()
    out["_arrays"] = {
        "p_anomaly": probs[:, anomaly_idx],
        "novelty": novelty,
        "known": known,
        "kind": kind,
    }
    return out


# -- command line -------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan train xrd",
        description="Train a powder-XRD phase classifier with anomaly detection on simulated "
        "patterns; export ONNX + model card; evaluate and report.",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--arch", default="cnn1d", choices=sorted(XRD_ARCHITECTURES))
    p.add_argument("--train-per-class", type=int, default=1200, help="patterns per known phase")
    p.add_argument("--val-per-class", type=int, default=200, help="sets the novelty threshold")
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--test-unseen", type=int, default=600, help="test patterns of unseen phases")
    p.add_argument("--data-dir", type=Path, help="cache of the simulated sets (.npz)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--false-alarm", type=float, default=0.005, help="known patterns flagged, on validation"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workers", type=int, default=1, help="processes simulating patterns")
    p.add_argument("--report-dir", type=Path, help="Markdown report + plots (default: beside)")
    p.add_argument("--out", type=Path, required=True, help="model.onnx (card: model.json)")
    return p


def _log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    a = p.parse_args(argv)
    require_at_least(p, a, 1, "train_per_class", "val_per_class", "epochs", "batch_size")
    require_at_least(p, a, 1, "threads", "workers")
    require_at_least(p, a, 0, "test_per_class", "test_unseen")
    if not 0 < a.false_alarm < 0.5:
        p.error(f"--false-alarm must be in (0, 0.5), got {a.false_alarm}")
    if a.out.suffix != ".onnx":
        p.error(f"--out must end in .onnx, got {a.out}")
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    sets, paths = {}, []
    for name, n, seed_offset, unseen in (
        ("train", a.train_per_class, 0, 0),
        ("val", a.val_per_class, 1, 0),
        ("test", a.test_per_class, 2, a.test_unseen),
    ):
        if n == 0 and unseen == 0:
            continue
        params = {
            "n_per_class": n,
            "n_anomaly": 2 * n,
            "n_unseen": unseen,
            "seed": a.seed * 1000 + seed_offset,
            "classes": list(XRD_CLASSES),
        }
        sets[name], path = _load_or_simulate(a.data_dir, name, params, a.workers, _log)
        paths += [path] if path else []
    data_s = time.perf_counter() - started
    x, xv = prepare_inputs(sets["train"].counts), prepare_inputs(sets["val"].counts)
    y, yv = sets["train"].labels, sets["val"].labels

    t0 = time.perf_counter()
    model, history = train_classifier(a, x, y, xv, yv, _log)
    anomaly_idx = XRD_CLASSES.index("anomaly")
    known_classes = [i for i in range(len(XRD_CLASSES)) if i != anomaly_idx]
    novelty = NoveltyHead.fit(_embeddings(model, x), torch.from_numpy(y), known_classes)
    scored = ScoredXrdModel(model, novelty).eval()
    train_s = time.perf_counter() - t0

    versions = export_onnx(
        scored, a.out, torch.from_numpy(x[:2]), input_name="input", output_name=OUTPUT_NAME
    )
    # The novelty column is a distance in the tens to thousands: float32 rounding is relative.
    # The GAF model sums over a 500 x 500 image, where ONNX Runtime's and PyTorch's float32
    # convolutions differ by up to 5e-4 in a logit (measured): 1e-3 moves a probability by
    # less than 0.1 %, far below any decision here.
    max_diff = verify_onnx(
        scored,
        a.out,
        xv[:32],
        output_name=OUTPUT_NAME,
        tolerance=1e-3 if a.arch == "gaf" else 1e-4,
        relative_tolerance=1e-4,
    )
    card = ModelCard(
        name=a.out.stem,
        task=XRD_TASK,
        architecture=f"{a.arch}: {type(model).__name__} + Mahalanobis novelty head",
        parameters=sum(int(q.numel()) for q in model.parameters()),
        input=ModelInput(
            name="input",
            shape=[None, GRID[2]],
            representation="counts on the 2-theta grid (Cu K-alpha), min-max normalised to 0-1",
            two_theta_deg=GRID,
        ),
        output=ModelOutput(
            name=OUTPUT_NAME,
            classes=list(XRD_CLASSES),
            activation="softmax",
            encoding="logits of the classes, then the novelty distance as the last column",
        ),
        threshold=1e9,  # set below, once the exported file has scored the validation set
        onnx_sha256=file_sha256(a.out),
    )
    entry = ModelEntry(a.out.stem, a.out, card)
    ident = XrdIdentifier(entry, create_backend(a.out, intra_op_threads=a.threads))
    pv, nv = ident.scores(xv)
    known_v = yv != anomaly_idx
    threshold = novelty_threshold(nv[known_v], pv[known_v].argmax(1) == anomaly_idx, a.false_alarm)
    ident.threshold = threshold
    metrics: dict = {"onnx_vs_torch_max_abs_diff": max_diff}
    arrays = {}
    for name in ("val", "test"):
        if name in sets:
            xs = xv if name == "val" else prepare_inputs(sets[name].counts)
            m = evaluate_identifier(ident, xs, sets[name])
            arrays[name] = m.pop("_arrays")
            metrics[name] = m
    card = card.model_copy(
        update={
            "threshold": threshold,
            "metrics": metrics,
            "training": {
                "command": "flakescan train xrd " + shlex.join(argv),
                "arch": a.arch,
                "epochs": a.epochs,
                "batch_size": a.batch_size,
                "lr": a.lr,
                "weight_decay": a.weight_decay,
                "loss": "cross-entropy, classes weighted by inverse frequency",
                "novelty": "Mahalanobis distance to the nearest known-phase mean (shared "
                f"covariance, 5 % trace shrinkage); threshold at {a.false_alarm:.0%} "
                "validation false alarms (anomaly class and novelty together)",
                "phases": [s.name for s in KNOWN_PHASES],
                "sets": {
                    k: {"patterns": len(v), "kinds": _kind_counts(v)} for k, v in sets.items()
                },
                "dataset_sha256": dataset_sha256(paths) if paths else None,
                "history": history,
                "reference_peaks": reference_sticks(),
                "data_seconds": round(data_s, 1),
                "train_seconds": round(train_s, 1),
                "wall_seconds": round(time.perf_counter() - started, 1),
                **versions,
            },
        }
    )
    card = write_card(card, a.out)
    report_dir = a.report_dir or a.out.with_name(a.out.stem + "-report")
    write_xrd_report(report_dir, card, arrays)
    summary = {
        k: {n: v for n, v in m.items() if not n.startswith("confusion")}
        for k, m in metrics.items()
        if isinstance(m, dict)
    }
    print(json.dumps(summary, indent=1))
    print(f"wrote {a.out}, {a.out.with_suffix('.json')} and {report_dir}/report.md")
    return 0


def _kind_counts(s: XrdSet) -> dict[str, int]:
    kinds = [k.split(":")[0] for k in s.kinds]
    return {k: kinds.count(k) for k in sorted(set(kinds))}


if __name__ == "__main__":
    sys.exit(main())
