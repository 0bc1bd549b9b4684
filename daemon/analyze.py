"""`flakescan analyze KIND FILE...`: diffraction analysis with the served models, as JSON.

A thin wrapper over inference/analysis.py's `AnalysisService`, which the HTTP API and the
ZMQ `analyze` command call too: the options become `AnalysisParams`, the answer is printed.
With `--server URL` the same request goes to a running `flakescan serve` instead, and the
answer is the same JSON (the server's model, loaded once, does the work).
A file that cannot be read stops the command before any model runs, naming the file and the
fault: an analysis of "all but one" file is easy to mistake for all of them.
"""

from __future__ import annotations

import argparse
import json

from flakescan.inference.analysis import ANALYSIS_KINDS, AnalysisParams, AnalysisService

from .config import ServiceConfig

__all__ = ["ANALYSES", "RemoteError", "params_from_args", "run_analysis"]

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
        pixel_size_um=args.pixel_size_um,
        srgb=not args.linear,
    )


class RemoteError(RuntimeError):
    """The server could not be reached or failed (not the caller's input)."""


def run_analysis(args: argparse.Namespace, cfg: ServiceConfig) -> str:
    """The JSON text of an analysis (raises ValueError/FileNotFoundError on bad input)."""
    if getattr(args, "server", None):
        return json.dumps(_remote(args), indent=1)
    doc = AnalysisService(cfg.models, cfg.preselection).analyze(
        args.kind,
        args.files,
        params_from_args(args),
        model=args.model,
        plot_dir=args.plot_dir,
        library=args.library,
    )
    return json.dumps(doc, indent=1)


def _remote(args: argparse.Namespace) -> dict:
    """The analysis by a `flakescan serve` at args.server, with the local command's answer
    shape (sources are the paths given here; pictures written to --plot-dir)."""
    import base64
    from contextlib import ExitStack
    from pathlib import Path

    import httpx

    from flakescan.inference.analysis import DEFAULT_MODELS
    from flakescan.inference.model_card import ModelCard
    from flakescan.inference.registry import ModelEntry, ModelNotFound

    if args.library is not None:
        raise ValueError(
            "--library: the best-match picture needs the library here; not with --server"
        )
    params = params_from_args(args)
    files = [Path(f) for f in args.files]
    for f in files:  # as the local command: every file checked before any work
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file")
    base = args.server.rstrip("/")
    try:
        model = args.model
        if model is None and args.kind == "pacbed" and params.system is not None:
            from flakescan.inference.pacbed import model_for_system

            listed = httpx.get(f"{base}/v1/models", timeout=30).raise_for_status().json()
            entries = [
                ModelEntry(m["name"], Path(m["name"]), ModelCard.model_validate(m["card"]))
                for m in listed
            ]
            model = model_for_system(entries, params.system, params.conv_angle_mrad).name
        model = model or DEFAULT_MODELS[args.kind]
        with ExitStack() as stack:
            uploads = [("files", (f.name, stack.enter_context(f.open("rb")))) for f in files]
            form = {
                "params": params.model_dump_json(exclude_defaults=True),
                "picture": "true" if args.plot_dir else "false",
            }
            reply = httpx.post(f"{base}/v1/analyze/{model}", files=uploads, data=form, timeout=300)
    except httpx.HTTPError as exc:
        raise RemoteError(f"--server {args.server}: {exc}") from exc
    if reply.status_code == 404:
        raise ModelNotFound(reply.json().get("detail", reply.text))
    if 400 <= reply.status_code < 500:
        raise ValueError(
            f"the server refused the request: {reply.json().get('detail', reply.text)}"
        )
    if reply.status_code != 200:
        raise RemoteError(f"--server {args.server}: HTTP {reply.status_code}: {reply.text[:500]}")
    doc = reply.json()
    for result, f in zip(doc["results"], files, strict=True):
        for key, value in list(result.items()):
            if value == f.name:
                result[key] = str(f)
        png = result.pop("picture_png_base64", None)
        if png is not None and args.plot_dir is not None:
            picture = Path(args.plot_dir) / f"{f.stem}.{args.kind}.png"
            picture.parent.mkdir(parents=True, exist_ok=True)
            picture.write_bytes(base64.b64decode(png))
            result["picture"] = str(picture)
    return doc
