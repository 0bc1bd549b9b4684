"""Tile processing as the daemon runs it: per tile and per megapixel, by stage, by candidates.

Renders tiles of a typical and a crowded simulated chip at each tile size (rendering is not
timed), then times the daemon's tile pipeline (preselection, the classifier on candidate
crops, both axis readings: straight edges and the axis CNN) on each. Prints medians, the
stage split, a plot of processing time against candidates per tile, and memory over a long
run of tiles. The sizes: the simulator's default 0.79 MP, 2DMatGMM's 2.3 MP frame, and the
seed's 16 MP (4908 x 3264) low-magnification tiles.

    .venv/bin/python bench/bench_tile.py [--tiles 12] [--repeats 3] [--sizes 0.79,2.3,16]
        [--memory-tiles 1000] [--plot docs/figures/bench-candidates.png] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from flakescan.hardware.frame import Frame
from flakescan.inference.axis_model import AxisModel
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig
from flakescan.inference.pipeline import TilePipeline
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.render import FieldRenderer

PX = 0.57  # um/px: the simulator's scanning objective
SIZES = {"0.79": (1024, 768), "2.3": (1920, 1200), "16": (4908, 3264)}
TYPICAL = ChipSpec()  # a 5 x 5 mm chip: a 16 MP tile (2.8 x 1.9 mm) still lies on it
CROWDED = ChipSpec(
    thin_flakes_per_mm2=40,
    bulk_crystals_per_mm2=25,
    residue_per_mm2=30,
    dust_per_mm2=80,
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def daemon_pipeline() -> TilePipeline:
    models = ModelsConfig()
    return TilePipeline.for_models(
        PreselectionConfig(),
        models,
        FlakeClassifier.from_config(models),
        AxisModel.from_config(models),
    )


def render_tiles(spec: ChipSpec, size: tuple[int, int], n: int, seed: int = 7) -> list[Frame]:
    w, h = size
    chip = generate_chip(spec, seed)
    imaging = ImagingSpec(width_px=w, height_px=h)
    renderer = FieldRenderer(chip, imaging, PX, 0.14, seed=seed)
    rng = np.random.default_rng(seed)
    fw, fh = w * PX, h * PX
    frames = []
    for i in range(n):
        x = rng.uniform(fw / 2 + 200, spec.width_um - fw / 2 - 200)
        y = rng.uniform(fh / 2 + 200, spec.height_um - fh / 2 - 200)
        frames.append(Frame(renderer.render(x, y, frame_index=i), x, y, 0.0, PX, 0.0, index=i))
    return frames


def time_tiles(pipe: TilePipeline, frames: list[Frame], repeats: int) -> list[dict]:
    """One record per tile run: total and stage times, candidates, hits."""
    pipe.start_chip()
    pipe.process(frames[0])  # warm-up: the first ONNX Runtime calls allocate
    records = []
    for _ in range(repeats):
        for f in frames:
            t0 = time.perf_counter()
            res = pipe.process(f)
            records.append(
                {
                    "ms": 1000 * (time.perf_counter() - t0),
                    **{k: res.timings_ms[k] for k in ("preselection", "classifier", "axis")},
                    "candidates": res.n_candidates,
                    "hits": len(res.hits),
                }
            )
    return records


def summarise(name: str, size: str, records: list[dict], mp: float) -> dict:
    med = statistics.median(r["ms"] for r in records)
    return {
        "chip": name,
        "size": size,
        "mp": mp,
        "tile_ms": med,
        "ms_per_mp": med / mp,
        "p90_ms": float(np.percentile([r["ms"] for r in records], 90)),
        "stages": {
            k: statistics.median(r[k] for r in records)
            for k in ("preselection", "classifier", "axis")
        },
        "candidates": statistics.mean(r["candidates"] for r in records),
        "runs": len(records),
    }


def memory_run(pipe: TilePipeline, frames: list[Frame], n: int) -> list[tuple[int, float]]:
    """RSS every 50 tiles over `n` tiles (the frames over and over, as a scan would)."""
    samples = [(0, rss_mb())]
    pipe.start_chip()
    for i in range(1, n + 1):
        pipe.process(frames[i % len(frames)])
        if i % 50 == 0:
            samples.append((i, rss_mb()))
    return samples


def plot(records_by: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, recs in records_by.items():
        ax.scatter([r["candidates"] for r in recs], [r["ms"] for r in recs], s=10, label=label)
    ax.set_xlabel("candidates per tile")
    ax.set_ylabel("tile processing, ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Tile processing against candidates (2 cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=12, help="tiles per chip and size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="0.79,2.3,16", help=f"of {', '.join(SIZES)} (MP)")
    ap.add_argument("--memory-tiles", type=int, default=1000, help="0: skip")
    ap.add_argument("--plot", type=Path, default=None, help="PNG: time against candidates")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = ap.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",")]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"--sizes: {s!r} is not one of {', '.join(SIZES)}")
    pipe = daemon_pipeline()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.tiles} tiles x {args.repeats} repeats per chip and size, {PX} um/px\n")
    print(
        f"{'size':>5} {'chip':8} {'tile ms':>8} {'ms/MP':>7} {'p90 ms':>7} {'presel':>7} "
        f"{'cnn':>6} {'axis':>6} {'cands':>6}"
    )
    results, by_label, frames_for_memory = [], {}, None
    for size in sizes:
        w, h = SIZES[size]
        mp = w * h / 1e6
        for name, spec in (("typical", TYPICAL), ("crowded", CROWDED)):
            frames = render_tiles(spec, (w, h), args.tiles)
            records = time_tiles(pipe, frames, args.repeats)
            r = summarise(name, size, records, mp)
            results.append(r)
            by_label[f"{size} MP {name}"] = records
            if size == "2.3" and name == "typical":
                frames_for_memory = frames
            s = r["stages"]
            print(
                f"{size:>5} {name:8} {r['tile_ms']:8.1f} {r['ms_per_mp']:7.1f} {r['p90_ms']:7.1f} "
                f"{s['preselection']:7.1f} {s['classifier']:6.1f} {s['axis']:6.1f} "
                f"{r['candidates']:6.1f}",
                flush=True,
            )
    memory = []
    if args.memory_tiles and frames_for_memory:
        memory = memory_run(pipe, frames_for_memory, args.memory_tiles)
        first = next(m for n, m in memory if n >= 100)
        print(
            f"\nmemory over {args.memory_tiles} tiles of 2.3 MP: {memory[0][1]:.0f} MB at start, "
            f"{first:.0f} MB after 100, {memory[-1][1]:.0f} MB after {memory[-1][0]} "
            f"(growth after 100: {memory[-1][1] - first:+.1f} MB)"
        )
    if args.plot:
        plot(by_label, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "memory": memory}, indent=1))
    key = next((r for r in results if r["size"] == "2.3" and r["chip"] == "typical"), results[0])
    big = next((r for r in results if r["size"] == "16" and r["chip"] == "typical"), None)
    print(f"\ntile_ms_per_mp {key['ms_per_mp']:.1f}")
    print(f"tile_ms_2_3mp_typical {key['tile_ms']:.1f}")
    if big is not None:
        print(f"tile_ms_16mp_typical {big['tile_ms']:.1f}")
    if memory:
        first = next(m for n, m in memory if n >= 100)
        print(f"memory_growth_mb_per_1000_tiles {memory[-1][1] - first:.1f}")


if __name__ == "__main__":
    main()
