"""`flakescan analyze KIND FILE...`: diffraction analysis with the served models, as JSON.

Each kind reads its files with the inference layer's readers, runs the named model from the
registry on the configured backend, prints one JSON document (a list, one entry per file),
and writes a validation picture per file when asked. A file that cannot be read stops the
command before any model runs, naming the file and the fault: an analysis of "all but one"
file is easy to mistake for all of them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import ServiceConfig

__all__ = ["ANALYSES", "DEFAULT_MODELS", "run_analysis"]

DEFAULT_MODELS = {"xrd": "xrd_cnn1d", "pacbed": "pacbed_srtio3", "phase": "phase_unet"}
ANALYSES = tuple(DEFAULT_MODELS)


def _picture_path(plot_dir: Path | None, source: str, kind: str) -> Path | None:
    return None if plot_dir is None else Path(plot_dir) / f"{Path(source).stem}.{kind}.png"


def _analyze_xrd(args: argparse.Namespace, cfg: ServiceConfig) -> tuple[dict, list[dict]]:
    from flakescan.inference.registry import open_model
    from flakescan.inference.xrd import XRD_TASK, XrdIdentifier, plot_identification
    from flakescan.inference.xrd_readers import read_xrd

    patterns = [read_xrd(f) for f in args.files]
    entry, backend = open_model(cfg.models, args.model or DEFAULT_MODELS["xrd"], XRD_TASK)
    ident = XrdIdentifier(entry, backend)
    results = ident.identify(patterns)
    out = []
    for pattern, result in zip(patterns, results, strict=True):
        doc = result.to_dict()
        picture = _picture_path(args.plot_dir, pattern.source, "xrd")
        if picture is not None:
            plot_identification(pattern, ident.prepare(pattern), result, entry, picture)
            doc["picture"] = str(picture)
        out.append(doc)
    return _model_doc(entry, backend), out


def _model_doc(entry, backend) -> dict:
    return {"name": entry.name, "sha256": entry.card.onnx_sha256, **backend.describe()}


def _analyze_pacbed(args: argparse.Namespace, cfg: ServiceConfig) -> tuple[dict, list[dict]]:
    from flakescan.inference.pacbed import (
        PACBED_TASK,
        PacbedAnalyzer,
        analyze_pacbed,
        model_for_system,
        read_pacbed_files,
    )
    from flakescan.inference.registry import ModelRegistry, open_model

    shape = tuple(args.shape) if args.shape else None
    patterns = read_pacbed_files(args.files, dtype=args.dtype, shape=shape)
    model = args.model
    if model is None and args.system is not None:
        registry = ModelRegistry(cfg.models.registry)
        model = model_for_system(registry, args.system, args.conv_angle_mrad).path
    entry, backend = open_model(cfg.models, model or DEFAULT_MODELS["pacbed"], PACBED_TASK)
    analyzer = PacbedAnalyzer(entry, backend, library=args.library)
    results = analyze_pacbed(
        patterns, analyzer, conv_angle_mrad=args.conv_angle_mrad, plot_dir=args.plot_dir
    )
    return _model_doc(entry, backend), results


def _analyze_phase(args: argparse.Namespace, cfg: ServiceConfig) -> tuple[dict, list[dict]]:
    from flakescan.inference.phase_retrieval import (
        PHASE_TASK,
        PhaseModel,
        analyze_reflections,
        read_reflections,
    )
    from flakescan.inference.registry import open_model

    reflections = [read_reflections(f) for f in args.files]
    entry, backend = open_model(cfg.models, args.model or DEFAULT_MODELS["phase"], PHASE_TASK)
    model = PhaseModel(backend, entry.card)
    results = []
    for path, refl in zip(args.files, reflections, strict=True):
        picture = _picture_path(args.plot_dir, str(path), "phase")
        doc = analyze_reflections(refl, model, picture)
        doc.setdefault("source", str(path))
        if picture is not None:
            doc["picture"] = str(picture)
        results.append(doc)
    return _model_doc(entry, backend), results


_RUNNERS = {"xrd": _analyze_xrd, "pacbed": _analyze_pacbed, "phase": _analyze_phase}


def run_analysis(args: argparse.Namespace, cfg: ServiceConfig) -> str:
    """The JSON text of an analysis (raises ValueError/FileNotFoundError on bad input)."""
    model, results = _RUNNERS[args.kind](args, cfg)
    return json.dumps({"kind": args.kind, "model": model, "results": results}, indent=1)
