"""Train the phase-retrieval models, evaluate them on unseen structures, export ONNX + cards.

The seed's four models (linear regression, 3-layer fully connected, 3-layer 3D CNN, 3D
U-net; `phase_models`) learn the phases of the structure factors on the 13^3 grid from
their amplitudes. The data set (`simulators.structure_factors`) holds displaced copies of
~90 crystals split by family: "train" and "val" (held-out displacements of the training
structures), "select" (held-out structures that choose each model's best epoch) and
"test" (held-out structures never used for any choice). The loss is 1 - cos(phase error)
weighted by |F|^p, minimised over the origin shift and the enantiomorph (`phase_loss`).

Each model is exported through `training.export` (checked in ONNX Runtime against
PyTorch) and evaluated *as served* (ONNX Runtime): loss, mean |phase error| weighted and
unweighted, density R-factor, after the best origin / enantiomorph alignment, beside two
references that need no model: all phases 0 and random phases. A Markdown report with
plots goes next to the models.

    flakescan train phase --data /tmp/phase-set.npz --out-dir /work/phase-models \\
        --models all --epochs 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from flakescan.inference.backends import create_backend
from flakescan.inference.model_card import ModelCard, ModelInput, ModelOutput, file_sha256
from flakescan.inference.phase_grid import decode_phases, model_input, score_phases
from flakescan.inference.phase_retrieval import (
    OUTPUT_ENCODING,
    OUTPUT_NAME,
    PHASE_TASK,
    REPRESENTATION,
)

from .cli_checks import require_at_least
from .export import dataset_sha256, export_onnx, verify_onnx, write_card
from .phase_models import MODEL_CHOICES, augment, build_model, describe, loss_weights, phase_loss

__all__ = ["PhaseTrainConfig", "evaluate_backend", "main", "train_model"]


@dataclass
class PhaseTrainConfig:
    model: str = "unet"
    width: int | None = None
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "invariant"
    weight_power: float = 1.0
    shift_grid: int = 32
    augment: bool = True
    seed: int = 0
    threads: int = 1


def _batches(n: int, size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, size):
        yield order[i : i + size]


def _eval_loss(model, x, phases, cfg: PhaseTrainConfig, batch: int = 256) -> float:
    if len(x) == 0:
        return float("nan")
    model.eval()
    total = 0.0
    with torch.no_grad():
        for idx in _batches(len(x), batch, None):
            xb = torch.from_numpy(x[idx])
            loss = phase_loss(
                model(xb),
                torch.from_numpy(phases[idx]),
                loss_weights(xb, cfg.weight_power),
                cfg.loss,
                cfg.shift_grid,
            )
            total += float(loss) * len(idx)
    return total / len(x)


def train_model(
    cfg: PhaseTrainConfig,
    x_train: np.ndarray,
    p_train: np.ndarray,
    monitors: dict[str, tuple[np.ndarray, np.ndarray]],
    select: str | None = None,
    log=print,
) -> tuple[torch.nn.Module, dict]:
    """Train one model; per-epoch losses on the training batches and on each monitored
    split; the weights of the epoch with the lowest loss on `select` are kept."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(cfg.model, cfg.width, cfg.dropout)
    conv = cfg.model in ("cnn", "unet")
    fmt = torch.channels_last_3d if conv else torch.contiguous_format  # ~1.5x on the CPU
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, math.ceil(len(x_train) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1
    )
    history: dict = {"epoch": [], "train_loss_per_epoch": [], "seconds_per_epoch": []}
    for name in monitors:
        history[f"{name}_loss_per_epoch"] = []
    best, best_state, best_epoch = math.inf, None, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        for idx in _batches(len(x_train), cfg.batch_size, rng):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb, pb = x_train[idx], p_train[idx]
            if cfg.augment:
                xb, pb = augment(xb, pb, rng)
            xt = torch.from_numpy(np.ascontiguousarray(xb)).contiguous(memory_format=fmt)
            loss = phase_loss(
                model(xt),
                torch.from_numpy(np.ascontiguousarray(pb)),
                loss_weights(xt, cfg.weight_power),
                cfg.loss,
                cfg.shift_grid,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        history["epoch"].append(epoch)
        history["train_loss_per_epoch"].append(round(total / max(seen, 1), 5))
        line = f"{cfg.model:6s} epoch {epoch:3d} train {total / max(seen, 1):.4f}"
        for name, (xm, pm) in monitors.items():
            v = _eval_loss(model, xm, pm, cfg)
            history[f"{name}_loss_per_epoch"].append(round(v, 5))
            line += f" {name} {v:.4f}"
        key = history.get(f"{select}_loss_per_epoch") if select else None
        score = key[-1] if key else -epoch  # no selection split: keep the last epoch
        if score < best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        dt = time.perf_counter() - t0
        history["seconds_per_epoch"].append(round(dt, 1))
        log(f"{line} ({dt:.1f} s)")
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)
    history["best_epoch"] = best_epoch
    history["selected_by"] = f"lowest {select} loss" if select else "last epoch"
    return model.eval(), history


def evaluate_backend(
    run, x: np.ndarray, phases: np.ndarray, amplitudes: np.ndarray, mask: np.ndarray
):
    """Scores (`phase_grid.PhaseScores`) of a model run as `run(batch) -> outputs`."""
    out = np.concatenate([run(x[i : i + 64]) for i in range(0, len(x), 64)])
    return score_phases(decode_phases(out), phases, amplitudes, mask), out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan train phase",
        description="Train the phase-retrieval models (linear, fc, cnn, unet) on simulated "
        "structure factors; evaluate on unseen structures; export ONNX + model cards + report.",
        fromfile_prefix_chars="@",
    )
    d = p.add_argument_group("data (written to --data if it does not exist)")
    d.add_argument("--data", type=Path, required=True, help="the data set (.npz)")
    d.add_argument("--samples-per-structure", type=int, default=60, help="training crystals")
    d.add_argument("--held-out-samples", type=int, default=40, help="select/test crystals")
    d.add_argument("--val-fraction", type=float, default=0.2, help="held-out displacements")
    d.add_argument("--test-structures", type=int, default=10, help="at least this many")
    d.add_argument("--select-structures", type=int, default=8, help="at least this many")
    d.add_argument(
        "--random-structures",
        type=int,
        default=0,
        help="also train on N synthetic random crystals (family 'random', never held out)",
    )
    d.add_argument(
        "--structures",
        nargs="+",
        metavar="NAME",
        help="only these crystals of the catalogue (default: all of them)",
    )
    d.add_argument(
        "--random-samples", type=int, default=10, help="displaced copies per random crystal"
    )
    d.add_argument("--sigma-a", type=float, default=0.05, help="displacement along a, in a")
    d.add_argument("--sigma-iso", type=float, default=0.0, help="isotropic displacement, A")
    d.add_argument("--energy-kev", type=float, default=10.0, help="X-ray energy")
    d.add_argument("--default-uiso", type=float, default=0.005, help="Uiso where a CIF has 0")
    d.add_argument("--split-seed", type=int, default=0, help="which families are held out")
    d.add_argument("--data-seed", type=int, default=0, help="displacements")
    t = p.add_argument_group("training")
    t.add_argument(
        "--models",
        nargs="+",
        default=["all"],
        choices=[*MODEL_CHOICES, "all"],
        help="which models (default all four)",
    )
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument(
        "--model-epochs",
        nargs="*",
        default=[],
        metavar="MODEL=N",
        help="epochs of one model instead of --epochs (e.g. unet=15)",
    )
    t.add_argument(
        "--monitor-samples", type=int, default=400, help="val/select samples scored per epoch"
    )
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle)")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--loss", default="invariant", choices=["invariant", "canonical"])
    t.add_argument("--weight-power", type=float, default=1.0, help="loss weight |F|^p")
    t.add_argument("--shift-grid", type=int, default=32, help="origin shifts per axis (loss)")
    t.add_argument("--no-augment", action="store_true", help="no index-cube symmetries")
    t.add_argument(
        "--width",
        nargs="*",
        default=[],
        metavar="MODEL=N",
        help="size per model: linear rank, fc hidden, cnn/unet channels",
    )
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads")
    p.add_argument("--out-dir", type=Path, required=True, help="models, cards and report")
    p.add_argument("--prefix", default="phase", help="model file names: PREFIX_MODEL.onnx")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[dict, dict]:
    require_at_least(
        p, a, 1, "epochs", "threads", "samples_per_structure", "held_out_samples", "random_samples"
    )
    require_at_least(p, a, 0, "test_structures", "select_structures", "random_structures")
    if a.batch_size < 2:
        p.error(f"--batch-size must be >= 2 (BatchNorm), got {a.batch_size}")
    if not (a.lr > 0 and a.weight_decay >= 0):
        p.error(f"--lr must be > 0 and --weight-decay >= 0, got {a.lr}, {a.weight_decay}")
    if not 0 <= a.val_fraction < 1:
        p.error(f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    if not 0 <= a.sigma_a <= 0.25:
        p.error(f"--sigma-a must be in 0..0.25 (fraction of a), got {a.sigma_a}")
    if not 0 <= a.sigma_iso <= 1:
        p.error(f"--sigma-iso must be in 0..1 angstrom, got {a.sigma_iso}")
    if not 1 <= a.energy_kev <= 100:
        p.error(f"--energy-kev must be in 1..100, got {a.energy_kev}")
    if not 0 <= a.default_uiso <= 0.1:
        p.error(f"--default-uiso must be in 0..0.1 A^2, got {a.default_uiso}")
    if not 0 <= a.weight_power <= 2:
        p.error(f"--weight-power must be in 0..2, got {a.weight_power}")
    if not 13 <= a.shift_grid <= 64:
        p.error(
            f"--shift-grid must be in 13..64 (>= the 13 reflections per axis), got {a.shift_grid}"
        )
    if not 0 <= a.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {a.dropout}")
    if a.data.suffix != ".npz":
        p.error(f"--data must end in .npz, got {a.data}")
    require_at_least(p, a, 1, "monitor_samples")
    return _per_model(p, "--width", a.width), _per_model(p, "--model-epochs", a.model_epochs)


def _per_model(p: argparse.ArgumentParser, option: str, items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in MODEL_CHOICES or not value.isdigit() or int(value) < 1:
            p.error(
                f"{option} {item!r}: expected MODEL=N, N >= 1, MODEL in {', '.join(MODEL_CHOICES)}"
            )
        out[key] = int(value)
    return out


def _generation(a: argparse.Namespace) -> dict:
    keys = (
        "samples_per_structure", "held_out_samples", "val_fraction", "test_structures",
        "select_structures", "random_structures", "random_samples", "sigma_a", "sigma_iso",
        "energy_kev", "default_uiso", "split_seed", "data_seed", "structures",
    )  # fmt: skip
    return {k: getattr(a, k) for k in keys}


def _dataset(a: argparse.Namespace):
    """The data set at --data: reused if it was made with the same settings, else made."""
    from flakescan.simulators import crystal_catalogue as cat
    from flakescan.simulators import structure_factors as sf

    gen = _generation(a)
    if a.data.is_file():
        ds = sf.load_dataset(a.data)
        if ds.meta.get("generation") != gen:
            raise ValueError(
                f"--data {a.data} was made with other settings ({ds.meta.get('generation')}); "
                "give the same data options, or another --data path"
            )
        print(f"reusing the data set {a.data} (same settings)")
        return ds, 0.0
    t0 = time.perf_counter()
    structures = cat.builtin_structures(a.energy_kev)
    if a.structures:
        known = {s.name for s in structures}
        unknown = sorted(set(a.structures) - known)
        if unknown:
            raise ValueError(
                f"--structures: {', '.join(unknown)} not in the catalogue "
                f"(known: {', '.join(sorted(known))})"
            )
        structures = [s for s in structures if s.name in set(a.structures)]
    splits = sf.split_structures(
        structures, a.test_structures, a.select_structures, seed=a.split_seed
    )
    rng = np.random.default_rng(a.data_seed + 10_000)
    extra = [cat.random_structure(rng, i) for i in range(a.random_structures)]
    print(f"simulating {len(structures)} crystals (+{len(extra)} random) into {a.data}")
    ds = sf.generate_dataset(
        a.data,
        [*structures, *extra],
        splits,
        samples_per_structure=a.samples_per_structure,
        random_samples=a.random_samples,
        val_fraction=a.val_fraction,
        held_out_samples=a.held_out_samples,
        sigma_a=a.sigma_a,
        sigma_iso_angstrom=a.sigma_iso,
        energy_kev=a.energy_kev,
        default_uiso=a.default_uiso,
        seed=a.data_seed,
        meta={"generation": gen},
    )
    return ds, time.perf_counter() - t0


def _card(name, model_name, cfg, n_params, out_path) -> ModelCard:
    return ModelCard(
        name=name,
        task=PHASE_TASK,
        architecture=describe(model_name, cfg.width),
        parameters=n_params,
        input=ModelInput(name="input", shape=[None, 2, 13, 13, 13], representation=REPRESENTATION),
        output=ModelOutput(
            name=OUTPUT_NAME, activation="none", modulus_deg=360.0, encoding=OUTPUT_ENCODING
        ),
        onnx_sha256=file_sha256(out_path),
    )


def main(argv: Sequence[str] | None = None) -> int:
    from .phase_report import baseline_scores, write_report

    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    a = p.parse_args(argv)
    widths, model_epochs = _check_args(p, a)
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    try:
        ds, gen_s = _dataset(a)
    except (OSError, ValueError) as exc:
        print(f"flakescan train phase: error: {exc}", file=sys.stderr)
        return 2
    x_all = model_input(ds.amplitudes, ds.mask)
    parts = {s: ds.subset(s) for s in ("train", "val", "select", "test")}
    counts = {s: len(v) for s, v in parts.items()}
    n_struct = {s: len(set(ds.structure_index[v].tolist())) for s, v in parts.items()}
    print(f"samples {counts}, structures {n_struct}")
    if counts["train"] < 2:
        print("flakescan train phase: error: fewer than 2 training samples", file=sys.stderr)
        return 2
    monitors = {s: (x_all[parts[s]], ds.phases[parts[s]]) for s in ("val", "select") if counts[s]}
    select = "select" if counts["select"] else ("val" if counts["val"] else None)
    names = list(MODEL_CHOICES) if "all" in a.models else list(dict.fromkeys(a.models))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    eval_splits = [s for s in ("val", "select", "test") if counts[s]]
    results: dict = {"baselines": baseline_scores(ds, parts, eval_splits, seed=a.seed)}
    for split in eval_splits:
        for b, sc in results["baselines"].items():
            print(f"baseline {b:6s} {split:6s} {json.dumps(sc[split].summary())}")
    for name in names:
        cfg = PhaseTrainConfig(
            model=name,
            width=widths.get(name),
            dropout=a.dropout,
            epochs=model_epochs.get(name, a.epochs),
            batch_size=a.batch_size,
            lr=a.lr,
            weight_decay=a.weight_decay,
            loss=a.loss,
            weight_power=a.weight_power,
            shift_grid=a.shift_grid,
            augment=not a.no_augment,
            seed=a.seed,
            threads=a.threads,
        )
        t0 = time.perf_counter()
        model, history = train_model(
            cfg, x_all[parts["train"]], ds.phases[parts["train"]], monitors, select
        )
        train_s = time.perf_counter() - t0
        out = a.out_dir / f"{a.prefix}_{name}.onnx"
        example = torch.from_numpy(x_all[parts["train"][:2]])
        versions = export_onnx(model, out, example, output_name=OUTPUT_NAME)
        max_diff = verify_onnx(model, out, x_all[parts["train"][:16]], output_name=OUTPUT_NAME)
        backend = create_backend(out, intra_op_threads=a.threads)
        metrics: dict = {"onnx_vs_torch_max_abs_diff": max_diff}
        scores, predicted = {}, {}
        t1 = time.perf_counter()
        for split in eval_splits:
            idx = parts[split]
            sc, out_vec = evaluate_backend(
                backend.run, x_all[idx], ds.phases[idx], ds.amplitudes[idx], ds.mask[idx]
            )
            scores[split], predicted[split] = sc, decode_phases(out_vec)
            metrics[split] = sc.summary()
            print(f"{name:6s} {split:6s} {json.dumps(metrics[split])}")
        metrics["eval_seconds"] = round(time.perf_counter() - t1, 1)
        n_params = sum(int(q.numel()) for q in model.parameters())
        card = _card(out.stem, name, cfg, n_params, out)
        card = card.model_copy(
            update={
                "metrics": metrics,
                "training": {
                    "command": "flakescan train phase " + shlex.join(argv),
                    "config": asdict(cfg),
                    "loss": "1 - max over origin shift t and enantiomorph s of the "
                    f"|F|^{cfg.weight_power:g}-weighted mean cos(phi_pred - s phi_true - "
                    "2 pi h.t), reflections inside the limiting sphere, F(000) excluded"
                    if cfg.loss == "invariant"
                    else "1 - max over s of the weighted mean cos(phi_pred - s phi_true), "
                    "labels at the canonical origin",
                    "split": "by structure family: train/val (held-out displacements), "
                    "select (held-out structures, chooses the epoch), test (held-out "
                    "structures, never used for a choice)",
                    "samples": counts,
                    "structures": n_struct,
                    "test_structures": sorted(
                        {ds.names[i] for i in ds.structure_index[parts["test"]]}
                    ),
                    "data": {
                        "path": str(a.data),
                        "dataset_sha256": dataset_sha256([a.data]),
                        "meta": ds.meta,
                    },
                    "history": history,
                    "train_seconds": round(train_s, 1),
                    "generate_seconds": round(gen_s, 1),
                    **versions,
                },
            }
        )
        write_card(card, out)
        results[name] = {
            "card": card,
            "scores": scores,
            "predicted": predicted,
            "history": history,
            "path": out,
        }
        print(f"wrote {out} ({train_s:.0f} s training, {out.stat().st_size / 1e6:.1f} MB)")
    wall = time.perf_counter() - started
    report = write_report(
        a.out_dir,
        ds,
        parts,
        results,
        command="flakescan train phase " + shlex.join(argv),
        wall_seconds=wall,
    )
    print(f"wrote {report} (wall {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
