"""`flakescan analyze KIND FILE...`: diffraction analysis with the served models, as JSON.

A thin wrapper over inference/analysis.py's `AnalysisService`, which the HTTP API and the
ZMQ `analyze` command call too: the options become `AnalysisParams`, the answer is printed.
A file that cannot be read stops the command before any model runs, naming the file and the
fault: an analysis of "all but one" file is easy to mistake for all of them.
"""

from __future__ import annotations

import argparse
import json

from flakescan.inference.analysis import ANALYSIS_KINDS, AnalysisParams, AnalysisService

from .config import ServiceConfig

__all__ = ["ANALYSES", "params_from_args", "run_analysis"]

ANALYSES = ANALYSIS_KINDS


def params_from_args(args: argparse.Namespace) -> AnalysisParams:
    """The CLI options as the analysis contract (a bad value names its field)."""
    return AnalysisParams(
        conv_angle_mrad=args.conv_angle_mrad,
        energy_kev=args.energy_kev,
        zone_axis=args.zone_axis,
        system=args.system,
        dtype=args.dtype,
        shape=tuple(args.shape) if args.shape else None,
    )


def run_analysis(args: argparse.Namespace, cfg: ServiceConfig) -> str:
    """The JSON text of an analysis (raises ValueError/FileNotFoundError on bad input)."""
    doc = AnalysisService(cfg.models).analyze(
        args.kind,
        args.files,
        params_from_args(args),
        model=args.model,
        plot_dir=args.plot_dir,
        library=args.library,
    )
    return json.dumps(doc, indent=1)
