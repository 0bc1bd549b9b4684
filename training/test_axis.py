"""Evaluate an AxisID model on a test set, as served, beside the edge-histogram baseline.

The seed's `test_model.py`: for every `<image>.tif|jpg` in `--image-dir` the true angle is
the first line of `--annotation-dir/<image>-edges.csv`. The model runs through
`flakescan.inference.axis_model.AxisModel` (the ONNX file and card the daemon would load,
8-view test-time averaging), so no torch is needed. Errors are circular differences modulo
the card's modulus. The baseline is `flakescan.inference.axis.estimate_axis_of_crop` on the
same image (the straight-edge estimate, fed as the tile pipeline feeds it).

    flakescan test axis --image-dir set/test/images --annotation-dir set/test/annotations \
        --model inference/models/axis_model3.onnx [--csv errors.csv] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flakescan.inference.axis import estimate_axis_of_crop
from flakescan.inference.axis_model import AxisModel, circular_difference
from flakescan.inference.config import ModelsConfig

from .axis_data import AxisDataError, TestImage, load_images, read_test_set

__all__ = ["edge_baseline_angle", "error_stats", "evaluate_test_set", "main"]


def error_stats(errors: Sequence[float] | np.ndarray) -> dict:
    """MAE, RMS and max of circular errors (deg)."""
    e = np.abs(np.asarray(errors, dtype=np.float64))
    if e.size == 0:
        return {"n": 0, "mae_deg": None, "rms_deg": None, "max_deg": None}
    return {
        "n": int(e.size),
        "mae_deg": round(float(e.mean()), 4),
        "rms_deg": round(float(np.sqrt(np.mean(e**2))), 4),
        "max_deg": round(float(e.max()), 4),
    }


def edge_baseline_angle(image: np.ndarray, modulus: float = 30.0) -> float | None:
    """The straight-edge estimate of the crystal a crop is centred on, or None (the same
    baseline `flakescan evaluate-model` reports: `inference.axis.estimate_axis_of_crop`)."""
    est = estimate_axis_of_crop(image, modulus)
    return None if est is None else float(est.angle_deg)


def evaluate_test_set(
    model: AxisModel,
    tests: Sequence[TestImage],
    *,
    baseline: bool = True,
    batch_size: int = 64,
) -> tuple[list[dict], dict]:
    """Per-image rows and summary metrics (model, and edge baseline on the same images)."""
    m = model.modulus
    px = model.input_px or None
    rows: list[dict] = []
    for i in range(0, len(tests), batch_size):
        chunk = tests[i : i + batch_size]
        native = load_images([t.path for t in chunk])
        crops = load_images([t.path for t in chunk], px) if px else native
        preds = model.predict(crops)
        for t, img, p in zip(chunk, native, preds, strict=True):
            row = {
                "image": t.name,
                "true_deg": round(t.angle_deg, 3),
                "model_deg": round(p.angle_deg, 3),
                "model_error_deg": round(
                    float(circular_difference(p.angle_deg, t.angle_deg, m)), 3
                ),
                "confidence": round(p.confidence, 4),
            }
            if baseline:
                b = edge_baseline_angle(img, m)
                row["edge_deg"] = None if b is None else round(b, 3)
                row["edge_error_deg"] = (
                    None if b is None else round(float(circular_difference(b, t.angle_deg, m)), 3)
                )
            rows.append(row)
    summary: dict = {
        "n_images": len(rows),
        "modulus_deg": m,
        "model": error_stats([r["model_error_deg"] for r in rows]),
    }
    if baseline:
        answered = [r for r in rows if r["edge_error_deg"] is not None]
        summary["edge_baseline"] = {
            **error_stats([r["edge_error_deg"] for r in answered]),
            "no_answer": len(rows) - len(answered),
        }
        summary["model_on_baseline_images"] = error_stats([r["model_error_deg"] for r in answered])
    return rows, summary


def _write_csv(rows: list[dict], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(f.name).replace(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan test axis",
        description="Test an AxisID ONNX model on images with <image>-edges.csv annotations.",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--image-dir", type=Path, required=True, help="test images (.tif/.jpg)")
    p.add_argument("--annotation-dir", type=Path, required=True, help="<image>-edges.csv files")
    p.add_argument("--model", type=Path, required=True, help="ONNX model with its .json card")
    p.add_argument("--views", type=int, default=8, choices=[1, 2, 4, 8], help="symmetric views")
    p.add_argument("--no-baseline", action="store_true", help="skip the edge-histogram baseline")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--csv", type=Path, help="write the per-image table here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    try:
        model = AxisModel.from_path(
            args.model, ModelsConfig(intra_op_threads=args.threads), views=args.views
        )
    except (FileNotFoundError, ValueError) as exc:
        p.error(f"--model {args.model}: {exc}")
    try:
        tests = read_test_set(args.image_dir, args.annotation_dir, model.modulus)
        rows, summary = evaluate_test_set(model, tests, baseline=not args.no_baseline)
    except AxisDataError as exc:
        p.error(str(exc))
    summary["model_path"] = str(args.model)
    if args.csv:
        _write_csv(rows, args.csv)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    base = not args.no_baseline
    head = f"{'image':<28} {'true':>7} {'model':>7} {'err':>6}"
    print(head + (f" {'edges':>7} {'err':>6}" if base else ""))
    for r in rows:
        line = (
            f"{r['image']:<28} {r['true_deg']:7.2f} {r['model_deg']:7.2f} "
            f"{r['model_error_deg']:6.2f}"
        )
        if base:
            e = r["edge_deg"]
            line += "    none   none" if e is None else f" {e:7.2f} {r['edge_error_deg']:6.2f}"
        print(line)
    s = summary["model"]
    print(
        f"model ({len(rows)} images): MAE {s['mae_deg']:.3f} RMS {s['rms_deg']:.3f} "
        f"max {s['max_deg']:.3f} deg"
    )
    if base:
        b = summary["edge_baseline"]
        if b["n"]:
            print(
                f"edge baseline ({b['n']} answered, {b['no_answer']} none): MAE {b['mae_deg']:.3f} "
                f"RMS {b['rms_deg']:.3f} max {b['max_deg']:.3f} deg"
            )
        else:
            print(f"edge baseline: no answer on any of {len(rows)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
