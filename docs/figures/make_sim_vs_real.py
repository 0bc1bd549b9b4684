"""Simulated hBN tiles beside real ones from UA_BN: docs/figures/sim-vs-real.png.

    .venv/bin/python docs/figures/make_sim_vs_real.py [--ua-bn PATH]

The real images are JPEGs from a consumer-style camera (sRGB, saturated, white-balanced);
the simulated tiles go through the same kind of rendering: the physics is unchanged, only
the camera's white balance and colour saturation are fitted so that the bare wafer has the
real images' colour. Real images: UA_BN dataset (CC BY 4.0), doi:10.1038/s41598-023-28664-3.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.render import FieldRenderer

ROOT = Path(__file__).resolve().parents[2]
REAL = (
    "test/1-079_jpg.rf.74926c52b831fd3668870f70546602ae.jpg",
    "test/2-080_jpg.rf.2eb59eae586da6ebf7b4e2474200b6fd.jpg",
)
PX = 0.5  # um per pixel assumed for the simulated camera (UA_BN states none)
SATURATION = 1.8


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def fitted_white_balance(real: np.ndarray, spec: ImagingSpec, chip_spec: ChipSpec) -> tuple:
    """Per-channel gains that give the simulated wafer the real images' colour."""
    target = srgb_decode(np.median(real.reshape(-1, 3), axis=0) / 255.0)
    # Undo the saturation matrix: x = (y - (1 - s) mean(y)) / s keeps mean(x) = mean(y).
    linear = (target - (1 - SATURATION) * target.mean()) / SATURATION
    chip = generate_chip(chip_spec.model_copy(update={"width_um": 500, "height_um": 500}), 0)
    r = FieldRenderer(chip, spec, PX, 0.14)
    wafer = (
        r.substrate_reflectance * (1 + spec.flare) * spec.white_electrons_20ms / spec.full_well_e
    )
    return tuple(float(g) for g in linear / wafer)


def label(img: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 8 + 7 * len(text), 18], fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ua-bn", type=Path, default=ROOT.parent / "shared" / "data" / "ua_bn")
    args = ap.parse_args()
    reals = [np.asarray(Image.open(args.ua_bn / name).convert("RGB")) for name in REAL]
    chip_spec = ChipSpec(
        material="hBN",
        bulk_thickness_nm=(20.0, 400.0),
        clusters_per_mm2=1.5,
        fragments_per_cluster=40.0,
        bulk_crystals_per_mm2=6.0,
        dust_per_mm2=40.0,
    )
    base = ImagingSpec(
        width_px=1920, height_px=1080, encoding="srgb", saturation=SATURATION, jpeg_quality=85
    )
    imaging = base.model_copy(
        update={"white_balance": fitted_white_balance(reals[0], base, chip_spec)}
    )
    chip = generate_chip(chip_spec, 11)
    renderer = FieldRenderer(chip, imaging, PX, 0.14, seed=11)
    # Two fields with a crowded patch in them, as the real images have.
    pts = np.array([o.centroid_um for o in chip.objects if o.kind == "bulk"])
    hist, xe, ye = np.histogram2d(pts[:, 0], pts[:, 1], bins=8, range=[[500, 4500], [500, 4500]])
    order = np.argsort(hist.ravel())[::-1]
    best = order[[3, 6]]  # busy, not the busiest
    sims = []
    for k in best:
        i, j = np.unravel_index(k, hist.shape)
        sims.append(renderer.render((xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2))
    tiles = [
        label(Image.fromarray(a).resize((960, 540)), f"real (UA_BN): {n}")
        for a, n in zip(reals, ("1-079", "2-080"), strict=True)
    ]
    tiles += [
        label(Image.fromarray(a).resize((960, 540)), f"simulated hBN, chip 11, field {n}")
        for n, a in enumerate(sims, start=1)
    ]
    grid = Image.new("RGB", (1920, 1080))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % 2) * 960, (k // 2) * 540))
    out = ROOT / "docs" / "figures" / "sim-vs-real.png"
    grid.save(out)
    print(f"wrote {out}; white balance {imaging.white_balance}")


if __name__ == "__main__":
    main()
