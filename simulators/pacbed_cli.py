"""Command line for library generation: `python -m flakescan.simulators.pacbed_cli --system 1`.

Long runs (an hour per library on one core) go to the background with nohup; re-running the
same command resumes where a killed run stopped. Set OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
MKL_NUM_THREADS=1 in the environment to keep to one core.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .pacbed import LibrarySpec, simulate_library
from .pacbed_systems import SYSTEMS, get_system

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    systems = ", ".join(f"{s.id}={s.name}" for s in SYSTEMS.values())
    p = argparse.ArgumentParser(
        prog="flakescan pacbed-library",
        description="Simulate a PACBED library (abTEM multislice).",
        fromfile_prefix_chars="@",
    )
    p.add_argument("--system", required=True, help=f"system ID or name ({systems})")
    p.add_argument("--root", type=Path, required=True, help="library root (holds Register.csv)")
    p.add_argument("--folder", help="library folder name (default from system, kV, mrad)")
    p.add_argument("--energy-kev", type=float)
    p.add_argument("--conv-angle-mrad", type=float)
    p.add_argument("--tilt-max-mrad", type=float, default=10.0)
    p.add_argument("--tilt-step-mrad", type=float, default=1.0)
    p.add_argument("--max-thickness-nm", type=float, default=100.0)
    p.add_argument("--thickness-step-cells", type=int, default=1)
    p.add_argument("--frozen-phonons", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    spec = LibrarySpec(
        system=get_system(args.system).id,
        energy_kev=args.energy_kev,
        conv_angle_mrad=args.conv_angle_mrad,
        tilt_max_mrad=args.tilt_max_mrad,
        tilt_step_mrad=args.tilt_step_mrad,
        max_thickness_nm=args.max_thickness_nm,
        thickness_step_cells=args.thickness_step_cells,
        frozen_phonons=args.frozen_phonons,
        seed=args.seed,
    )
    lib = simulate_library(spec, args.root, folder=args.folder, progress=not args.no_progress)
    meta = json.loads((lib / "library.json").read_text())
    print(json.dumps({"library": str(lib), "complete": meta["complete"], **meta["timing"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
