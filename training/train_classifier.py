"""Train the CNN-4 flake classifier on simulated chips and export it as ONNX with its card.

Multi-label targets [class1, class2, class3, any] as in the GrapheneClassifier seed, AdamW
(lr 3e-4, weight decay 0.2) on BCE-with-logits, rebalanced per class with pos_weight =
sqrt(negatives / positives). Held-out metrics come from chips whose seeds the training never
saw, next to the baseline of the preselection's contrast bins alone.
The ONNX file is checked against PyTorch in ONNX Runtime before its card is written, and the
card records the command line that reproduces the file.

    python -m flakescan.training.train_classifier --simulate-chips 40 --seed 1 --val-chips 10 \
        --epochs 30 --workers 2 --out inference/models/flake_classifier_cnn4.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flakescan.inference.model_card import (
    ModelCard,
    ModelInput,
    ModelOutput,
    file_sha256,
    load_model_card,
)

from .cnn4 import CNN4, count_parameters
from .flake_dataset import (
    CLASS_NAMES,
    SOURCE_CANDIDATE,
    DatasetSpec,
    FlakeDataset,
    generate_dataset,
    load_dataset,
    seed_range,
)

__all__ = [
    "TrainConfig",
    "evaluate",
    "export_onnx",
    "main",
    "per_class_metrics",
    "pos_weights",
    "train",
    "train_and_export",
    "verify_onnx",
]

PROG = "python -m flakescan.training.train_classifier"
REPRESENTATION = "contrast 1 - I/background per channel (R,G,B), linear pixels"
ONNX_OPSET = 17
ORT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; everything that changes the weights is here or in the data."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.2
    dropout: float = 0.3
    # Contrast-scale jitter, +-3 %: neighbouring layer counts (5 vs 6 layers: 28 vs 32 % in R)
    # still do not overlap after it.
    jitter: float = 0.03
    schedule: str = "cosine"
    seed: int = 1
    # pos_weight per class: "ratio" = negatives / positives, "sqrt" its square root, "none" 1.
    # With the full ratio a 0.5 threshold sits at a true probability of 1 / (1 + ratio): recall
    # rises, precision of rare classes falls; the square root halves that shift in log-odds.
    pos_weight: str = "sqrt"
    max_pos_weight: float = 20.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {self.batch_size}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.pos_weight not in ("ratio", "sqrt", "none"):
            raise ValueError(
                f"pos_weight must be 'ratio', 'sqrt' or 'none', got {self.pos_weight!r}"
            )


# --------------------------------------------------------------------------- training


def _seed_everything(seed: int, threads: int) -> None:
    """Same seed, same thread count -> same weights (oneDNN reductions depend on threads)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def pos_weights(y: np.ndarray, mode: str = "sqrt", cap: float = 20.0) -> np.ndarray:
    """Per-class positive weights from class frequencies, so rare classes are not ignored."""
    pos = y.sum(axis=0).astype(np.float64)
    missing = [CLASS_NAMES[k] for k in np.flatnonzero(pos == 0)]
    if missing:
        raise ValueError(
            f"training set has no positives of {missing}: the network cannot learn them; "
            "use more chips (--simulate-chips) or another dataset (--data)"
        )
    ratio = np.minimum((len(y) - pos) / pos, cap)
    if mode == "ratio":
        return ratio
    if mode == "sqrt":
        return np.sqrt(ratio)
    if mode == "none":
        return np.ones_like(ratio)
    raise ValueError(f"pos_weight mode must be 'ratio', 'sqrt' or 'none', got {mode!r}")


def augment(x: torch.Tensor, jitter: float, gen: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotations and flips (labels unchanged) and a contrast-scale jitter.

    A flake has no preferred orientation on the chip, and flare / white balance scale all
    contrasts of a frame together; the jitter is kept small so no layer count crosses a bin.
    """
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).bool()
    out = x.clone()
    for r in range(1, 4):
        idx = k == r
        if idx.any():
            out[idx] = torch.rot90(out[idx], r, dims=(2, 3))
    if flip.any():
        out[flip] = out[flip].flip(3)
    if jitter > 0:
        scale = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * jitter
        out = out * scale
    return out


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    log: bool = True,
) -> list[float]:
    """Fit `model` in place; returns the mean training loss per epoch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    pw = torch.from_numpy(pos_weights(y, cfg.pos_weight, cfg.max_pos_weight).astype(np.float32))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(xt) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    else:  # "constant", as the seed trained
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    history: list[float] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        running, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples; at most one is dropped per epoch
            xb = augment(xt[idx], cfg.jitter, gen)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        history.append(running / max(seen, 1))
        if log:
            print(
                f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {history[-1]:.4f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(n, classes) logits in eval mode (BatchNorm running statistics, no dropout)."""
    model.eval()
    out = [
        model(torch.from_numpy(np.asarray(x[i : i + batch_size], dtype=np.float32))).numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def per_class_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class of boolean (n, classes) arrays."""
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(CLASS_NAMES):
        p, t = pred[:, k].astype(bool), truth[:, k].astype(bool)
        tp = int((p & t).sum())
        fp = int((p & ~t).sum())
        fn = int((~p & t).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(t.sum()),
        }
    return out


def _preselection_prediction(ds: FlakeDataset) -> np.ndarray:
    """What the contrast bins alone would say: the baseline the CNN has to beat."""
    pc = ds.preselection_class
    pred = np.stack([pc == 1, pc == 2, pc == 3], axis=1)
    return np.concatenate([pred, pred.any(axis=1, keepdims=True)], axis=1)


def evaluate(model: nn.Module, ds: FlakeDataset, threshold: float) -> dict:
    """Held-out metrics of the network, plus the preselection-bins baseline on candidates."""
    logits = predict_logits(model, ds.x)
    pred = 1.0 / (1.0 + np.exp(-logits)) >= threshold
    cand = ds.source == SOURCE_CANDIDATE
    return {
        "threshold": threshold,
        "heldout_chip_seeds": list(ds.seeds),
        "heldout_crops": len(ds),
        "heldout_candidates": int(cand.sum()),
        "per_class": per_class_metrics(pred, ds.y),
        "candidates_only": per_class_metrics(pred[cand], ds.y[cand]),
        "preselection_bins_baseline": per_class_metrics(
            _preselection_prediction(ds)[cand], ds.y[cand]
        ),
    }


# --------------------------------------------------------------------------- export


def export_onnx(model: nn.Module, path: Path, input_px: int) -> None:
    """ONNX with a dynamic batch: input "input" [batch, 3, px, px] -> output "logits"."""
    model.eval()
    dummy = torch.zeros(1, 3, input_px, input_px)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch 2.9+, but the dynamo exporter needs
        # onnxscript, which the training extras do not install.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(path)


def verify_onnx(model: nn.Module, path: Path, x: np.ndarray) -> float:
    """Max |ORT - torch| over a batch; raises if above ORT_TOLERANCE or shapes disagree."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(x, dtype=np.float32)
    (ort_out,) = sess.run(["logits"], {"input": batch})
    torch_out = predict_logits(model, batch)
    if ort_out.shape != torch_out.shape:
        raise RuntimeError(
            f"ONNX Runtime output shape {ort_out.shape} != PyTorch {torch_out.shape} for {path}"
        )
    diff = float(np.max(np.abs(ort_out - torch_out)))
    if not diff < ORT_TOLERANCE:
        raise RuntimeError(
            f"ONNX Runtime and PyTorch disagree on {path}: max abs diff {diff:.3g} "
            f">= {ORT_TOLERANCE}; the exported model is not the trained one"
        )
    return diff


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train the CNN-4 flake classifier on simulated chips; export ONNX + card.",
        fromfile_prefix_chars="@",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="training set .npz (from flake_dataset)")
    src.add_argument(
        "--simulate-chips", type=int, metavar="N", help="generate N chips, seeds S..S+N-1"
    )
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-data", type=Path, help="held-out set .npz (disjoint chip seeds)")
    val.add_argument(
        "--val-chips", type=int, metavar="M", help="generate M held-out chips (default 8)"
    )
    p.add_argument(
        "--val-seed", type=int, default=10_001, help="first held-out chip seed (default 10001)"
    )
    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--jitter", type=float, default=d.jitter, help="contrast-scale jitter")
    p.add_argument("--schedule", choices=["cosine", "constant"], default=d.schedule)
    p.add_argument(
        "--pos-weight",
        choices=["ratio", "sqrt", "none"],
        default=d.pos_weight,
        help="class rebalancing: negatives/positives, its square root (default), or none",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="sigmoid threshold")
    p.add_argument(
        "--seed", type=int, default=d.seed, help="torch seed and first training chip seed"
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--workers", type=int, default=1, help="processes generating chips")
    p.add_argument("--out", type=Path, required=True, help="output .onnx; card at <stem>.json")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _validate(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    positive = {
        "--simulate-chips": a.simulate_chips,
        "--val-chips": a.val_chips,
        "--epochs": a.epochs,
        "--batch-size": a.batch_size,
        "--threads": a.threads,
        "--workers": a.workers,
    }
    for name, value in positive.items():
        if value is not None and value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if a.batch_size < 2:
        p.error(f"--batch-size must be >= 2 (BatchNorm), got {a.batch_size}")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        p.error(f"--lr must be a positive number, got {a.lr}")
    if not (a.weight_decay >= 0 and math.isfinite(a.weight_decay)):
        p.error(f"--weight-decay must be >= 0, got {a.weight_decay}")
    if not 0 <= a.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {a.dropout}")
    if not 0 <= a.jitter < 0.5:
        p.error(f"--jitter must be in [0, 0.5), got {a.jitter}")
    if not 0 < a.threshold < 1:
        p.error(f"--threshold must be in (0, 1), got {a.threshold}")
    if a.out.suffix != ".onnx":
        p.error(f"--out must end in .onnx, got {str(a.out)!r}")
    for name, path in (("--data", a.data), ("--val-data", a.val_data)):
        if path is not None and not path.is_file():
            p.error(f"{name} file not found: {path}")


def _canonical_command(a: argparse.Namespace) -> str:
    """Every option spelled out, so the card's command does not depend on today's defaults."""
    parts: list[str] = []
    if a.data is not None:
        parts += ["--data", str(a.data)]
    else:
        parts += ["--simulate-chips", str(a.simulate_chips)]
    if a.val_data is not None:
        parts += ["--val-data", str(a.val_data)]
    else:
        parts += ["--val-chips", str(a.val_chips), "--val-seed", str(a.val_seed)]
    for opt in (
        "epochs", "batch_size", "lr", "weight_decay", "dropout", "jitter", "schedule", "pos_weight",
        "threshold", "seed", "threads", "workers",
    ):  # fmt: skip
        parts += ["--" + opt.replace("_", "-"), str(getattr(a, opt))]
    parts += ["--out", str(a.out)]
    return f"{PROG} {shlex.join(parts)}"


def _load_or_generate(a: argparse.Namespace) -> tuple[FlakeDataset, FlakeDataset]:
    progress = not a.quiet
    if a.data is not None:
        train_ds = load_dataset(a.data)
    else:
        train_ds = generate_dataset(
            seed_range(a.seed, a.simulate_chips),
            DatasetSpec(),
            workers=a.workers,
            progress=progress,
            description="training chips",
        )
    if a.val_data is not None:
        val_ds = load_dataset(a.val_data)
    else:
        val_ds = generate_dataset(
            seed_range(a.val_seed, a.val_chips),
            train_ds.spec,
            workers=a.workers,
            progress=progress,
            description="held-out chips",
        )
    overlap = sorted(set(train_ds.seeds) & set(val_ds.seeds))
    if overlap:
        raise ValueError(
            f"held-out chips must be unseen in training, but chip seeds {overlap[:10]} are in "
            "both; change --val-seed (or --seed)"
        )
    for attr in ("crop_um", "input_px", "pixel_size_um"):
        if getattr(train_ds.spec, attr) != getattr(val_ds.spec, attr):
            raise ValueError(
                f"training and held-out crops differ in {attr}: "
                f"{getattr(train_ds.spec, attr)} vs {getattr(val_ds.spec, attr)}"
            )
    if len(val_ds) == 0:
        raise ValueError(f"held-out set from chips {val_ds.seeds} has no crops")
    return train_ds, val_ds


def train_and_export(
    train_ds: FlakeDataset,
    val_ds: FlakeDataset,
    cfg: TrainConfig,
    out: Path,
    *,
    threshold: float = 0.5,
    provenance: dict | None = None,
    started: float | None = None,
    log: bool = True,
) -> tuple[CNN4, ModelCard]:
    """Train CNN-4, score the held-out set, export + verify the ONNX file, write its card.

    `provenance` (command line, threads, ...) goes into the card's training section as is.
    """
    started = time.perf_counter() if started is None else started
    spec = train_ds.spec
    pw = pos_weights(train_ds.y, cfg.pos_weight, cfg.max_pos_weight)  # fail before training
    torch.manual_seed(cfg.seed)  # initial weights do not depend on how the data was obtained
    model = CNN4(num_classes=len(CLASS_NAMES), dropout=cfg.dropout)
    t_train = time.perf_counter()
    history = train(model, train_ds.x, train_ds.y, cfg, log=log)
    train_s = time.perf_counter() - t_train
    metrics = evaluate(model, val_ds, threshold)

    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out, spec.input_px)
    max_diff = verify_onnx(model, out, val_ds.x[:64])
    metrics["onnxruntime_vs_torch_max_abs_diff"] = float(f"{max_diff:.3g}")

    card = ModelCard(
        name=out.stem,
        task="flake-classifier",
        architecture="CNN-4 (conv3x3-BN-ReLU-maxpool x4: 32/64/128/256, GAP, dropout, linear)",
        parameters=count_parameters(model),
        input=ModelInput(
            name="input",
            shape=[None, 3, spec.input_px, spec.input_px],
            representation=REPRESENTATION,
            crop_um=spec.crop_um,
        ),
        output=ModelOutput(name="logits", classes=list(CLASS_NAMES), activation="sigmoid"),
        threshold=threshold,
        training={
            **(provenance or {}),
            "train_chip_seeds": list(train_ds.seeds),
            "heldout_chip_seeds": list(val_ds.seeds),
            "train_crops": train_ds.counts(),
            "heldout_crops": val_ds.counts(),
            "config": asdict(cfg),
            "pos_weight": [round(float(w), 4) for w in pw],
            "loss_per_epoch": [round(v, 5) for v in history],
            "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "torch_version": torch.__version__,
            "onnx_opset": ONNX_OPSET,
            "dataset_spec": spec.to_dict(),
        },
        metrics=metrics,
        onnx_sha256=file_sha256(out),
    )
    card_path = out.with_suffix(".json")
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=1) + "\n")
    tmp.replace(card_path)
    # The file and its card must agree before we report success; return the card as stored.
    return model, load_model_card(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate on held-out chips, export ONNX, verify in ORT, write the card."""
    p = _parser()
    a = p.parse_args(argv)
    if a.val_data is None and a.val_chips is None:
        a.val_chips = 8
    _validate(p, a)
    started = time.perf_counter()
    _seed_everything(a.seed, a.threads)
    train_ds, val_ds = _load_or_generate(a)
    if not a.quiet:
        print(f"training crops {train_ds.counts()}")
        print(f"held-out crops {val_ds.counts()}")
    cfg = TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        dropout=a.dropout,
        jitter=a.jitter,
        schedule=a.schedule,
        pos_weight=a.pos_weight,
        seed=a.seed,
    )
    provenance = {
        "command": _canonical_command(a),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "threads": a.threads,
    }
    _, card = train_and_export(
        train_ds,
        val_ds,
        cfg,
        a.out,
        threshold=a.threshold,
        provenance=provenance,
        started=started,
        log=not a.quiet,
    )
    if not a.quiet:
        m = card.metrics["per_class"]["any"]
        print(
            f"held-out 'any': P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} "
            f"on {len(val_ds)} crops; wrote {a.out} and its card "
            f"in {card.training['wall_seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
