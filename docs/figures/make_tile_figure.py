"""Draw one simulated tile with what the pipeline found on it: docs/figures/tile-hits.png.

    .venv/bin/python docs/figures/make_tile_figure.py

Boxes by class (1 red, 2 orange, 3 yellow), a line through each hit along its measured
crystal axis, and the simulator's true outlines of 1-5-layer flakes in thin cyan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flakescan.daemon.config import load_config
from flakescan.hardware.frame import Frame
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.pipeline import TilePipeline
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.render import FieldRenderer

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {1: (255, 60, 60), 2: (255, 160, 0), 3: (255, 235, 0)}
# A tile of the default chip (seed 1) that holds flakes of all three classes.
X_UM, Y_UM = 1800.0, 2000.0


def main() -> None:
    cfg = load_config(ROOT / "service.toml")
    chip = generate_chip(cfg.simulator.chip, cfg.simulator.seed)
    px = cfg.objective.pixel_size_um
    renderer = FieldRenderer(chip, cfg.simulator.imaging, px, cfg.objective.numerical_aperture)
    frame = Frame(renderer.render(X_UM, Y_UM), X_UM, Y_UM, 0.0, px, 0.0)
    pipe = TilePipeline(cfg.preselection, FlakeClassifier.from_config(cfg.models))
    result = pipe.process(frame)

    img = frame.image.astype(np.float32) / np.percentile(frame.image, 99.5)
    canvas = Image.fromarray((255 * np.clip(img, 0, 1) ** (1 / 2.2)).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    h, w = frame.shape
    x0, y0 = frame.pixel_to_stage(-0.5, -0.5)
    for obj in chip.query(x0, y0, x0 + w * px, y0 + h * px):
        if obj.kind == "flake" and obj.layers and obj.layers <= 5:
            pts = [frame.stage_to_pixel(x, y)[::-1] for x, y in obj.outline_um]
            draw.polygon(pts, outline=(0, 255, 255))
    for k, hit in enumerate(result.hits, start=1):
        r0, c0 = frame.stage_to_pixel(hit.bbox_um[0], hit.bbox_um[1])
        r1, c1 = frame.stage_to_pixel(hit.bbox_um[2], hit.bbox_um[3])
        colour = COLOURS.get(hit.flake_class, (255, 255, 255))
        draw.rectangle([c0 - 4, r0 - 4, c1 + 4, r1 + 4], outline=colour, width=3)
        label = f"{k}: class {hit.flake_class}"
        if hit.axis_angle_deg is not None:
            label += f", axis {hit.axis_angle_deg:.1f} deg"
            r, c = hit.centroid_px
            t = np.radians(hit.axis_angle_deg)
            half = 0.5 * max(c1 - c0, r1 - r0)
            draw.line(
                [
                    c - half * np.cos(t),
                    r - half * np.sin(t),
                    c + half * np.cos(t),
                    r + half * np.sin(t),
                ],
                fill=colour,
                width=2,
            )
        draw.text((c0 - 4, max(r0 - 18, 0)), label, fill=colour)
    out = ROOT / "docs" / "figures" / "tile-hits.png"
    canvas.save(out)
    print(f"wrote {out}: {len(result.hits)} hits, {result.n_candidates} candidates")


if __name__ == "__main__":
    main()
