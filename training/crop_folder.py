"""A lab's own labelled crops: `images/<name>.png` + `labels/<name>.txt` ("c1 c2 c3 any").

This is the GrapheneClassifier seed's convention, also written by
`flakescan.simulators.datasets.write_classifier_set`. Each crop is turned into the network
input the way the daemon turns a tile region into one (`inference.crops`): linear pixels ->
light Gaussian smoothing (the preselection's `smooth_sigma_px`) -> contrast
1 - I / background per channel -> area-resampled to `input_px`.

The daemon divides by the wafer background fitted on the whole tile; a stored crop has no
tile around it. The default background is the crop's own per-channel median, which is the
wafer as long as bare wafer covers more than half of the crop (true for crops cut round a
flake at the daemon's 100 um size); it cannot be right for a crop that is mostly flake.
The daemon's quadratic wafer fit (`inference.background.estimate_background`) unanchored
bends into the flakes of a 175-px crop (90th-percentile R contrast of positive simulated
crops: 5 % with the median, 0.7 % with the fit). Anchored on the crop's border colour
(`inference.crops.crop_contrast`) it does better than the median for the shipped CNN-4
("any" F1 0.847 vs 0.718 on a held-out simulated folder, docs/evaluate-model.md), because a
median leaves the field's illumination fall-off in the contrast. Which transform trains
the better model from a folder is not measured yet; the median stays the default here.

Pixels must be linear in light (raw camera values, no gamma): contrast from sRGB-encoded
JPEGs is biased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from flakescan.inference.crops import classifier_crop

__all__ = [
    "IMAGE_SUFFIXES",
    "CropFolderError",
    "CropSet",
    "crop_to_input",
    "list_images",
    "load_crop_folder",
    "read_image",
    "read_label_file",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
CLASS_COUNT = 4
Background = Literal["median"]


class CropFolderError(ValueError):
    """A crop folder that cannot be read; the message names the offending file."""


@dataclass
class CropSet:
    """Network inputs x (n, 3, px, px) float16 and labels y (n, 4) uint8 from a folder."""

    x: np.ndarray
    y: np.ndarray
    names: list[str]
    root: Path
    crop_um: float
    input_px: int
    background: str
    files: list[Path] = field(default_factory=list)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        from .flake_dataset import CLASS_NAMES

        out = {name: int(self.y[:, k].sum()) for k, name in enumerate(CLASS_NAMES)}
        out["negatives"] = int((self.y[:, 3] == 0).sum())
        out["total"] = len(self)
        return out

    def subset(self, idx: np.ndarray) -> CropSet:
        """The crops at `idx` (for held-out fractions and data-efficiency runs)."""
        idx = np.asarray(idx)
        return CropSet(
            x=self.x[idx],
            y=self.y[idx],
            names=[self.names[i] for i in idx],
            root=self.root,
            crop_um=self.crop_um,
            input_px=self.input_px,
            background=self.background,
        )


def read_label_file(path: Path) -> np.ndarray:
    """(4,) uint8 from a one-line "c1 c2 c3 any" file of 0/1 values."""
    path = Path(path)
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != 1:
        raise CropFolderError(
            f"{path}: expected one line 'c1 c2 c3 any' (0 or 1 each), found {len(lines)} lines"
        )
    tokens = lines[0].replace(",", " ").split()
    if len(tokens) != CLASS_COUNT or any(t not in ("0", "1") for t in tokens):
        raise CropFolderError(
            f"{path}: malformed label line {lines[0]!r}; expected 4 values 'c1 c2 c3 any', "
            "each 0 or 1"
        )
    return np.array([int(t) for t in tokens], np.uint8)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (any of IMAGE_SUFFIXES), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CropFolderError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path) -> np.ndarray:
    """(h, w, 3) float32 linear pixel values of an 8/16-bit RGB, RGBA or grey image."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types for a broken file
        raise CropFolderError(f"{path}: not a readable image ({exc})") from exc
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] >= 3:
        arr = arr[..., :3]
    else:
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return arr.astype(np.float32)


def crop_to_input(
    image: np.ndarray,
    input_px: int,
    *,
    background: Background = "median",
    smooth_sigma_px: float = 1.0,
) -> np.ndarray:
    """(3, input_px, input_px) float32 contrast input of one whole crop (see module doc).

    A non-square crop is centred in a square of its longer side, padded with bare wafer (0),
    as the daemon pads crops at a tile edge.
    """
    img = image.astype(np.float32)
    if background != "median":
        raise ValueError(f"background must be 'median', got {background!r}")
    bg = np.median(img.reshape(-1, 3), axis=0)
    if smooth_sigma_px > 0:  # as contrast_image() smooths the tile before dividing
        img = ndimage.gaussian_filter(img, sigma=(smooth_sigma_px, smooth_sigma_px, 0))
    contrast = 1.0 - img / np.maximum(bg, 1e-3)
    h, w = contrast.shape[:2]
    side = max(h, w)
    centre = (float(h // 2), float(w // 2))  # crop_window puts the square at 0..side
    return classifier_crop(contrast, centre, 1.0, float(side), input_px)


def _manifest_crop_um(root: Path) -> float | None:
    manifest = root / "dataset.json"
    if not manifest.is_file():
        return None
    try:
        value = json.loads(manifest.read_text()).get("crop_um")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CropFolderError(f"{manifest}: not valid JSON ({exc})") from exc
    return float(value) if value is not None else None


def load_crop_folder(
    root: Path,
    input_px: int = 64,
    *,
    crop_um: float | None = None,
    background: Background = "median",
    smooth_sigma_px: float = 1.0,
    labelled: bool = True,
) -> CropSet:
    """Read every crop of `root/images` (and its label in `root/labels` when `labelled`).

    `crop_um`, the physical side of the crops, comes from the folder's dataset.json when
    not given; the model card must state it so the daemon cuts crops of the same size.
    """
    from .export import dataset_sha256

    root = Path(root)
    images_dir = root / "images" if (root / "images").is_dir() else root
    if labelled and not (root / "images").is_dir():
        raise CropFolderError(f"{root}: no images/ folder (expected images/<name>.png)")
    images = list_images(images_dir)
    if not images:
        raise CropFolderError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if crop_um is None:
        crop_um = _manifest_crop_um(root)
    if labelled and crop_um is None:
        raise CropFolderError(
            f"{root}: the crops' physical size is unknown; give --crop-um (um per crop side) "
            "or a dataset.json with crop_um"
        )
    labels, label_files = [], []
    if labelled:
        for img in images:
            lf = root / "labels" / f"{img.stem}.txt"
            if not lf.is_file():
                raise CropFolderError(f"{img}: label file missing, expected {lf}")
            labels.append(read_label_file(lf))
            label_files.append(lf)
    x = np.stack(
        [
            crop_to_input(
                read_image(p), input_px, background=background, smooth_sigma_px=smooth_sigma_px
            )
            for p in images
        ]
    ).astype(np.float16)
    y = np.stack(labels) if labelled else np.zeros((len(images), CLASS_COUNT), np.uint8)
    files = [*images, *label_files]
    return CropSet(
        x=x,
        y=y,
        names=[p.stem for p in images],
        root=root,
        crop_um=float(crop_um) if crop_um is not None else float("nan"),
        input_px=input_px,
        background=background,
        files=files,
        sha256=dataset_sha256(files),
    )
