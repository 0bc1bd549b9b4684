"""Diffraction analysis speed with the shipped models, as `flakescan analyze` runs them.

PACBED: the whole analysis of one pattern (preprocess, scale pass, preprocess again,
thickness/mistilt pass) against the issue's 100 ms target on 2 cores and the seed's web
service (about 2.4 s per pattern). XRD: resampling onto the grid, normalisation and the
model, per pattern at batch 1 and batch 64. Inputs: PACBED patterns from a library folder if
one is given (`--library`), else a synthetic disc with fringes and Poisson noise (the time
depends on the pattern size, not its content); XRD patterns from the simulator.

    .venv/bin/python bench/bench_analysis.py [--library DIR] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from flakescan.inference.backends import create_backend
from flakescan.inference.pacbed import PACBED_TASK, PacbedAnalyzer
from flakescan.inference.registry import ModelRegistry
from flakescan.inference.xrd import XRD_TASK, XrdIdentifier
from flakescan.inference.xrd_readers import XrdPattern

SEED_SERVICE_S = 2.4  # the PACBED-CNN seed's service, per pattern
TARGET_S = 0.100


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _pacbed_patterns(library: Path | None, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    if library is not None:
        from flakescan.simulators.pacbed_library import PacbedLibrary

        lib = PacbedLibrary(library)
        tilt = lib.tilts[len(lib.tilts) // 2]
        stack = lib.stack(tilt)
        idx = rng.integers(len(stack), size=n)
        return [rng.poisson(np.asarray(stack[i], float) * 2e4).astype(np.float32) for i in idx]
    yy, xx = np.mgrid[-60:61, -60:61]
    r = np.hypot(yy, xx)
    out = []
    for _ in range(n):
        disc = (r < 24).astype(float) * (1 + 0.2 * np.cos(r / rng.uniform(2, 4)))
        out.append(rng.poisson(200 * disc + 2).astype(np.float32))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, help="a PACBED library for realistic patterns")
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    registry = ModelRegistry()
    pac_entry = registry.resolve("pacbed_srtio3", PACBED_TASK)
    patterns = _pacbed_patterns(a.library, a.repeats + 1, rng)
    rows = []
    for threads in (1, 2):
        an = PacbedAnalyzer(pac_entry, create_backend(pac_entry.path, intra_op_threads=threads))
        it = iter(patterns * 2)
        ms = _median_ms(lambda an=an, it=it: an.analyze_images([next(it)], 20.0), a.repeats)
        rows.append(("PACBED, whole analysis", threads, 1, ms))

    from flakescan.simulators.xrd_dataset import simulate_xrd_set
    from flakescan.simulators.xrd_pattern import TWO_THETA_GRID

    xrd_entry = registry.resolve("xrd_cnn1d", XRD_TASK)
    counts = simulate_xrd_set(11, seed=9, n_anomaly=0).counts
    measured = [XrdPattern(TWO_THETA_GRID, c.astype(float), None, "sim") for c in counts]
    for threads in (1, 2):
        ident = XrdIdentifier(xrd_entry, create_backend(xrd_entry.path, intra_op_threads=threads))
        one = _median_ms(lambda i=ident: i.identify(measured[:1]), a.repeats)
        rows.append(("XRD, resample + model", threads, 1, one))
        per = _median_ms(lambda i=ident: i.identify(measured[:64]), max(5, a.repeats // 5)) / 64
        rows.append(("XRD, resample + model", threads, 64, per))

    print("| analysis | threads | batch | ms per pattern |")
    print("| --- | --- | --- | --- |")
    for name, threads, batch, ms in rows:
        print(f"| {name} | {threads} | {batch} | {ms:.2f} |")
    pac2 = rows[1][3] / 1e3
    print(
        f"\nPACBED on 2 threads: {pac2 * 1e3:.1f} ms per pattern, {TARGET_S / pac2:.0f}x under "
        f"the 100 ms target, {SEED_SERVICE_S / pac2:.0f}x faster than the seed's service "
        f"({'library' if a.library else 'synthetic'} patterns)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
