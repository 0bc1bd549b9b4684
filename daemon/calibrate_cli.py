"""`flakescan calibrate`: a preselection preset from a few flakes of known layer number.

Examples are catalogue flakes (`--flake ID:LAYERS`, their measured median contrast) or boxes
on an image (`--image FILE --box X0 Y0 X1 Y1 --layers N`, in pixels; the flake's pixels
are those in the box that stand out of the fitted wafer background, so a box should hold
one flake and bare wafer, nothing else). The preset is saved by name in
the state directory's `presets/`; `scan --preset NAME` uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .catalogue_cli import database_url
from .config import load_config, presets_dir, resolve_state_dir
from .output import EXIT_OK

__all__ = ["add_calibrate_command", "cmd_calibrate"]

_STANDS_OUT = 0.02  # contrast in some channel beyond this: a flake pixel, not wafer


def _presets_folder(args: argparse.Namespace) -> Path:
    cfg = load_config(args.config)
    return presets_dir(resolve_state_dir(cfg, args.state_dir))


def _parse_flake(spec: str) -> tuple[int, int]:
    try:
        fid, layers = spec.split(":")
        return int(fid), int(layers)
    except ValueError:
        raise ValueError(f"--flake {spec!r}: expected ID:LAYERS, e.g. 12:1") from None


def _from_catalogue(args: argparse.Namespace) -> list:
    from flakescan.db.engine import open_database
    from flakescan.db.queries import get_flake
    from flakescan.inference.calibration import FlakeExample

    if not args.flake:
        return []
    out = []
    engine = open_database(database_url(args), create=False)
    try:
        for spec in args.flake:
            fid, layers = _parse_flake(spec)
            row = get_flake(engine, fid)
            if row is None:
                raise ValueError(f"--flake {spec!r}: no flake with id {fid}")
            rgb = (row["contrast_r"], row["contrast_g"], row["contrast_b"])
            out.append(FlakeExample(layers, rgb, None, f"flake {fid}"))
    finally:
        engine.dispose()
    return out


def _from_image(args: argparse.Namespace) -> list:
    from flakescan.inference.background import estimate_background
    from flakescan.inference.calibration import FlakeExample
    from flakescan.inference.flake_analysis import read_tile_image
    from flakescan.inference.preselection import contrast_image

    if not args.image:
        return []
    if not args.box or len(args.box) != len(args.layers or []):
        raise ValueError("--image needs one --layers N for every --box X0 Y0 X1 Y1")
    image = read_tile_image(args.image, srgb=not args.linear)
    contrast = contrast_image(image, estimate_background(image), 1.0)
    h, w = contrast.shape[:2]
    out = []
    for box, layers in zip(args.box, args.layers, strict=True):
        x0, y0, x1, y1 = (round(v) for v in box)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"--box {box}: outside the {w} x {h} image or empty")
        region = contrast[y0:y1, x0:x1].reshape(-1, contrast.shape[2])
        flake = region[np.abs(region).max(axis=1) > _STANDS_OUT]
        if len(flake) < 10:
            raise ValueError(f"--box {box}: fewer than 10 pixels stand out of the wafer")
        rgb = tuple(float(v) for v in np.median(flake, axis=0))
        out.append(FlakeExample(layers, rgb, flake, f"{args.image.name} box {box}"))
    return out


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a preselection preset (per-layer contrast Gaussians) from example flakes."""
    from flakescan.inference.calibration import fit_preset

    examples = _from_catalogue(args) + _from_image(args)
    preset = fit_preset(
        examples,
        args.name,
        material=args.material or "",
        substrate=args.substrate or "",
        prior_sigma=args.prior_sigma,
    )
    path = preset.save(_presets_folder(args))
    lo, hi = preset.window()
    print(
        json.dumps(
            {
                "preset": str(path),
                "layers": {m.layers: {"mean": m.mean, "flakes": m.flakes} for m in preset.layers},
                "contrast_min": lo,
                "contrast_max": hi,
            },
            indent=1,
        )
    )
    print(f"use it: flakescan scan --preset {preset.name}", file=sys.stderr)
    return EXIT_OK


def add_calibrate_command(add) -> None:
    sp = add("calibrate", cmd_calibrate)
    sp.add_argument("--name", required=True, help="the preset's name (letters, digits, . _ -)")
    sp.add_argument("--flake", action="append", help="a catalogue flake, ID:LAYERS (repeatable)")
    sp.add_argument("--image", type=Path, help="an image of example flakes")
    sp.add_argument("--box", type=float, nargs=4, action="append", metavar=("X0", "Y0", "X1", "Y1"))
    sp.add_argument("--layers", type=int, action="append", help="layers of each --box")
    sp.add_argument("--linear", action="store_true", help="the image is linear, not sRGB")
    sp.add_argument("--material", help="e.g. hBN")
    sp.add_argument("--substrate", help="e.g. '90 nm SiO2/Si'")
    sp.add_argument("--prior-sigma", type=float, default=0.01, help="floor of each layer's spread")
    sp.add_argument("--db", help="database file or SQLAlchemy URL (default: from config)")
    sp.add_argument("--state-dir", type=Path)
