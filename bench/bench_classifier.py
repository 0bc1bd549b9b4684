"""CNN-4 inference speed: ONNX Runtime (what the daemon runs) against PyTorch, on this CPU.

Both sides run the same architecture with the same weights: a randomly initialised CNN4 is
exported to ONNX in a temporary directory, so no PyTorch weights need to ship. Speed does not
depend on the weight values; the shipped model is timed in ONNX Runtime as well. Reports the
median of repeated runs after a warm-up, with 2 threads on both sides.

    .venv/bin/python bench/bench_classifier.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from flakescan.inference.config import default_classifier_path
from flakescan.training.cnn4 import CNN4
from flakescan.training.train_classifier import export_onnx

INPUT_PX = 64
BATCHES = (1, 32)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_torch_vs_ort(
    model: torch.nn.Module,
    inputs: dict[int, np.ndarray],
    threads: int,
    repeats: int,
    warmup: int,
) -> tuple[list[tuple[str, int, float]], dict[int, float]]:
    """Median ms of PyTorch and of ORT on the same weights, and torch/ORT time per batch."""
    rows: list[tuple[str, int, float]] = []
    speedups: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn4_random.onnx"
        export_onnx(model, path, INPUT_PX)
        sess = ort_session(path, threads)
        for batch, x in inputs.items():
            xt = torch.from_numpy(x)

            def run_torch(xt: torch.Tensor = xt) -> np.ndarray:
                with torch.inference_mode():
                    return model(xt).numpy()

            def run_ort(x: np.ndarray = x) -> np.ndarray:
                return sess.run(["logits"], {"input": x})[0]

            diff = float(np.max(np.abs(run_torch() - run_ort())))
            if not diff < 1e-4:
                raise RuntimeError(f"ORT and torch disagree at batch {batch}: {diff:.3g}")
            t_torch = median_ms(run_torch, repeats, warmup)
            t_ort = median_ms(run_ort, repeats, warmup)
            rows += [("pytorch", batch, t_torch), ("onnxruntime", batch, t_ort)]
            speedups[batch] = t_torch / t_ort
    return rows, speedups


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30, help="timed runs per case (>= 20)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.repeats < 20:
        p.error(f"--repeats must be >= 20 for a stable median, got {a.repeats}")
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = CNN4().eval()
    rng = np.random.default_rng(0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpu      {cpu_model()}")
    print(f"cores    {os.cpu_count()} logical, {usable} usable; threads used {a.threads}")
    print(f"versions torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"timing   median of {a.repeats} runs after {a.warmup} warm-up runs\n")

    shipped = default_classifier_path()
    inputs = {
        b: (rng.standard_normal((b, 3, INPUT_PX, INPUT_PX)) * 0.05).astype(np.float32)
        for b in BATCHES
    }
    # One ORT session at a time: an idle session's spinning pool threads would steal the two
    # cores from the one being timed, so the random-weight session is gone before the next.
    rows, speedups = time_torch_vs_ort(model, inputs, a.threads, a.repeats, a.warmup)
    if shipped.is_file():
        sess_shipped = ort_session(shipped, a.threads)
        for batch, x in inputs.items():
            t_ship = median_ms(
                lambda x=x: sess_shipped.run(["logits"], {"input": x}), a.repeats, a.warmup
            )
            rows.append(("onnxruntime (shipped)", batch, t_ship))

    print(f"{'backend':<22} {'batch':>5} {'median ms':>10} {'ms/crop':>8} {'crops/s':>8}")
    for name, batch, ms in rows:
        print(f"{name:<22} {batch:>5} {ms:>10.2f} {ms / batch:>8.3f} {1e3 * batch / ms:>8.0f}")
    if not shipped.is_file():
        print(f"(shipped model not found at {shipped}; not timed)")
    print()
    for batch in sorted(speedups, reverse=True):
        print(f"ort_vs_torch_speedup_batch{batch} {speedups[batch]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
