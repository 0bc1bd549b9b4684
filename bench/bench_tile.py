"""Per-tile processing time at the simulator's default tile size (issue #2).

Renders tiles of a typical and a crowded simulated chip (rendering is not timed), then times
the tile pipeline (preselection, CNN on candidate crops, axis angle) on each, and prints
medians per tile and per megapixel with the stage split.

    .venv/bin/python bench/bench_tile.py [--tiles 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from flakescan.hardware.frame import Frame
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig
from flakescan.inference.pipeline import TilePipeline
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.render import FieldRenderer

PX = 0.57


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench(name: str, spec: ChipSpec, n_tiles: int, repeats: int, pipe: TilePipeline) -> dict:
    chip = generate_chip(spec, 7)
    imaging = ImagingSpec()
    renderer = FieldRenderer(chip, imaging, PX, 0.14, seed=7)
    rng = np.random.default_rng(7)
    frames = []
    for i in range(n_tiles):
        x, y = rng.uniform(400, spec.width_um - 400), rng.uniform(400, spec.height_um - 400)
        frames.append(Frame(renderer.render(x, y, frame_index=i), x, y, 0.0, PX, 0.0, index=i))
    pipe.process(frames[0])  # warm-up: first ONNX Runtime call allocates
    totals, stages, candidates = [], {"preselection": [], "classifier": [], "axis": []}, []
    for _ in range(repeats):
        for f in frames:
            t0 = time.perf_counter()
            res = pipe.process(f)
            totals.append(1000 * (time.perf_counter() - t0))
            for k in stages:
                stages[k].append(res.timings_ms[k])
            candidates.append(res.n_candidates)
    mp = imaging.width_px * imaging.height_px / 1e6
    med = statistics.median(totals)
    return {
        "name": name,
        "tile_ms": med,
        "ms_per_mp": med / mp,
        "p90_ms": float(np.percentile(totals, 90)),
        "stages": {k: statistics.median(v) for k, v in stages.items()},
        "candidates": statistics.mean(candidates),
        "mp": mp,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pipe = TilePipeline(PreselectionConfig(), FlakeClassifier.from_config(ModelsConfig()))
    typical = ChipSpec()
    crowded = ChipSpec(
        thin_flakes_per_mm2=40, bulk_crystals_per_mm2=25, residue_per_mm2=30, dust_per_mm2=80
    )
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    im = ImagingSpec()
    print(
        f"tile: {im.width_px} x {im.height_px} px RGB8 at {PX} um/px; "
        f"{args.tiles} tiles x {args.repeats} repeats per chip\n"
    )
    print(
        f"{'chip':10} {'tile ms':>8} {'ms/MP':>7} {'p90 ms':>7} {'presel':>7} {'cnn':>6} "
        f"{'axis':>6} {'cands':>6}"
    )
    results = [
        bench("typical", typical, args.tiles, args.repeats, pipe),
        bench("crowded", crowded, args.tiles, args.repeats, pipe),
    ]
    for r in results:
        s = r["stages"]
        print(
            f"{r['name']:10} {r['tile_ms']:8.1f} {r['ms_per_mp']:7.1f} {r['p90_ms']:7.1f} "
            f"{s['preselection']:7.1f} {s['classifier']:6.1f} {s['axis']:6.1f} "
            f"{r['candidates']:6.1f}"
        )
    print(f"\ntile_ms_typical {results[0]['tile_ms']:.1f}")
    print(f"tile_ms_per_mp {results[0]['ms_per_mp']:.1f}")
    print(f"tile_ms_crowded {results[1]['tile_ms']:.1f}")


if __name__ == "__main__":
    main()
