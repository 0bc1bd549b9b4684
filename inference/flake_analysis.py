"""Flake finding on one uploaded microscope image: the scan's tile pipeline, without a stage.

The same preselection, classifier and axis model as a scan's tiles (inference/pipeline.py),
on an image a person took by hand: hits in micrometres from the image centre, with class,
scores and both axis readings. The wafer colour is measured from the image itself, so the
image needs bare wafer around its flakes (the pipeline says when it has too little).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flakescan.hardware.frame import Frame

from .annotate import HitMark, draw_hits
from .pipeline import Hit, TilePipeline

__all__ = ["FLAKE_TASK", "analyze_tile_image", "read_tile_image"]

FLAKE_TASK = "flake-classifier"


def read_tile_image(path: Path, srgb: bool = True) -> np.ndarray:
    """(h, w, 3) float32 linear intensities: PNG/JPEG/TIFF through Pillow (decoded from
    sRGB unless `srgb` is False, e.g. a linear camera TIFF), or an (h, w, 3) .npy taken as
    linear. ValueError names the file and what is wrong."""
    from .coco_eval import load_linear_image

    path = Path(path)
    if path.suffix.lower() == ".npy":
        from .pattern_readers import load_npy

        image = load_npy(path)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{path}: expected an (h, w, 3) RGB array, got {image.dtype} {image.shape}"
            )
        return image.astype(np.float32)
    try:
        return load_linear_image(path, srgb)
    except OSError as exc:
        raise ValueError(f"{path}: not an image Pillow can read ({exc})") from exc


def _hit_doc(hit: Hit, classes: list[str]) -> dict:
    doc = {k: v for k, v in asdict(hit).items() if k != "thumbnail"}
    doc["scores"] = {name: round(float(s), 5) for name, s in zip(classes, hit.scores, strict=True)}
    doc["contrast"] = [round(float(c), 5) for c in hit.contrast]
    for key in ("x_um", "y_um", "area_um2"):
        doc[key] = round(float(doc[key]), 2)
    doc["bbox_um"] = [round(float(v), 2) for v in hit.bbox_um]
    doc["centroid_px"] = [round(float(v), 1) for v in hit.centroid_px]
    doc["outline_um"] = [[round(float(x), 2), round(float(y), 2)] for x, y in hit.outline_um]
    doc["shape"] = hit.shape.as_columns() if hit.shape else None
    return doc


def _picture(image: np.ndarray, hits: list[Hit], pixel_size_um: float, path: Path) -> Path:
    """The image (sRGB for people) with each hit's outline, number, class and axis."""
    from flakescan.simulators.tone import srgb_encode

    scale = float(np.percentile(image, 99.5)) or 1.0
    encoded = (srgb_encode(np.clip(image / scale, 0, 1)) * 255).astype(np.uint8)
    im = Image.fromarray(encoded)
    h, w = image.shape[:2]

    def to_px(x_um: float, y_um: float) -> tuple[float, float]:
        return x_um / pixel_size_um + (w - 1) / 2, y_um / pixel_size_um + (h - 1) / 2

    marks = [
        HitMark(
            label=f"{k} c{hit.flake_class}"
            + ("" if hit.axis_angle_deg is None else f" {hit.axis_angle_deg:.1f} deg"),
            flake_class=hit.flake_class,
            outline_um=hit.outline_um,
            bbox_um=hit.bbox_um,
            centre_um=(hit.x_um, hit.y_um),
            axis_angle_deg=hit.axis_angle_deg,
        )
        for k, hit in enumerate(hits, start=1)
    ]
    draw_hits(ImageDraw.Draw(im), marks, to_px, line_width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def analyze_tile_image(
    image: np.ndarray,
    source: str,
    pipeline: TilePipeline,
    pixel_size_um: float,
    picture: Path | None = None,
) -> dict:
    """Hits of one linear RGB image, JSON-able; with `picture`, the annotated image."""
    pipeline.start_chip()  # every upload may show another chip
    frame = Frame(image, 0.0, 0.0, 0.0, pixel_size_um, time.time(), linear=True)
    result = pipeline.process(frame)
    classes = pipeline.classifier.classes
    doc = {
        "source": source,
        "pixel_size_um": pixel_size_um,
        "image_px": [int(image.shape[1]), int(image.shape[0])],
        "candidates": result.n_candidates,
        "hits": [_hit_doc(h, classes) for h in result.hits],
        "wafer_colour": [round(float(c), 3) for c in result.background],
        "skipped_reason": result.skipped_reason,
        "timings_ms": {k: round(float(v), 2) for k, v in result.timings_ms.items()},
        "frame": "x_um, y_um: from the image centre, +x right, +y down",
    }
    if picture is not None:
        doc["picture"] = str(_picture(image, result.hits, pixel_size_um, picture))
    return doc
