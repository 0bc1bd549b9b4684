"""SimCLR pre-training of a classifier backbone on unlabelled crops (`flakescan train clr`).

As in the GrapheneClassifier seed (after Chen et al. 2020): two random views of every
image go through backbone + projection head, and the NT-Xent loss pulls the two views of
an image together against all other 2N - 2 views of the batch. The loss here is the full
symmetric one -- every one of the 2N views is an anchor once (i -> j and j -> i), as in
the SimCLR paper; the seed's version used only one direction. The run saves the whole
model and the backbone alone; `flakescan train classifier --backbone-weights` loads the
latter for linear evaluation (--freeze-backbone) or fine-tuning.

Images are turned into the classifier's input (contrast 1 - I / per-channel median,
area-resampled to --input-px) exactly as `crop_folder` does for labelled crops.

    python -m flakescan.training.clr --simulate-chips 20 --epochs 10 --out-dir runs/clr
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment, clr_config
from .cli_checks import require_at_least
from .crop_folder import CropFolderError, load_crop_folder
from .resnet import ARCHS, Classifier, build_backbone, save_backbone
from .schedules import cosine_schedule

__all__ = ["ClrConfig", "main", "nt_xent", "pretrain"]

PROG = "python -m flakescan.training.clr"
FULL_FORMAT = "flakescan-clr/1"


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Symmetric NT-Xent over the 2N views: mean over all anchors of -log softmax(positive).

    z_i[k] and z_j[k] are the two views of image k. Each view is an anchor; its positive is
    the other view of the same image, its negatives the other 2N - 2 views; cosine
    similarities are divided by `temperature`.
    """
    if z_i.shape != z_j.shape or z_i.ndim != 2:
        raise ValueError(f"views must be two (N, D) tensors, got {z_i.shape} and {z_j.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z_i.shape[0]
    z = F.normalize(torch.cat([z_i, z_j]), dim=1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # a view is not its own negative
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positive)


@dataclass(frozen=True)
class ClrConfig:
    """Pre-training settings (the seed: 50 epochs, lr 3e-4, weight decay 0.3, batch 256)."""

    arch: str = "cnn4"
    width: float = 1.0
    stem: str = "imagenet"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.3
    temperature: float = 0.5
    proj_hidden: int = 512
    proj_dim: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (negatives, BatchNorm), got {self.batch_size}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def pretrain(
    x: np.ndarray,
    cfg: ClrConfig,
    views: AugmentConfig | None = None,
    *,
    log: bool = True,
) -> tuple[Classifier, list[float]]:
    """Backbone + projection head trained with NT-Xent on (n, 3, s, s) inputs `x`."""
    if len(x) < 2:
        raise ValueError(f"contrastive learning needs >= 2 images, got {len(x)}")
    views = views or clr_config()
    torch.manual_seed(cfg.seed)
    model = Classifier.for_contrastive(
        build_backbone(cfg.arch, cfg.width, cfg.stem),  # type: ignore[arg-type]
        cfg.proj_hidden,
        cfg.proj_dim,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, len(xt))
    steps = cfg.epochs * max(len(xt) // batch, 1)
    sched = cosine_schedule(opt, steps)
    history: list[float] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        running, seen = 0.0, 0
        # Full batches only: the loss of a 2-image remainder says little and is noisy.
        for i in range(0, max(len(order) - batch + 1, 1), batch):
            idx = order[i : i + batch]
            v1, v2 = augment(xt[idx], views, gen), augment(xt[idx], views, gen)
            z = model(torch.cat([v1, v2]))
            loss = nt_xent(z[: len(idx)], z[len(idx) :], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        history.append(running / max(seen, 1))
        if log:
            print(
                f"epoch {epoch + 1:3d}/{cfg.epochs}  nt-xent {history[-1]:.4f}  "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    return model, history


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_outputs(
    model: Classifier, cfg: ClrConfig, history: list[float], out_dir: Path, record: dict
) -> dict[str, Path]:
    """clr_full.pt (backbone + projection head), clr_backbone.pt, clr.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**record, "config": asdict(cfg), "loss_per_epoch": [round(v, 5) for v in history]}
    paths = {
        "full": out_dir / "clr_full.pt",
        "backbone": out_dir / "clr_backbone.pt",
        "summary": out_dir / "clr.json",
    }
    _atomic_save(
        {"format": FULL_FORMAT, "config": asdict(cfg), "state_dict": model.state_dict()},
        paths["full"],
    )
    save_backbone(
        model.backbone,
        paths["backbone"],
        arch=cfg.arch,
        width=cfg.width,
        stem=cfg.stem if cfg.arch == "resnet50" else "-",
        extra={k: v for k, v in summary.items() if k != "loss_per_epoch"},
    )
    tmp = paths["summary"].with_name("clr.json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(paths["summary"])
    return paths


def load_images(
    data_dir: Path | None,
    simulate_chips: int | None,
    seed: int,
    input_px: int,
) -> tuple[np.ndarray, dict]:
    """Unlabelled inputs from a folder, or from simulated chips' crops (labels ignored)."""
    if data_dir is not None:
        crops = load_crop_folder(data_dir, input_px, labelled=False)
        return crops.x, {"data_dir": str(data_dir), "dataset_sha256": crops.sha256}
    from flakescan.simulators.datasets import write_classifier_set

    seeds = list(range(seed, seed + int(simulate_chips or 0)))
    with tempfile.TemporaryDirectory() as tmp:
        write_classifier_set(Path(tmp), seeds)
        crops = load_crop_folder(Path(tmp), input_px, labelled=False)
    return crops.x, {"simulated_chip_seeds": seeds}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="SimCLR pre-training of a classifier backbone on unlabelled crops. "
        "Arguments can come from a file: @config.txt.",
        fromfile_prefix_chars="@",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data-dir", type=Path, help="folder of images (png/jpg/tif), or with images/ inside"
    )
    src.add_argument("--simulate-chips", type=int, metavar="N", help="crops of N simulated chips")
    d = ClrConfig()
    p.add_argument("--arch", choices=ARCHS, default=d.arch)
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier")
    p.add_argument("--stem", choices=["imagenet", "small"], default=d.stem)
    p.add_argument("--input-px", type=int, default=64)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch (N)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--proj-hidden", type=int, default=d.proj_hidden)
    p.add_argument("--proj-dim", type=int, default=d.proj_dim)
    p.add_argument("--seed", type=int, default=d.seed, help="torch seed, first chip seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Pre-train, then write clr_full.pt, clr_backbone.pt and clr.json to --out-dir."""
    p = _parser()
    a = p.parse_args(argv)
    require_at_least(p, a, 1, "simulate_chips", "epochs", "threads", "proj_hidden", "proj_dim")
    if a.batch_size < 2:
        p.error(f"--batch-size must be >= 2, got {a.batch_size}")
    if not (a.temperature > 0 and math.isfinite(a.temperature)):
        p.error(f"--temperature must be > 0, got {a.temperature}")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        p.error(f"--lr must be a positive number, got {a.lr}")
    if not (a.width > 0 and math.isfinite(a.width)):
        p.error(f"--width must be a positive number, got {a.width}")
    if a.input_px < 8:
        p.error(f"--input-px must be >= 8, got {a.input_px}")
    if a.data_dir is not None and not a.data_dir.is_dir():
        p.error(f"--data-dir folder not found: {a.data_dir}")
    torch.set_num_threads(a.threads)
    started = time.perf_counter()
    try:
        x, record = load_images(a.data_dir, a.simulate_chips, a.seed, a.input_px)
    except CropFolderError as exc:
        p.error(str(exc))
    if len(x) < 2:
        p.error(f"--data-dir {a.data_dir}: need at least 2 images, found {len(x)}")
    cfg = ClrConfig(
        arch=a.arch,
        width=a.width,
        stem=a.stem,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        temperature=a.temperature,
        proj_hidden=a.proj_hidden,
        proj_dim=a.proj_dim,
        seed=a.seed,
    )
    if not a.quiet:
        print(f"{len(x)} images of {a.input_px} px; {cfg.arch} width {cfg.width:g}")
    model, history = pretrain(x, cfg, log=not a.quiet)
    record = {
        **record,
        "images": len(x),
        "input_px": a.input_px,
        "views": asdict(clr_config()),
        "threads": a.threads,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torch_version": str(torch.__version__),
    }
    paths = save_outputs(model, cfg, history, a.out_dir, record)
    if not a.quiet:
        print(
            f"wrote {paths['backbone']} (backbone) and {paths['full']} in "
            f"{record['wall_seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
