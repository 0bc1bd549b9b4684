"""Mosaics: a whole chip as one image with its stage calibration.

A mosaic is what a lab keeps of a scan (tiles stitched by their stage positions) and what
the replay backend serves fields of view from. Stored as an image (PNG, 8 or 16 bits) beside
a JSON sidecar: the image file, micrometres per pixel, the stage position of pixel (0, 0)'s
centre, and whether the values are linear in light.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .chip import Chip
from .config import ImagingSpec
from .render import FieldRenderer

__all__ = ["Mosaic", "render_mosaic"]

Image.MAX_IMAGE_PIXELS = 400_000_000  # a 10 x 10 mm chip at 0.5 um/px


@dataclass(frozen=True)
class Mosaic:
    """An (H, W, 3) image of the stage plane; pixel (r, c) is centred at
    (origin_x + c * um_per_px, origin_y + r * um_per_px)."""

    image: np.ndarray
    um_per_px: float
    origin_um: tuple[float, float]
    linear: bool = True

    @property
    def extent_um(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the area the mosaic covers."""
        h, w = self.image.shape[:2]
        ox, oy, px = *self.origin_um, self.um_per_px
        return (ox - px / 2, oy - px / 2, ox + (w - 0.5) * px, oy + (h - 0.5) * px)

    def crop(self, x_um: float, y_um: float, shape: tuple[int, int]) -> np.ndarray:
        """The (h, w, 3) field of view centred at (x, y); zero where the mosaic ends."""
        h, w = shape
        px = self.um_per_px
        c0 = round((x_um - self.origin_um[0]) / px - (w - 1) / 2)
        r0 = round((y_um - self.origin_um[1]) / px - (h - 1) / 2)
        out = np.zeros((h, w, self.image.shape[2]), self.image.dtype)
        H, W = self.image.shape[:2]
        rs, re = max(r0, 0), min(r0 + h, H)
        cs, ce = max(c0, 0), min(c0 + w, W)
        if rs < re and cs < ce:
            out[rs - r0 : re - r0, cs - c0 : ce - c0] = self.image[rs:re, cs:ce]
        return out

    def save(self, folder: Path, name: str = "mosaic") -> Path:
        """Write `<name>.png` and `<name>.json`; returns the JSON path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.image).save(folder / f"{name}.png")
        sidecar = folder / f"{name}.json"
        sidecar.write_text(
            json.dumps(
                {
                    "image": f"{name}.png",
                    "um_per_px": self.um_per_px,
                    "origin_um": list(self.origin_um),
                    "linear": self.linear,
                },
                indent=1,
            )
        )
        return sidecar

    @classmethod
    def load(cls, sidecar: Path) -> Mosaic:
        """Read a mosaic from its JSON sidecar; errors name the file and the field."""
        sidecar = Path(sidecar)
        try:
            meta = json.loads(sidecar.read_text())
            image_path = sidecar.parent / meta["image"]
            um_per_px = float(meta["um_per_px"])
            ox, oy = (float(v) for v in meta["origin_um"])
        except FileNotFoundError:
            raise FileNotFoundError(f"no mosaic description at {sidecar}") from None
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{sidecar}: not a mosaic description ({exc})") from None
        if um_per_px <= 0:
            raise ValueError(f"{sidecar}: um_per_px = {um_per_px} must be positive")
        image = np.asarray(Image.open(image_path).convert("RGB"))
        return cls(image, um_per_px, (ox, oy), bool(meta.get("linear", True)))

    @classmethod
    def from_tiles(cls, folder: Path) -> Mosaic:
        """Stitch a folder of recorded tiles by their stage positions.

        `tiles.csv` lists `file,x_um,y_um` (tile centres) and `tiles.json` holds
        `um_per_px` and `linear`. Later tiles overwrite earlier ones where they overlap.
        """
        folder = Path(folder)
        meta = json.loads((folder / "tiles.json").read_text())
        px = float(meta["um_per_px"])
        with open(folder / "tiles.csv", newline="") as f:
            rows = [(r["file"], float(r["x_um"]), float(r["y_um"])) for r in csv.DictReader(f)]
        if not rows:
            raise ValueError(f"{folder / 'tiles.csv'} lists no tiles")
        tiles = [
            (np.asarray(Image.open(folder / name).convert("RGB")), x, y) for name, x, y in rows
        ]
        h, w = tiles[0][0].shape[:2]
        xs = [x for _, x, _ in tiles]
        ys = [y for _, _, y in tiles]
        ox = min(xs) - (w - 1) / 2 * px
        oy = min(ys) - (h - 1) / 2 * px
        W = round((max(xs) - min(xs)) / px) + w
        H = round((max(ys) - min(ys)) / px) + h
        canvas = np.zeros((H, W, 3), tiles[0][0].dtype)
        for img, x, y in tiles:
            c0 = round((x - ox) / px - (w - 1) / 2)
            r0 = round((y - oy) / px - (h - 1) / 2)
            canvas[r0 : r0 + h, c0 : c0 + w] = img
        return cls(canvas, px, (ox, oy), bool(meta.get("linear", True)))


def render_mosaic(
    chip: Chip,
    imaging: ImagingSpec,
    pixel_size_um: float,
    numerical_aperture: float,
    *,
    seed: int = 0,
    region_um: tuple[float, float, float, float] | None = None,
    chunk_px: int = 1024,
) -> Mosaic:
    """Render a region of the chip (default: all of it and a margin) as one mosaic.

    A stitched mosaic is flat-field corrected, so the illumination here is even; noise,
    blur, flare, bit depth and encoding are the camera's.
    """
    margin = 50.0
    x0, y0, x1, y1 = region_um or (
        -margin,
        -margin,
        chip.spec.width_um + margin,
        chip.spec.height_um + margin,
    )
    w = int(np.ceil((x1 - x0) / pixel_size_um))
    h = int(np.ceil((y1 - y0) / pixel_size_um))
    flat = imaging.model_copy(
        update={
            "width_px": chunk_px,
            "height_px": chunk_px,
            "vignetting": 0.0,
            "illumination_offset": (0.0, 0.0),
            "illumination_gradient": 0.0,
        }
    )
    renderer = FieldRenderer(chip, flat, pixel_size_um, numerical_aperture, seed=seed)
    canvas: np.ndarray | None = None
    origin = (x0 + pixel_size_um / 2, y0 + pixel_size_um / 2)
    k = 0
    for r0 in range(0, h, chunk_px):
        for c0 in range(0, w, chunk_px):
            # Centre of the chunk whose pixel (0, 0) lands on canvas pixel (r0, c0).
            cx = origin[0] + (c0 + (chunk_px - 1) / 2) * pixel_size_um
            cy = origin[1] + (r0 + (chunk_px - 1) / 2) * pixel_size_um
            tile = renderer.render(cx, cy, frame_index=k)
            k += 1
            if canvas is None:
                canvas = np.zeros((h, w, 3), tile.dtype)
            canvas[r0 : r0 + chunk_px, c0 : c0 + chunk_px] = tile[: h - r0, : w - c0]
    assert canvas is not None
    return Mosaic(canvas, pixel_size_um, origin, imaging.linear)
