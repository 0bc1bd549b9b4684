"""Commands around the scanner: simulated chips and their truth, and judging scans by it.

`flakescan simulate chip` writes what a lab would have of a chip (a mosaic with its
calibration) plus what only a simulator can give (the ground truth); `flakescan evaluate`
holds a scan in the catalogue against that truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from .config import load_config

__all__ = [
    "cmd_evaluate",
    "cmd_evaluate_images",
    "cmd_sim_truth",
    "cmd_simulate",
    "evaluation_table",
]

_PREVIEW_PX = 1600


def cmd_sim_truth(args: argparse.Namespace) -> int:
    """Write the simulated chip's ground truth (JSON) for the configured seed."""
    from flakescan.simulators.chip import generate_chip

    cfg = load_config(args.config)
    chip = generate_chip(cfg.simulator.chip, cfg.simulator.seed)
    path = chip.write_truth(args.out)
    kinds = Counter(o.kind for o in chip.objects)
    print(f"wrote {path}: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
    return 0


def _simulate_xrd(args: argparse.Namespace) -> int:
    """Powder patterns of the named phases (several: one mixture) as .xy files."""
    import numpy as np

    from flakescan.simulators.xrd_dataset import phase_by_name, write_xy
    from flakescan.simulators.xrd_pattern import simulate_pattern

    if not args.phase:
        raise ValueError("simulate xrd needs --phase NAME (repeat it for a mixture)")
    phases = [phase_by_name(n) for n in args.phase]
    weights = [1.0] + [0.5] * (len(phases) - 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "+".join(p.name for p in phases)
    for seed in range(args.seed, args.seed + args.chips):
        counts = simulate_pattern(np.random.default_rng(seed), phases, weights)
        path = args.out / f"{stem}-{seed}.xy"
        header = f"simulated by flakescan: {stem}, seed {seed}\n2theta_deg counts (Cu K-alpha)"
        write_xy(path, counts, header)
        print(path)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate a chip (mosaic, ground truth, preview), a training set from chips, or powder
    XRD patterns (.xy files)."""
    if args.chips < 1 or args.test_chips < 0:
        raise ValueError(
            f"--chips must be >= 1 and --test-chips >= 0, got {args.chips}, {args.test_chips}"
        )
    if args.what == "chip":
        return _simulate_chip(args)
    if args.what == "xrd":
        return _simulate_xrd(args)
    from flakescan.simulators.datasets import (
        ClassifierSetSpec,
        write_axis_set,
        write_classifier_set,
    )

    cfg = load_config(args.config)
    px = args.pixel_size or cfg.objective.pixel_size_um
    na = cfg.objective.numerical_aperture
    seeds = list(range(args.seed, args.seed + args.chips))
    sim = cfg.simulator
    if args.size_um:
        size = {"width_um": args.size_um[0], "height_um": args.size_um[1]}
        sim = sim.model_copy(update={"chip": sim.chip.model_copy(update=size)})
    if args.what == "classifier-set":
        spec = ClassifierSetSpec(pixel_size_um=px, numerical_aperture=na)
        counts = write_classifier_set(args.out, seeds, sim, spec, vary=args.vary)
    else:
        tests = list(range(args.seed + args.chips, args.seed + args.chips + args.test_chips))
        counts = write_axis_set(
            args.out,
            seeds,
            sim,
            test_seeds=tests,
            pixel_size_um=px,
            numerical_aperture=na,
            vary=args.vary,
            label=args.label,
            terraces=not args.no_terraces,
        )
    print(f"wrote {args.what} to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _simulate_chip(args: argparse.Namespace) -> int:
    """Simulate a chip: mosaic + calibration, ground truth and a preview PNG in a folder."""
    from flakescan.simulators.chip import generate_chip
    from flakescan.simulators.conditions import draw_conditions
    from flakescan.simulators.mosaic import render_mosaic
    from flakescan.simulators.tone import srgb_encode

    cfg = load_config(args.config)
    sim = cfg.simulator.model_copy(update={"seed": args.seed})
    if args.size_um:
        chip_spec = sim.chip.model_copy(
            update={"width_um": args.size_um[0], "height_um": args.size_um[1]}
        )
        sim = sim.model_copy(update={"chip": chip_spec})
    if args.vary or sim.vary_conditions:
        sim = draw_conditions(sim, args.seed)
    px = args.pixel_size or cfg.objective.pixel_size_um
    na = cfg.objective.numerical_aperture
    chip = generate_chip(sim.chip, sim.seed)
    mosaic = render_mosaic(chip, sim.imaging, px, na, seed=sim.seed)
    out = Path(args.out)
    sidecar = mosaic.save(out)
    conditions = {
        "imaging": sim.imaging.model_dump(mode="json"),
        "stage": sim.stage.model_dump(mode="json"),
        "pixel_size_um": px,
        "numerical_aperture": na,
    }
    truth = chip.write_truth(out / "truth.json", conditions)
    # A preview for people: downsampled, sRGB-encoded whatever the mosaic's encoding.
    img = mosaic.image.astype(np.float32) / np.float32(np.iinfo(mosaic.image.dtype).max)
    scale = max(img.shape[:2]) / _PREVIEW_PX
    if mosaic.linear:
        img = srgb_encode(img / max(float(np.percentile(img, 99.5)), 1e-6))
    preview = Image.fromarray((255 * np.clip(img, 0, 1)).astype(np.uint8))
    if scale > 1:
        size = (round(preview.width / scale), round(preview.height / scale))
        preview = preview.resize(size, Image.Resampling.BOX)
    preview.save(out / "preview.png")
    kinds = Counter(o.kind for o in chip.objects)
    h, w = mosaic.image.shape[:2]
    print(
        f"chip seed {sim.seed}: {chip.spec.material} on {chip.spec.oxide_nm:.0f} nm SiO2, "
        + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    )
    print(f"wrote {sidecar} ({w} x {h} px at {px} um/px), {truth}, {out / 'preview.png'}")
    return 0


def evaluation_table(result: dict, title: str) -> Table:
    table = Table(title=title)
    for col in (
        "class",
        "truth",
        "found",
        "recall",
        "hits",
        "on thin flakes",
        "precision",
        "right class",
    ):
        table.add_column(col, justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    for row in result["classes"]:
        table.add_row(
            str(row["class"]),
            str(row["truth"]),
            str(row["found"]),
            pct(row["recall"]),
            str(row["hits"]),
            str(row["hits_on_thin_flakes"]),
            pct(row["precision"]),
            pct(row["class_agreement"]),
        )
    return table


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Hold a scan of the catalogue against a simulated chip's ground truth."""
    from flakescan.db.engine import open_database
    from flakescan.db.queries import FlakeQuery, find_flakes, scan_summary
    from flakescan.simulators.chip import Chip
    from flakescan.simulators.evaluate import evaluate_scan

    from .catalogue_cli import database_url

    engine = open_database(database_url(args), create=False)
    try:
        scan = scan_summary(engine, args.scan)
        if scan is None:
            print(f"flakescan: no scan with id {args.scan}", file=sys.stderr)
            return 2
        hits = find_flakes(engine, FlakeQuery(scan_id=args.scan))
    finally:
        engine.dispose()
    truth_text = Path(args.truth).read_text()
    chip = Chip.from_json(truth_text)
    conditions = json.loads(truth_text).get("conditions") or {}
    settings = json.loads(scan["settings_json"] or "{}")
    pre = settings.get("preselection", {})
    region = (
        scan["region_x0_um"],
        scan["region_y0_um"],
        scan["region_x1_um"],
        scan["region_y1_um"],
    )
    result = evaluate_scan(
        chip,
        hits,
        region,
        min_area_um2=pre.get("min_area_um2", 20.0),
        class_bins=pre.get("class_bins", (0.0, 0.12, 0.19, 0.30)),
        flare=conditions.get("imaging", {}).get("flare", 0.15),
        numerical_aperture=conditions.get("numerical_aperture", 0.14),
    ).as_dict()
    result["scan_id"] = args.scan
    if args.format == "json":
        print(json.dumps(result, indent=1))
        return 0
    console = Console(width=max(Console().width, 110))
    console.print(evaluation_table(result, f"scan {args.scan} against {args.truth}"))
    med, p90 = result["position_error_um_median"], result["position_error_um_p90"]
    if med is not None:
        console.print(f"position error: median {med:.2f} um, 90th percentile {p90:.2f} um")
    if result["axis_mae_deg"] is not None:
        console.print(
            f"axis angle (mod 30 deg): mean absolute error {result['axis_mae_deg']:.2f} deg "
            f"over {result['axis_n']} flakes against the lattice"
            + (
                f", {result['axis_edges_mae_deg']:.2f} deg against what their straight edges "
                f"agree on ({result['axis_edges_n']} flakes)"
                if result["axis_edges_mae_deg"] is not None
                else ""
            )
        )
    for name, r in result.get("axis_readings", {}).items():
        console.print(
            f"  {name} reading: {r['lattice_mae_deg']:.2f} deg against the lattice"
            + (f", {r['edges_mae_deg']:.2f} against the edges" if r["edges_mae_deg"] else "")
            + f" ({r['n']} flakes with both readings)"
        )
    return 0


def cmd_evaluate_images(args: argparse.Namespace) -> int:
    """Preselection and classifier recall on COCO-labelled real images (e.g. UA_BN)."""
    from flakescan.inference.classifier import FlakeClassifier
    from flakescan.inference.coco_eval import evaluate_coco
    from flakescan.inference.presets import preset_for

    cfg = load_config(args.config)
    preselection = preset_for(
        args.material,
        args.oxide,
        args.max_layers,
        flare=args.flare,
        numerical_aperture=cfg.objective.numerical_aperture,
        min_contrast=args.min_contrast,
        base=cfg.preselection,
    )
    classifier = None if args.no_classifier else FlakeClassifier.from_config(cfg.models)
    report = evaluate_coco(
        args.coco,
        args.pixel_size,
        preselection,
        classifier,
        srgb=not args.pixels_linear,
        threshold=cfg.models.threshold,
        min_cover=args.min_cover,
    )
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(report.format_table())
    return 0
