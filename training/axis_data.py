"""AxisID data on disk: the seed's file conventions, read strictly, into arrays.

Training set: `angles.csv` rows `basename,axis_angle,count`; for each row `count` images
`basename-n.jpg` or `basename-n.tif` (n = 0..count-1) in the image folder (pre-computed
crops of one crystal). Test set: images `<image>.tif|jpg` and, in the annotation folder,
`<image>-edges.csv` whose first line holds the true angle (a number or a CSV row: the first
field counts).

Images are kept as uint8 (n, px, px, 3) so a set fits in memory; the network input is made
per batch by `flakescan.inference.axis_model.axis_input`, the transform the daemon serves
with, so training and serving cannot disagree. Resizing uses PIL's box filter, as
`axis_crop` does at serving time.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "AxisDataError",
    "Crystal",
    "TestImage",
    "load_images",
    "read_angles_csv",
    "read_test_set",
    "split_by_basename",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg")


class AxisDataError(ValueError):
    """A data set that does not follow the AxisID conventions (names the file and line)."""


@dataclass(frozen=True)
class Crystal:
    """One labelled crystal of a training set and its pre-computed crops."""

    basename: str
    angle_deg: float
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class TestImage:
    name: str
    angle_deg: float
    path: Path


def _find_image(image_dir: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = image_dir / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _parse_angle(text: str, where: str, modulus: float) -> float:
    try:
        angle = float(text)
    except ValueError:
        raise AxisDataError(f"{where}: axis angle {text!r} is not a number") from None
    if not math.isfinite(angle):
        raise AxisDataError(f"{where}: axis angle {text!r} is not finite")
    return float(angle % modulus)


def read_angles_csv(angles_path: Path, image_dir: Path, modulus: float = 30.0) -> list[Crystal]:
    """Rows `basename,axis_angle,count` -> crystals with their image paths, all checked."""
    angles_path, image_dir = Path(angles_path), Path(image_dir)
    if not angles_path.is_file():
        raise AxisDataError(f"angles file not found: {angles_path}")
    if not image_dir.is_dir():
        raise AxisDataError(f"image folder not found: {image_dir}")
    crystals: list[Crystal] = []
    seen: set[str] = set()
    with open(angles_path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            where = f"{angles_path}:{line_no}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise AxisDataError(
                    f"{where}: expected 'basename,axis_angle,count', got {len(row)} fields {row}"
                )
            base, angle_text, count_text = (c.strip() for c in row)
            if line_no == 1 and base.lower() == "basename":
                continue  # an optional header
            if not base:
                raise AxisDataError(f"{where}: empty basename")
            if base in seen:
                raise AxisDataError(f"{where}: basename {base!r} listed twice")
            angle = _parse_angle(angle_text, where, modulus)
            try:
                count = int(count_text)
            except ValueError:
                raise AxisDataError(f"{where}: count {count_text!r} is not an integer") from None
            if count < 1:
                raise AxisDataError(f"{where}: count must be >= 1, got {count}")
            paths = []
            for n in range(count):
                p = _find_image(image_dir, f"{base}-{n}")
                if p is None:
                    raise AxisDataError(
                        f"{where}: image {base}-{n}.tif|jpg not found in {image_dir}"
                    )
                paths.append(p)
            seen.add(base)
            crystals.append(Crystal(base, angle, tuple(paths)))
    if not crystals:
        raise AxisDataError(f"{angles_path}: no rows")
    return crystals


def read_test_set(image_dir: Path, annotation_dir: Path, modulus: float = 30.0) -> list[TestImage]:
    """Every `<image>.tif|jpg` with its `<image>-edges.csv` (first line: the true angle)."""
    image_dir, annotation_dir = Path(image_dir), Path(annotation_dir)
    for d, what in ((image_dir, "image"), (annotation_dir, "annotation")):
        if not d.is_dir():
            raise AxisDataError(f"{what} folder not found: {d}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise AxisDataError(f"no .tif/.jpg images in {image_dir}")
    out = []
    for p in images:
        ann = annotation_dir / f"{p.stem}-edges.csv"
        if not ann.is_file():
            raise AxisDataError(f"annotation {ann} for image {p.name} not found")
        lines = ann.read_text().splitlines()
        first = lines[0] if lines else ""
        field = next(csv.reader([first]), [""])
        text = field[0].strip() if field else ""
        out.append(TestImage(p.stem, _parse_angle(text, f"{ann}:1", modulus), p))
    return out


def load_images(paths: Sequence[Path], size_px: int | None = None) -> np.ndarray:
    """Images -> (n, px, px, 3) uint8 (RGB), box-resized to `size_px` when given.

    16-bit images are scaled to 8 bits per image (the network input is scale-free).
    """
    arrays = []
    for p in paths:
        try:
            img = Image.open(p)
            img.load()
        except Exception as exc:  # PIL raises many types for a bad file
            raise AxisDataError(f"cannot read image {p}: {exc}") from exc
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            arr = np.clip(np.rint(arr * (255.0 / max(float(arr.max()), 1e-9))), 0, 255)
            arr = arr.astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = arr[..., :3]
        if arr.shape[0] != arr.shape[1]:
            raise AxisDataError(f"image {p} is {arr.shape[1]}x{arr.shape[0]} px, not square")
        if size_px and arr.shape[0] != size_px:
            pil = Image.fromarray(arr)
            arr = np.asarray(pil.resize((size_px, size_px), Image.Resampling.BOX))
        arrays.append(arr)
    if not arrays:
        raise AxisDataError("no images to load")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise AxisDataError(f"images differ in size {sorted(shapes)}: pass an input size")
    return np.stack(arrays)


def split_by_basename(
    crystals: Sequence[Crystal], val_fraction: float, seed: int
) -> tuple[list[Crystal], list[Crystal]]:
    """Random train/val split of whole crystals: augmented copies never straddle the split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(crystals))
    n_val = round(len(crystals) * val_fraction)
    if val_fraction > 0 and len(crystals) > 1:
        n_val = min(max(n_val, 1), len(crystals) - 1)
    val_idx = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(crystals) if i not in val_idx]
    val = [c for i, c in enumerate(crystals) if i in val_idx]
    return train, val
