"""Train the flake classifier (CNN-4 or ResNet-50) and export it as ONNX with its card.

Multi-label targets [class1, class2, class3, any] as in the GrapheneClassifier seed, AdamW
(lr 3e-4, weight decay 0.2) on BCE-with-logits, rebalanced per class with pos_weight =
sqrt(negatives / positives). Held-out metrics come from chips whose seeds the training never
saw, next to the baseline of the preselection's contrast bins alone.
The ONNX file is checked against PyTorch in ONNX Runtime before its card is written, and the
card records the command line that reproduces the file.

The shipped model (`inference/models/flake_classifier_cnn4.onnx`):

    flakescan train classifier --simulate-chips 80 --seed 1 --val-chips 10 --val-seed 10001 \
        --epochs 40 --jitter 0 --contrast-scale 0.12 --bin-features --threads 2 --workers 2 \
        --out inference/models/flake_classifier_cnn4.onnx

Data come from simulated chips (--simulate-chips / --data .npz) or from a lab's folder of
labelled crops (--data-dir, see `crop_folder`); a SimCLR backbone from `clr` can be loaded
(--backbone-weights) and frozen for linear evaluation (--freeze-backbone) or fine-tuned.
Everything added after the first shipped model (ResNet, folders, extra augmentations,
contrast-bin features, contrast-scale relabelling) is opt-in: with those options off the
first model's command draws the same random numbers and writes the same bytes as before.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
from flakescan.simulators.datasets import CLASS_BINS

from . import export as _export
from .augment import AugmentConfig, augment
from .cli_checks import require_at_least
from .cnn4 import CNN4
from .crop_folder import CropFolderError, CropSet, load_crop_folder
from .flake_dataset import (
    CLASS_NAMES,
    SOURCE_CANDIDATE,
    DatasetSpec,
    FlakeDataset,
    generate_dataset,
    labels_at_scale,
    load_dataset,
    seed_range,
)
from .resnet import ARCHS, Classifier, load_backbone_into, read_backbone, resnet50_backbone
from .schedules import cosine_schedule

__all__ = [
    "Relabel",
    "TrainConfig",
    "build_model",
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
ONNX_OPSET = _export.ONNX_OPSET
ORT_TOLERANCE = _export.ORT_TOLERANCE

Crops = FlakeDataset | CropSet
# The GrapheneClassifier's bins of R contrast (<= 12 %, 12-19 %, 19-30 %): a folder's labels.
DEFAULT_CLASS_BINS = CLASS_BINS


def class_bins_of(ds: Crops) -> tuple[float, ...]:
    """The bins a set was labelled with: a simulated set's preselection bins, else the seed's."""
    if isinstance(ds, FlakeDataset):
        return tuple(ds.spec.preselection.class_bins)
    return DEFAULT_CLASS_BINS


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
    # ---- added after the first shipped model; the defaults leave its training untouched.
    arch: str = "cnn4"
    width: float = 1.0  # channel multiplier: ResNet-50(2X) of the seed is 2.0
    stem: str = "imagenet"  # ResNet stem: "imagenet" (7x7/2 + pool) or "small" (3x3/1)
    freeze_backbone: bool = False  # linear evaluation: only the head learns
    dihedral: bool = True
    channel_jitter: float = 0.0
    offset_jitter: float = 0.0
    rotate_deg: float = 0.0
    crop_scale: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    # Scale each crop's contrast by 1 +- contrast_scale, as a change of flare does, and
    # recompute its labels from its flakes' scaled contrasts (simulated sets only: they keep
    # each crop's flake contrasts). Unlike `jitter`, a crop never keeps a label its new
    # contrast has left, and flakes of every contrast reach the bin edges.
    contrast_scale: float = 0.0
    # CNN-4 only: the fixed `ContrastBins` front-end at the class-bin edges of R contrast.
    bin_features: bool = False

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(
            dihedral=self.dihedral,
            jitter=self.jitter,
            channel_jitter=self.channel_jitter,
            offset_jitter=self.offset_jitter,
            rotate_deg=self.rotate_deg,
            crop_scale=self.crop_scale,
            blur_sigma=self.blur_sigma,
            noise_std=self.noise_std,
        )

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
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.bin_features and self.arch != "cnn4":
            raise ValueError(f"bin_features needs arch 'cnn4', got {self.arch!r}")
        if not 0 <= self.contrast_scale < 0.5:
            raise ValueError(f"contrast_scale must be in [0, 0.5), got {self.contrast_scale}")
        self.augment_config()  # range checks of the augmentation settings


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


def build_model(
    cfg: TrainConfig,
    num_classes: int = len(CLASS_NAMES),
    class_bins: Sequence[float] = DEFAULT_CLASS_BINS,
) -> nn.Module:
    """The network of `cfg.arch`, freshly initialised from the torch seed as it stands.

    Both kinds expose `.backbone` (-> feature vector) and `.head` (-> logits). With
    `cfg.bin_features` the CNN-4 steps its R contrast at the upper edges of `class_bins`.
    """
    if cfg.arch == "cnn4":
        channels = tuple(max(1, round(c * cfg.width)) for c in (32, 64, 128, 256))
        edges = tuple(class_bins[1:]) if cfg.bin_features else None
        return CNN4(
            num_classes=num_classes, dropout=cfg.dropout, channels=channels, bin_edges=edges
        )
    backbone = resnet50_backbone(cfg.width, cfg.stem)  # type: ignore[arg-type]
    return Classifier.for_classes(backbone, num_classes, cfg.dropout)


def freeze_backbone(model: nn.Module) -> None:
    """Linear evaluation: backbone weights and BatchNorm statistics stay as loaded."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone.eval()


@dataclass(frozen=True)
class Relabel:
    """What `contrast_scale` needs to recompute a crop's labels: the measured R contrasts of
    its labelling flakes (n, k, NaN-padded), the lowest scale each crop allows, the bins."""

    flake_r: np.ndarray
    scale_floor: np.ndarray
    bins: tuple[float, ...]

    @classmethod
    def of(cls, ds: Crops) -> Relabel | None:
        if isinstance(ds, CropSet) or ds.flake_r is None or ds.scale_floor is None:
            return None
        return cls(ds.flake_r, ds.scale_floor, class_bins_of(ds))

    def draw(
        self, idx: torch.Tensor, amount: float, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-crop scales in 1 +- amount (never at or below a crop's floor), and the labels
        the scaled crops carry."""
        s = 1.0 + (torch.rand(len(idx), generator=gen, dtype=torch.float64) * 2 - 1) * amount
        i = idx.numpy()
        # float32, as applied to the crop; the labels come from that very number.
        s = np.maximum(s.numpy(), self.scale_floor[i] * (1 + 1e-6)).astype(np.float32)
        y = labels_at_scale(self.flake_r[i], s.astype(np.float64), self.bins)
        return torch.from_numpy(s), torch.from_numpy(y.astype(np.float32))


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    log: bool = True,
    relabel: Relabel | None = None,
) -> list[float]:
    """Fit `model` in place; returns the mean training loss per epoch.

    `relabel` (from a simulated set) is needed by `cfg.contrast_scale`."""
    if cfg.contrast_scale > 0 and relabel is None:
        raise ValueError(
            f"contrast_scale {cfg.contrast_scale} needs each crop's flake contrasts to move "
            "its labels; a folder of crops (or a set written before they were kept) has none"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    pw = torch.from_numpy(pos_weights(y, cfg.pos_weight, cfg.max_pos_weight).astype(np.float32))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw)
    if cfg.freeze_backbone:
        freeze_backbone(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    aug = cfg.augment_config()
    steps_per_epoch = math.ceil(len(xt) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        sched = cosine_schedule(opt, total)
    else:  # "constant", as the seed trained
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    history: list[float] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        if cfg.freeze_backbone:
            model.backbone.eval()  # BatchNorm statistics are part of the frozen features
        order = torch.randperm(len(xt), generator=gen)
        running, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples; at most one is dropped per epoch
            xb, yb = augment(xt[idx], aug, gen), yt[idx]
            if cfg.contrast_scale > 0 and relabel is not None:
                scale, yb = relabel.draw(idx, cfg.contrast_scale, gen)
                xb = xb * scale[:, None, None, None]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
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


def evaluate(model: nn.Module, ds: Crops, threshold: float) -> dict:
    """Held-out metrics of the network; for simulated chips also the preselection-bins
    baseline on candidates (a folder of crops has no preselection to compare with)."""
    logits = predict_logits(model, ds.x)
    pred = 1.0 / (1.0 + np.exp(-logits)) >= threshold
    if isinstance(ds, CropSet):
        return {
            "threshold": threshold,
            "heldout_dir": str(ds.root),
            "heldout_crops": len(ds),
            "per_class": per_class_metrics(pred, ds.y),
        }
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


def export_onnx(model: nn.Module, path: Path, input_px: int) -> dict:
    """ONNX with a dynamic batch, input "input" [batch, 3, px, px] -> output "logits", via
    the shared exporter (pinned opset, IR version ONNX Runtime reads); returns its versions."""
    example = torch.zeros(1, 3, input_px, input_px)
    return _export.export_onnx(model, Path(path), example, output_name="logits")


def verify_onnx(model: nn.Module, path: Path, x: np.ndarray) -> float:
    """Max |ORT - torch| over a batch; raises if above ORT_TOLERANCE or shapes disagree."""
    return _export.verify_onnx(model, Path(path), x, output_name="logits")


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train the flake classifier (CNN-4 or ResNet-50); export ONNX + card. "
        "Arguments can come from a file: @config.txt (one argument per line).",
        fromfile_prefix_chars="@",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="training set .npz (from flake_dataset)")
    src.add_argument(
        "--simulate-chips", type=int, metavar="N", help="generate N chips, seeds S..S+N-1"
    )
    src.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="folder of labelled crops: DIR/images/<name>.png + DIR/labels/<name>.txt",
    )
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-data", type=Path, help="held-out set .npz (disjoint chip seeds)")
    val.add_argument(
        "--val-chips", type=int, metavar="M", help="generate M held-out chips (default 8)"
    )
    val.add_argument("--val-dir", type=Path, metavar="DIR", help="held-out folder of crops")
    p.add_argument(
        "--val-seed", type=int, default=10_001, help="first held-out chip seed (default 10001)"
    )
    p.add_argument(
        "--crop-um",
        type=float,
        help="physical side of folder crops in um (default: crop_um of DIR/dataset.json)",
    )
    p.add_argument("--input-px", type=int, default=64, help="network input side (default 64)")
    d = TrainConfig()
    p.add_argument("--arch", choices=ARCHS, default=d.arch, help="network (default cnn4)")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier")
    p.add_argument("--stem", choices=["imagenet", "small"], default=d.stem, help="ResNet stem")
    p.add_argument("--backbone-weights", type=Path, help="backbone .pt from `flakescan train clr`")
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="linear evaluation: train only the head on the loaded backbone",
    )
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
    aug = p.add_argument_group("extra augmentations (opt-in)")
    aug.add_argument(
        "--no-dihedral", action="store_true", help="no random 90-degree rotations / flips"
    )
    aug.add_argument("--rotate-deg", type=float, default=0.0, help="small rotations, +-deg")
    aug.add_argument(
        "--crop-scale", type=float, default=1.0, help="random crop of side >= this share"
    )
    aug.add_argument("--channel-jitter", type=float, default=0.0, help="per-channel scale")
    aug.add_argument("--offset-jitter", type=float, default=0.0, help="contrast offset")
    aug.add_argument("--blur-sigma", type=float, default=0.0, help="max Gaussian blur, px")
    aug.add_argument("--noise-std", type=float, default=0.0, help="additive noise")
    p.add_argument(
        "--bin-features",
        action="store_true",
        help="CNN-4 fed, besides the crop, a soft step of its R contrast at each class-bin "
        "edge (fixed, inside the ONNX file)",
    )
    aug.add_argument(
        "--contrast-scale",
        type=float,
        default=0.0,
        help="scale each crop's contrast by 1 +- this (a flare change) and recompute its "
        "labels from its flakes' scaled contrasts; simulated sets only",
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


# Options added after the first shipped model: spelled out in the card's command only when
# set, so a card's recorded command stays the command that reproduces its model.
_NEW_OPTIONS = {
    "arch": "cnn4",
    "width": 1.0,
    "stem": "imagenet",
    "input_px": 64,
    "crop_um": None,
    "backbone_weights": None,
    "rotate_deg": 0.0,
    "crop_scale": 1.0,
    "channel_jitter": 0.0,
    "offset_jitter": 0.0,
    "blur_sigma": 0.0,
    "noise_std": 0.0,
    "contrast_scale": 0.0,
}


def _validate(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    require_at_least(
        p, a, 1, "simulate_chips", "val_chips", "epochs", "batch_size", "threads", "workers"
    )
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
    if not (a.width > 0 and math.isfinite(a.width)):
        p.error(f"--width must be a positive number, got {a.width}")
    if a.input_px < 8:
        p.error(f"--input-px must be >= 8, got {a.input_px}")
    if a.crop_um is not None and not a.crop_um > 0:
        p.error(f"--crop-um must be > 0, got {a.crop_um}")
    ranges = {
        "--rotate-deg": (a.rotate_deg, 0, 45),
        "--crop-scale": (a.crop_scale, 0.2, 1.0),
        "--channel-jitter": (a.channel_jitter, 0, 0.49),
        "--offset-jitter": (a.offset_jitter, 0, 0.2),
        "--blur-sigma": (a.blur_sigma, 0, 5),
        "--noise-std": (a.noise_std, 0, 0.2),
        "--contrast-scale": (a.contrast_scale, 0, 0.49),
    }
    for name, (value, lo, hi) in ranges.items():
        if not lo <= value <= hi:
            p.error(f"{name} must be in [{lo}, {hi}], got {value}")
    if a.out.suffix != ".onnx":
        p.error(f"--out must end in .onnx, got {str(a.out)!r}")
    for name, path in (
        ("--data", a.data),
        ("--val-data", a.val_data),
        ("--backbone-weights", a.backbone_weights),
    ):
        if path is not None and not path.is_file():
            p.error(f"{name} file not found: {path}")
    for name, path in (("--data-dir", a.data_dir), ("--val-dir", a.val_dir)):
        if path is not None and not path.is_dir():
            p.error(f"{name} folder not found: {path}")
    if a.freeze_backbone and a.backbone_weights is None:
        p.error("--freeze-backbone needs --backbone-weights (a frozen random backbone)")
    if a.bin_features and a.arch != "cnn4":
        p.error(f"--bin-features is a CNN-4 front-end; --arch is {a.arch}")
    if a.bin_features and a.backbone_weights is not None:
        p.error("--bin-features changes the CNN-4's input channels; a pre-trained backbone has 3")
    if a.contrast_scale > 0 and a.data_dir is not None:
        p.error(
            f"--contrast-scale {a.contrast_scale} moves labels with each crop's flake "
            f"contrasts, which only simulated sets keep; --data-dir {a.data_dir} has none "
            "(use --jitter for a folder of crops)"
        )


def _canonical_command(a: argparse.Namespace) -> str:
    """Every option spelled out, so the card's command does not depend on today's defaults."""
    parts: list[str] = []
    if a.data is not None:
        parts += ["--data", str(a.data)]
    elif a.data_dir is not None:
        parts += ["--data-dir", str(a.data_dir)]
    else:
        parts += ["--simulate-chips", str(a.simulate_chips)]
    if a.val_data is not None:
        parts += ["--val-data", str(a.val_data)]
    elif a.val_dir is not None:
        parts += ["--val-dir", str(a.val_dir)]
    else:
        parts += ["--val-chips", str(a.val_chips), "--val-seed", str(a.val_seed)]
    for opt, default in _NEW_OPTIONS.items():
        value = getattr(a, opt)
        if value != default:
            parts += ["--" + opt.replace("_", "-"), str(value)]
    if a.freeze_backbone:
        parts.append("--freeze-backbone")
    if a.bin_features:
        parts.append("--bin-features")
    if a.no_dihedral:
        parts.append("--no-dihedral")
    for opt in (
        "epochs", "batch_size", "lr", "weight_decay", "dropout", "jitter", "schedule", "pos_weight",
        "threshold", "seed", "threads", "workers",
    ):  # fmt: skip
        parts += ["--" + opt.replace("_", "-"), str(getattr(a, opt))]
    parts += ["--out", str(a.out)]
    return f"{PROG} {shlex.join(parts)}"


def _geometry(ds: Crops) -> tuple[int, float]:
    """(input_px, crop_um) of a data set, whatever its source."""
    if isinstance(ds, CropSet):
        return ds.input_px, ds.crop_um
    return ds.spec.input_px, ds.spec.crop_um


def _load_or_generate(a: argparse.Namespace) -> tuple[Crops, Crops]:
    progress = not a.quiet
    train_ds: Crops
    val_ds: Crops
    if a.data is not None:
        train_ds = load_dataset(a.data)
    elif a.data_dir is not None:
        train_ds = load_crop_folder(a.data_dir, a.input_px, crop_um=a.crop_um)
    else:
        train_ds = generate_dataset(
            seed_range(a.seed, a.simulate_chips),
            DatasetSpec() if a.input_px == 64 else DatasetSpec(input_px=a.input_px),
            workers=a.workers,
            progress=progress,
            description="training chips",
        )
    input_px, crop_um = _geometry(train_ds)
    if a.val_data is not None:
        val_ds = load_dataset(a.val_data)
    elif a.val_dir is not None:
        val_ds = load_crop_folder(a.val_dir, input_px, crop_um=a.crop_um)
    else:
        spec = (
            train_ds.spec
            if isinstance(train_ds, FlakeDataset)
            else DatasetSpec(crop_um=crop_um, input_px=input_px)
        )
        val_ds = generate_dataset(
            seed_range(a.val_seed, a.val_chips),
            spec,
            workers=a.workers,
            progress=progress,
            description="held-out chips",
        )
    if isinstance(train_ds, FlakeDataset) and isinstance(val_ds, FlakeDataset):
        overlap = sorted(set(train_ds.seeds) & set(val_ds.seeds))
        if overlap:
            raise ValueError(
                f"held-out chips must be unseen in training, but chip seeds {overlap[:10]} are "
                "in both; change --val-seed (or --seed)"
            )
        if train_ds.spec.pixel_size_um != val_ds.spec.pixel_size_um:
            raise ValueError(
                "training and held-out crops differ in pixel_size_um: "
                f"{train_ds.spec.pixel_size_um} vs {val_ds.spec.pixel_size_um}"
            )
    if isinstance(train_ds, CropSet) and isinstance(val_ds, CropSet):
        shared = sorted(set(train_ds.names) & set(val_ds.names))
        if shared:
            raise ValueError(
                f"held-out crops must be unseen in training, but {len(shared)} crop names are "
                f"in both {train_ds.root} and {val_ds.root} (e.g. {shared[0]!r})"
            )
    for attr, t, v in zip(
        ("input_px", "crop_um"), _geometry(train_ds), _geometry(val_ds), strict=True
    ):
        if t != v:
            raise ValueError(f"training and held-out crops differ in {attr}: {t} vs {v}")
    if len(val_ds) == 0:
        raise ValueError("held-out set has no crops")
    return train_ds, val_ds


def _data_record(train_ds: Crops, val_ds: Crops) -> dict:
    """What the card says about the data: chip seeds for simulated sets, folder + hash else."""
    out: dict = {}
    for role, ds in (("train", train_ds), ("heldout", val_ds)):
        if isinstance(ds, CropSet):
            out[f"{role}_dir"] = str(ds.root)
            out[f"{role}_dataset_sha256"] = ds.sha256
            out[f"{role}_background"] = "per-channel median of each crop"
        else:
            out[f"{role}_chip_seeds"] = list(ds.seeds)
        out[f"{role}_crops"] = ds.counts()
    if isinstance(train_ds, CropSet):
        out["dataset_sha256"] = train_ds.sha256
    if isinstance(train_ds, FlakeDataset):
        out["dataset_spec"] = train_ds.spec.to_dict()
    return out


def _architecture(cfg: TrainConfig, class_bins: Sequence[float] = DEFAULT_CLASS_BINS) -> str:
    if cfg.arch == "cnn4":
        front = ""
        if cfg.bin_features:
            edges = "/".join(f"{100 * e:g}" for e in class_bins[1:])
            front = f", fed crop + fixed soft steps of R contrast at {edges} % (ContrastBins)"
        if cfg.width == 1.0:
            return "CNN-4 (conv3x3-BN-ReLU-maxpool x4: 32/64/128/256, GAP, dropout, linear)" + front
        return (
            f"CNN-4 width {cfg.width:g} (conv3x3-BN-ReLU-maxpool x4, GAP, dropout, linear)" + front
        )
    return (
        f"ResNet-50({cfg.width:g}X) (bottleneck 3-4-6-3, BN, {cfg.stem} stem, GAP, dropout, linear)"
    )


def train_and_export(
    train_ds: Crops,
    val_ds: Crops,
    cfg: TrainConfig,
    out: Path,
    *,
    threshold: float = 0.5,
    provenance: dict | None = None,
    started: float | None = None,
    log: bool = True,
    backbone_weights: Path | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Train, score the held-out set, export + verify the ONNX file, write its card.

    `provenance` (command line, threads, ...) goes into the card's training section as is.
    `backbone_weights` (from `clr`) initialise the backbone; `cfg.freeze_backbone` keeps them.
    """
    started = time.perf_counter() if started is None else started
    input_px, crop_um = _geometry(train_ds)
    pw = pos_weights(train_ds.y, cfg.pos_weight, cfg.max_pos_weight)  # fail before training
    torch.manual_seed(cfg.seed)  # initial weights do not depend on how the data was obtained
    model = build_model(cfg, class_bins=class_bins_of(train_ds))
    pretrained: dict = {}
    if backbone_weights is not None:
        blob = read_backbone(backbone_weights)
        load_backbone_into(model.backbone, blob, arch=cfg.arch, width=cfg.width)
        pretrained = {
            "backbone_weights": str(backbone_weights),
            "backbone_weights_sha256": file_sha256(Path(backbone_weights)),
            "backbone_pretraining": blob.get("extra", {}),
        }
    t_train = time.perf_counter()
    history = train(model, train_ds.x, train_ds.y, cfg, log=log, relabel=Relabel.of(train_ds))
    train_s = time.perf_counter() - t_train
    metrics = evaluate(model, val_ds, threshold)

    out.parent.mkdir(parents=True, exist_ok=True)
    versions = export_onnx(model, out, input_px)
    max_diff = verify_onnx(model, out, np.asarray(val_ds.x[:64], np.float32))
    metrics["onnxruntime_vs_torch_max_abs_diff"] = float(f"{max_diff:.3g}")

    card = ModelCard(
        name=out.stem,
        task="flake-classifier",
        architecture=_architecture(cfg, class_bins_of(train_ds)),
        parameters=sum(p.numel() for p in model.parameters()),
        input=ModelInput(
            name="input",
            shape=[None, 3, input_px, input_px],
            representation=REPRESENTATION,
            crop_um=crop_um,
        ),
        output=ModelOutput(name="logits", classes=list(CLASS_NAMES), activation="sigmoid"),
        threshold=threshold,
        training={
            **(provenance or {}),
            **_data_record(train_ds, val_ds),
            **pretrained,
            "config": asdict(cfg),
            "pos_weight": [round(float(w), 4) for w in pw],
            "loss_per_epoch": [round(v, 5) for v in history],
            "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            **versions,
        },
        metrics=metrics,
        onnx_sha256=file_sha256(out),
    )
    # The file and its card must agree before we report success; return the card as stored.
    return model, _export.write_card(card, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate on held-out data, export ONNX, verify in ORT, write the card."""
    p = _parser()
    a = p.parse_args(argv)
    if a.val_data is None and a.val_chips is None and a.val_dir is None:
        if a.data_dir is not None:
            p.error("--data-dir needs a held-out set: --val-dir DIR (or --val-chips M)")
        a.val_chips = 8
    _validate(p, a)
    if a.backbone_weights is not None:  # fail before spending minutes on data
        try:
            blob = read_backbone(a.backbone_weights)
        except ValueError as exc:
            p.error(f"--backbone-weights: {exc}")
        if blob["arch"] != a.arch or abs(blob["width"] - a.width) > 1e-9:
            p.error(
                f"--backbone-weights {a.backbone_weights} holds a {blob['arch']} width "
                f"{blob['width']:g} backbone; pass --arch {blob['arch']} --width {blob['width']:g}"
            )
    started = time.perf_counter()
    _seed_everything(a.seed, a.threads)
    try:
        train_ds, val_ds = _load_or_generate(a)
    except CropFolderError as exc:
        p.error(str(exc))
    if a.contrast_scale > 0 and Relabel.of(train_ds) is None:
        p.error(
            f"--contrast-scale {a.contrast_scale}: --data {a.data} keeps no flake contrasts "
            "(written before they were kept); generate it again"
        )
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
        arch=a.arch,
        width=a.width,
        stem=a.stem,
        freeze_backbone=a.freeze_backbone,
        dihedral=not a.no_dihedral,
        channel_jitter=a.channel_jitter,
        offset_jitter=a.offset_jitter,
        rotate_deg=a.rotate_deg,
        crop_scale=a.crop_scale,
        blur_sigma=a.blur_sigma,
        noise_std=a.noise_std,
        contrast_scale=a.contrast_scale,
        bin_features=a.bin_features,
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
        backbone_weights=a.backbone_weights,
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
