"""Labelled sets of simulated powder patterns: known phases, anomalies, unseen phases.

Three kinds of anomaly, kept apart because they test different things:
- `mixture`: two known phases in one sample (the minor one 15-50 % of the peak height);
- `outside`: a phase outside the set, from TRAIN_OUTSIDE_PHASES, alone or with a known one;
- `unseen`: a phase from UNSEEN_PHASES, which no training set contains; only test sets have
  them, to measure whether the model flags inputs it has never seen.

Every pattern draws its own instrument, strains, sizes and texture (`xrd_pattern`), so no two
patterns of a set share a perturbation. Patterns are counts on the model's grid; the trainer
normalises them exactly as `inference.xrd` does at serving time.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .xrd_pattern import TWO_THETA_GRID, simulate_pattern
from .xrd_phases import KNOWN_PHASES, TRAIN_OUTSIDE_PHASES, UNSEEN_PHASES, PhaseSpec

__all__ = ["XRD_CLASSES", "XrdSet", "phase_by_name", "simulate_xrd_set", "write_xy"]

XRD_CLASSES: tuple[str, ...] = (*(p.name for p in KNOWN_PHASES), "anomaly")
ANOMALY_LABEL = len(KNOWN_PHASES)


@dataclass(frozen=True)
class XrdSet:
    counts: np.ndarray  # (n, points) float32, on TWO_THETA_GRID
    labels: np.ndarray  # (n,) int: index into XRD_CLASSES
    kinds: np.ndarray  # (n,) str: "phase:rutile", "mixture:a+b", "outside:x", "unseen:x"

    def __len__(self) -> int:
        return len(self.labels)


def _plan(
    rng: np.random.Generator, n_per_class: int, n_anomaly: int, n_unseen: int
) -> list[tuple[list[PhaseSpec], list[float], int, str]]:
    """What each pattern contains: (phases, weights, label, kind)."""
    plan = []
    for label, spec in enumerate(KNOWN_PHASES):
        plan += [([spec], [1.0], label, f"phase:{spec.name}")] * n_per_class
    for i in range(n_anomaly):
        major = KNOWN_PHASES[rng.integers(len(KNOWN_PHASES))]
        minor_share = rng.uniform(0.15, 0.5)
        if i % 2 == 0:
            others = [p for p in KNOWN_PHASES if p is not major]
            minor = others[rng.integers(len(others))]
            plan.append(([major, minor], [1.0, minor_share], ANOMALY_LABEL, "mixture"))
        else:
            foreign = TRAIN_OUTSIDE_PHASES[rng.integers(len(TRAIN_OUTSIDE_PHASES))]
            if rng.random() < 0.5:
                plan.append(([foreign], [1.0], ANOMALY_LABEL, "outside"))
            else:
                plan.append(([foreign, major], [1.0, minor_share], ANOMALY_LABEL, "outside"))
    for i in range(n_unseen):
        new = UNSEEN_PHASES[i % len(UNSEEN_PHASES)]
        plan.append(([new], [1.0], ANOMALY_LABEL, "unseen"))
    return [
        (ph, w, lab, kind if ":" in kind else f"{kind}:" + "+".join(p.name for p in ph))
        for ph, w, lab, kind in plan
    ]


def phase_by_name(name: str) -> PhaseSpec:
    """A phase of any of the three lists, by its name (case-insensitive)."""
    every = (*KNOWN_PHASES, *TRAIN_OUTSIDE_PHASES, *UNSEEN_PHASES)
    for spec in every:
        if spec.name.lower() == name.lower():
            return spec
    raise ValueError(f"--phase {name!r}: expected one of {', '.join(p.name for p in every)}")


def write_xy(path, counts: np.ndarray, header: str) -> None:
    """A simulated measurement as a two-column .xy file (2-theta deg, counts), written
    atomically, with `header` as # comment lines."""
    from pathlib import Path

    path = Path(path)
    lines = [f"# {h}" for h in header.splitlines()]
    lines += [f"{t:.2f} {c:.0f}" for t, c in zip(TWO_THETA_GRID, counts, strict=True)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _render(job: tuple[int, list[PhaseSpec], list[float]]) -> np.ndarray:
    seed, phases, weights = job
    return simulate_pattern(np.random.default_rng(seed), phases, weights).astype(np.float32)


def simulate_xrd_set(
    n_per_class: int,
    seed: int,
    *,
    n_anomaly: int | None = None,
    n_unseen: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> XrdSet:
    """A set of `n_per_class` patterns per known phase, `n_anomaly` (default 2 x n_per_class)
    mixtures and outside phases, and `n_unseen` patterns of phases no training set has."""
    n_anomaly = 2 * n_per_class if n_anomaly is None else n_anomaly
    rng = np.random.default_rng(seed)
    plan = _plan(rng, n_per_class, n_anomaly, n_unseen)
    seeds = np.random.SeedSequence(seed).generate_state(len(plan))
    jobs = [(int(s), ph, w) for s, (ph, w, _, _) in zip(seeds, plan, strict=True)]
    rows: Sequence[np.ndarray]
    if workers > 1:
        with cf.ProcessPoolExecutor(workers) as pool:
            rows = list(_progress(pool.map(_render, jobs, chunksize=32), len(jobs), progress))
    else:
        rows = list(_progress(map(_render, jobs), len(jobs), progress))
    counts = np.stack(rows) if rows else np.zeros((0, len(TWO_THETA_GRID)), np.float32)
    labels = np.array([lab for _, _, lab, _ in plan], dtype=np.int64)
    kinds = np.array([k for _, _, _, k in plan])
    return XrdSet(counts, labels, kinds)


def _progress(it, total: int, show: bool):
    if not show:
        return it
    from rich.progress import track

    return track(it, total=total, description="simulating patterns")
