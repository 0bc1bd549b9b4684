"""Where a tile's time goes: cProfile over the daemon's tile pipeline on rendered tiles.

.venv/bin/python bench/profile_tile.py [--size 2.3] [--chip typical|crowded] [--tiles 6]
    [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

from bench_tile import CROWDED, SIZES, TYPICAL, daemon_pipeline, render_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2.3", choices=sorted(SIZES))
    ap.add_argument("--chip", default="typical", choices=["typical", "crowded"])
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    frames = render_tiles(
        TYPICAL if args.chip == "typical" else CROWDED, SIZES[args.size], args.tiles
    )
    pipe = daemon_pipeline()
    pipe.process(frames[0])
    prof = cProfile.Profile()
    prof.enable()
    for f in frames:
        pipe.process(f)
    prof.disable()
    stats = pstats.Stats(prof).sort_stats("tottime")
    stats.print_stats(args.top)


if __name__ == "__main__":
    main()
