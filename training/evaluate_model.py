"""`flakescan evaluate-model`: judge ONNX models as the daemon serves them, on labelled folders.

The models run through the serving classes (`FlakeClassifier`, `AxisModel`) on ONNX
Runtime, so no torch is needed and what is measured is what the microscope will do:

* classifier: a GrapheneClassifier-convention folder (`images/*.png` + `labels/*.txt`
  "c1 c2 c3 any"). Each crop becomes the network input the way the daemon makes it: wafer
  background fitted (`estimate_background`, anchored on the crop's border colour, the wafer
  round the object the crop is centred on), contrast 1 - I/background smoothed as the
  preselection smooths it (`contrast_image`), and `classifier_crop` of the card's
  `crop_um` at the card's input size round the crop's centre. Per-class precision, recall
  and F1 at the card's threshold, at each class's best threshold, and over a sweep.
* axis: an AxisID test folder (`images/<name>.tif` + `annotations/<name>-edges.csv`, first
  line = true angle). The model's angle error and, on the same images, the edge-histogram
  estimator the daemon used before (`estimate_axis`, fed as the tile pipeline feeds it: the
  contrast projected on the crystal's own colour, inside the crystal's mask).

`--out DIR` gets report.md, metrics.json and PNG figures, all written to a staging folder
first and renamed into place, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flakescan.inference.axis import estimate_axis_of_crop
from flakescan.inference.axis_model import AXIS_TASK, AxisModel
from flakescan.inference.backends import create_backend
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import PreselectionConfig
from flakescan.inference.crops import classifier_crop, crop_contrast
from flakescan.inference.model_card import ModelCard, file_sha256, load_model_card

from . import crop_folder, metrics, plots

__all__ = [
    "ClassifierFolder",
    "axis_baseline",
    "build_parser",
    "classifier_input",
    "main",
    "read_classifier_folder",
]

CLASSIFIER_TASK = "flake-classifier"


class InputError(ValueError):
    """Bad command-line input: the message names the argument and its value."""


# --------------------------------------------------------------------------- data readers


@dataclass(frozen=True)
class ClassifierFolder:
    """A GrapheneClassifier-convention folder: image paths, (n, c) 0/1 labels, pixel size."""

    root: Path
    images: list[Path]
    labels: np.ndarray
    pixel_size_um: float | None  # from dataset.json when the folder has one
    crop_um: float | None


def read_classifier_folder(root: Path) -> ClassifierFolder:
    """`images/<name>.png` with `labels/<name>.txt` ("c1 c2 c3 any" as 0/1), read with the
    shared crop-folder reader (`training.crop_folder`), every name paired."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--classifier-data: folder not found: {root}")
    try:
        images = crop_folder.list_images(root / "images")
        if not images:
            raise InputError(f"--classifier-data: no images in {root / 'images'}")
        labels = []
        for p in images:
            lab = root / "labels" / f"{p.stem}.txt"
            if not lab.is_file():
                raise InputError(f"--classifier-data: label file {lab} for {p.name} not found")
            labels.append(crop_folder.read_label_file(lab))
    except crop_folder.CropFolderError as exc:
        raise InputError(f"--classifier-data: {exc}") from None
    px = crop = None
    manifest = root / "dataset.json"
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"--classifier-data: {manifest} is not valid JSON ({exc})") from None
        px, crop = meta.get("pixel_size_um"), meta.get("crop_um")
    return ClassifierFolder(root, images, np.stack(labels), px, crop)


def _read_rgb(path: Path) -> np.ndarray:
    """(h, w, 3) float32 linear pixels of a crop."""
    try:
        return crop_folder.read_image(path)
    except crop_folder.CropFolderError as exc:
        raise InputError(f"--classifier-data: {exc}") from None


# --------------------------------------------------------------------------- inputs


def classifier_input(
    image: np.ndarray, pixel_size_um: float, crop_um: float, input_px: int, background: str = "fit"
) -> np.ndarray:
    """(3, input_px, input_px) network input of a folder crop, centred on the crop.

    "fit" (default): `crop_contrast`, then `classifier_crop` of the card's crop_um at the
    data's pixel size. "median": `crop_folder.crop_to_input` (wafer = the crop's median).
    On the shipped CNN-4 and simulated crops "fit" scores clearly higher (see
    docs/evaluate-model.md): a small rendered crop still carries the field's illumination
    fall-off, which a single median leaves in the contrast.
    """
    if background == "median":  # the shared reader's transform: the whole crop, median wafer
        smooth = PreselectionConfig().smooth_sigma_px
        return crop_folder.crop_to_input(image, input_px, smooth_sigma_px=smooth)
    contrast = crop_contrast(image)
    h, w = contrast.shape[:2]
    return classifier_crop(contrast, ((h - 1) / 2, (w - 1) / 2), pixel_size_um, crop_um, input_px)


def axis_baseline(image: np.ndarray, modulus: float = 30.0) -> float | None:
    """Edge-histogram axis angle of the crystal a crop is centred on, or None."""
    est = estimate_axis_of_crop(image, modulus)
    return None if est is None else float(est.angle_deg)


# --------------------------------------------------------------------------- evaluation


def _load_model(path: Path, arg: str, task: str) -> ModelCard:
    if not Path(path).is_file():
        raise InputError(f"{arg}: model file not found: {path}")
    try:
        card = load_model_card(Path(path))
    except FileNotFoundError as exc:
        raise InputError(f"{arg}: {path}: {exc}") from None
    except ValueError as exc:  # sha256 mismatch or a malformed card
        raise InputError(f"{arg}: {path}: {exc}") from None
    if card.task != task:
        raise InputError(f"{arg}: {path} is a {card.task!r} model; expected task {task!r}")
    return card


def _model_info(path: Path, card: ModelCard) -> dict:
    return {
        "path": str(path),
        "name": card.name,
        "task": card.task,
        "architecture": card.architecture,
        "parameters": card.parameters,
        "onnx_sha256": card.onnx_sha256,
        "card_sha256": file_sha256(Path(path).with_suffix(".json")),
    }


def _folder_info(root: Path, files: Sequence[Path]) -> dict:
    h = hashlib.sha256()
    size = 0
    for f in sorted(files):
        data = f.read_bytes()
        size += len(data)
        h.update(f.name.encode())
        h.update(data)
    return {
        "path": str(Path(root).resolve()),
        "images": len(files),
        "bytes": size,
        "sha256": h.hexdigest(),
    }


def evaluate_classifier(
    model_path: Path, data_dir: Path, *, pixel_size_um: float | None, background: str, threads: int
) -> tuple[dict, np.ndarray]:
    card = _load_model(model_path, "--classifier", CLASSIFIER_TASK)
    folder = read_classifier_folder(data_dir)
    classifier = FlakeClassifier(create_backend(model_path, intra_op_threads=threads), card)
    classes = classifier.classes
    if folder.labels.shape[1] != len(classes):
        raise InputError(
            f"--classifier-data: {data_dir} has {folder.labels.shape[1]} labels per image, "
            f"model {card.name} has {len(classes)} classes {classes}"
        )
    first = _read_rgb(folder.images[0])
    px_source = "--pixel-size-um"
    px = pixel_size_um
    if px is None and folder.pixel_size_um:
        px, px_source = float(folder.pixel_size_um), "dataset.json"
    if px is None:  # no word on it: take the crop to span the card's crop_um
        px, px_source = classifier.crop_um / first.shape[1], "card crop_um / image width"
    crops = np.stack(
        [
            classifier_input(_read_rgb(p), px, classifier.crop_um, classifier.input_px, background)
            for p in folder.images
        ]
    )
    scores = classifier.scores(crops)
    threshold = float(card.threshold if card.threshold is not None else 0.5)
    report = metrics.classification_report(folder.labels, scores, classes, threshold)
    data = _folder_info(data_dir, folder.images)
    data.update(
        {
            "positives": {c: int(folder.labels[:, k].sum()) for k, c in enumerate(classes)},
            "negatives": int((folder.labels.max(axis=1) == 0).sum()),
            "image_px": [int(first.shape[0]), int(first.shape[1])],
            "pixel_size_um": px,
            "pixel_size_source": px_source,
            "crop_um_of_images": round(px * first.shape[1], 3),
            "background": background,
        }
    )
    result = {"model": _model_info(model_path, card), "data": data, "classes": classes, **report}
    return result, scores


def evaluate_axis(
    model_path: Path | None,
    image_dir: Path,
    annotation_dir: Path,
    *,
    views: int,
    threads: int,
    modulus: float | None,
) -> dict:
    from flakescan.training.axis_data import AxisDataError, load_images, read_test_set

    card = _load_model(model_path, "--axis", AXIS_TASK) if model_path else None
    mod = float(card.output.modulus_deg) if card else float(modulus or 30.0)
    for d, arg in ((image_dir, "--image-dir"), (annotation_dir, "--annotation-dir")):
        if not Path(d).is_dir():
            raise InputError(f"{arg}: folder not found: {d}")
    try:
        tests = read_test_set(image_dir, annotation_dir, mod)
        images = load_images([t.path for t in tests])
    except AxisDataError as exc:
        raise InputError(f"--axis-test: {exc}") from None
    truth = np.array([t.angle_deg for t in tests])
    baseline = [axis_baseline(img, mod) for img in images]
    out: dict = {
        "modulus_deg": mod,
        "data": _folder_info(Path(image_dir).parent, [t.path for t in tests])
        | {"image_dir": str(image_dir), "annotation_dir": str(annotation_dir)},
        "baseline": {"name": "edge histogram (inference.axis.estimate_axis)"},
    }
    err_b = metrics.angle_errors(baseline, truth, mod)
    out["baseline"]["errors"] = metrics.angle_summary(err_b)
    per_image = [
        {"name": t.name, "true": round(float(t.angle_deg), 3), "baseline": _r(b)}
        for t, b in zip(tests, baseline, strict=True)
    ]
    if card is not None:
        model = AxisModel(create_backend(model_path, intra_op_threads=threads), card, views)
        size = model.input_px
        x = images if images.shape[1] == size else load_images([t.path for t in tests], size)
        preds = model.predict(x)
        err_m = metrics.angle_errors([p.angle_deg for p in preds], truth, mod)
        out["model"] = _model_info(model_path, card) | {"views": views}
        out["model"]["errors"] = metrics.angle_summary(err_m)
        # Side by side on equal terms: the model on the images the baseline answered.
        out["model"]["errors_where_baseline_answered"] = metrics.angle_summary(
            err_m[np.isfinite(err_b)]
        )
        for row, p in zip(per_image, preds, strict=True):
            row["model"] = round(p.angle_deg, 3)
            row["model_confidence"] = round(p.confidence, 4)
    out["per_image"] = per_image
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


# --------------------------------------------------------------------------- report


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def _model_md(m: dict, extra: str = "") -> list[str]:
    return [
        f"- model: `{m['name']}` ({m['path']}), {m['architecture']}, "
        f"{m['parameters']:,} parameters{extra}",
        f"- ONNX sha256 `{m['onnx_sha256']}` (verified against the card); "
        f"card sha256 `{m['card_sha256']}`",
    ]


def _classifier_md(c: dict, figures: dict[str, str]) -> list[str]:
    m, d, t = c["model"], c["data"], f"{c['threshold']:g}"
    lines = [
        "## Classifier",
        "",
        *_model_md(m),
        f"- data: `{d['path']}`: {d['images']} images, {d['bytes'] / 1e6:.1f} MB, "
        f"sha256 `{d['sha256'][:16]}...`; "
        + ", ".join(f"{k} {v}" for k, v in d["positives"].items())
        + f", no class {d['negatives']}",
        f"- input: background `{d['background']}`, {d['pixel_size_um']:g} um/px "
        f"({d['pixel_size_source']}), images span {d['crop_um_of_images']:g} um",
        "",
        f"| class | support | P @ {t} | R @ {t} | F1 @ {t} "
        "| best threshold | P @ best | R @ best | F1 @ best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in c["classes"]:
        a, b = c["at_threshold"][name], c["at_best_threshold"][name]
        lines.append(
            f"| {name} | {a['support']} | {_fmt(a['precision'])} | {_fmt(a['recall'])} | "
            f"{_fmt(a['f1'])} | {b['threshold']:.2f} | {_fmt(b['precision'])} | "
            f"{_fmt(b['recall'])} | {_fmt(b['f1'])} |"
        )
    lines.append("")
    lines.append(
        "Best threshold: highest F1 on this very set (optimistic; a threshold for the card "
        "should be chosen on a validation set, not the test set)."
    )
    lines.append("")
    for key, caption in (("f1", "F1 vs threshold"), ("classifier_training", "Training curves")):
        if key in figures:
            lines += [f"![{caption}]({figures[key]})", ""]
    return lines


def _axis_md(a: dict, figures: dict[str, str]) -> list[str]:
    d = a["data"]
    lines = ["## Axis angle", ""]
    if "model" in a:
        m = a["model"]
        lines += _model_md(m, f", {m['views']} symmetric views averaged")
    else:
        lines.append("- no model given (`--axis`): the edge-histogram baseline alone")
    lines += [
        f"- data: `{d['image_dir']}` + `{d['annotation_dir']}`: {d['images']} images, "
        f"{d['bytes'] / 1e6:.1f} MB; angles mod {a['modulus_deg']:g} deg",
        "",
        "| method | answered | MAE | RMS | median | max | within 1 deg | within 2 deg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("edge-histogram baseline", a["baseline"]["errors"])]
    if "model" in a:
        name = f"model `{a['model']['name']}`"
        rows.insert(0, (name, a["model"]["errors"]))
        if a["baseline"]["errors"]["failed"]:
            where = a["model"]["errors_where_baseline_answered"]
            rows.insert(1, (f"{name}, images the baseline answered", where))
    for name, e in rows:
        lines.append(
            f"| {name} | {e['answered']}/{e['n']} | {_fmt(e['mae'], 2)} | {_fmt(e['rms'], 2)} | "
            f"{_fmt(e['median'], 2)} | {_fmt(e['max'], 2)} | {_pct(e['within_1'])} | "
            f"{_pct(e['within_2'])} |"
        )
    lines += [
        "",
        "Errors in degrees, circular (mod the modulus); the baseline is left out "
        'where it finds too little edge ("answered").',
        "",
    ]
    for key, caption in (("angle", "Angle errors"), ("axis_training", "Axis training curves")):
        if key in figures:
            lines += [f"![{caption}]({figures[key]})", ""]
    return lines


def render_report(result: dict, figures: dict[str, str]) -> str:
    lines = [
        "# Model evaluation",
        "",
        f"`flakescan evaluate-model {' '.join(result['argv'])}` at {result['created']}",
        "",
    ]
    if "classifier" in result:
        lines += _classifier_md(result["classifier"], figures)
    if "axis" in result:
        lines += _axis_md(result["axis"], figures)
    if figures:
        lines += ["## Figures", ""] + [
            f"- [{name}]({name})" for name in sorted(set(figures.values()))
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flakescan evaluate-model",
        description="Evaluate served ONNX models (flake classifier, axis regressor) on labelled "
        "folders; write report.md, metrics.json and figures.",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--classifier", type=Path, help="flake-classifier ONNX model (card beside it)")
    p.add_argument(
        "--classifier-data", type=Path, help="GrapheneClassifier folder: images/*.png, labels/*.txt"
    )
    p.add_argument(
        "--pixel-size-um", type=float, help="um/px of the classifier crops (default: dataset.json)"
    )
    p.add_argument(
        "--background",
        choices=["fit", "median"],
        default="fit",
        help="classifier crops: wafer background fitted as the daemon does, or the crop median",
    )
    p.add_argument("--axis", type=Path, help="axis-regressor ONNX model (card beside it)")
    p.add_argument("--axis-test", type=Path, help="AxisID test folder: images/, annotations/")
    p.add_argument("--image-dir", type=Path, help="axis test images (instead of --axis-test)")
    p.add_argument("--annotation-dir", type=Path, help="axis annotations (with --image-dir)")
    p.add_argument("--axis-views", type=int, default=8, choices=[1, 2, 4, 8])
    p.add_argument("--modulus", type=float, default=30.0, help="baseline-only runs: angle period")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for report.md, metrics.json, PNGs"
    )
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (
        args.classifier is None
        and args.axis is None
        and args.axis_test is None
        and args.image_dir is None
    ):
        p.error("nothing to evaluate: give --classifier and/or --axis (with their data)")
    if (args.classifier is None) != (args.classifier_data is None):
        p.error("--classifier and --classifier-data go together")
    if args.axis_test is not None and (args.image_dir or args.annotation_dir):
        p.error("give --axis-test or --image-dir/--annotation-dir, not both")
    if args.axis_test is not None:
        args.image_dir, args.annotation_dir = (
            args.axis_test / "images",
            args.axis_test / "annotations",
        )
        if not args.axis_test.is_dir():
            p.error(f"--axis-test: folder not found: {args.axis_test}")
    if (args.image_dir is None) != (args.annotation_dir is None):
        p.error("--image-dir and --annotation-dir go together")
    if args.axis is not None and args.image_dir is None:
        p.error("--axis needs --axis-test (or --image-dir and --annotation-dir)")
    if args.classifier_data is not None and not args.classifier_data.is_dir():
        p.error(f"--classifier-data: folder not found: {args.classifier_data}")
    if args.pixel_size_um is not None and not args.pixel_size_um > 0:
        p.error(f"--pixel-size-um must be > 0, got {args.pixel_size_um}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out: {args.out} exists and is not a folder")


def _publish(staging: Path, out: Path) -> None:
    """Move every staged file into `out` (each rename atomic; report.md last)."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(f.name for f in staging.iterdir())
    names.sort(key=lambda n: n == "report.md")
    for name in names:
        os.replace(staging / name, out / name)


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if argv_list[:1] == ["--"]:  # `flakescan evaluate-model -- ARGS` passes the separator on
        argv_list = argv_list[1:]
    args = p.parse_args(argv_list)
    _check_args(p, args)
    result: dict = {
        "argv": argv_list,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        if args.classifier is not None:
            cls_result, _ = evaluate_classifier(
                args.classifier,
                args.classifier_data,
                pixel_size_um=args.pixel_size_um,
                background=args.background,
                threads=args.threads,
            )
            result["classifier"] = cls_result
        if args.image_dir is not None:
            result["axis"] = evaluate_axis(
                args.axis,
                args.image_dir,
                args.annotation_dir,
                views=args.axis_views,
                threads=args.threads,
                modulus=args.modulus,
            )
    except InputError as exc:
        p.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        figures = _figures(result, staging)
        result["figures"] = figures
        (staging / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
        (staging / "report.md").write_text(render_report(result, figures))
        _publish(staging, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(_summary(result, args.out))
    return 0


def _figures(result: dict, staging: Path) -> dict[str, str]:
    figures: dict[str, str] = {}
    c = result.get("classifier")
    if c is not None:
        s = c["sweep"]
        f1 = np.array([s["f1"][k] for k in c["classes"]]).T
        best = [c["at_best_threshold"][k]["threshold"] for k in c["classes"]]
        name = "eval-f1-vs-threshold.png"
        plots.plot_f1_vs_threshold(
            np.asarray(s["thresholds"]),
            f1,
            c["classes"],
            staging / name,
            c["threshold"],
            best,
            title=f"{c['model']['name']}: F1 vs threshold ({c['data']['images']} crops)",
        )
        figures["f1"] = name
        card = load_model_card(Path(c["model"]["path"]), verify=False)
        name = "eval-training-classifier.png"
        if plots.plot_training_curves(card.training, staging / name, f"{card.name}: training"):
            figures["classifier_training"] = name
    a = result.get("axis")
    if a is not None:
        errors = {}
        per = a["per_image"]
        truth = [r["true"] for r in per]
        if "model" in a:
            errors[f"model {a['model']['name']}"] = metrics.angle_errors(
                [r["model"] for r in per], truth, a["modulus_deg"]
            )
            card = load_model_card(Path(a["model"]["path"]), verify=False)
            name = "eval-training-axis.png"
            if plots.plot_training_curves(card.training, staging / name, f"{card.name}: training"):
                figures["axis_training"] = name
        errors["edge-histogram baseline"] = metrics.angle_errors(
            [r["baseline"] for r in per], truth, a["modulus_deg"]
        )
        name = "eval-axis-errors.png"
        plots.plot_angle_errors(errors, staging / name, a["modulus_deg"])
        figures["angle"] = name
    return figures


def _summary(result: dict, out: Path) -> str:
    lines = []
    c = result.get("classifier")
    if c is not None:
        for k in c["classes"]:
            a, b = c["at_threshold"][k], c["at_best_threshold"][k]
            lines.append(
                f"{k}: F1 {a['f1']:.3f} @ {a['threshold']:g} "
                f"(P {a['precision']:.3f} R {a['recall']:.3f}), "
                f"best {b['f1']:.3f} @ {b['threshold']:.2f}, support {a['support']}"
            )
    a = result.get("axis")
    if a is not None:
        for who in ("model", "baseline"):
            if who in a:
                e = a[who]["errors"]
                lines.append(
                    f"axis {who}: MAE {_fmt(e['mae'], 2)} RMS {_fmt(e['rms'], 2)} median "
                    f"{_fmt(e['median'], 2)} max {_fmt(e['max'], 2)} deg ({e['answered']}/{e['n']})"
                )
    lines.append(f"wrote {out / 'report.md'}, {out / 'metrics.json'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
