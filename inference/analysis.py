"""One entry point for every served diffraction analysis: read the files, run the model, JSON.

The command line (`flakescan analyze`), the HTTP API and the ZMQ `analyze` command all call
`AnalysisService.analyze`, so the three give the same answer for the same files and
parameters. Models load once per service and stay loaded (ONNX Runtime sessions serve
concurrent calls); every file is read before any model runs, and a parameter the model
cannot honour (a convergence angle outside its range, another voltage or zone axis than it
was trained for) is refused naming the field and the value.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .config import ModelsConfig, PreselectionConfig
from .registry import ModelEntry, ModelRegistry, open_model

__all__ = [
    "ANALYSIS_KINDS",
    "DEFAULT_MODELS",
    "AnalysisParams",
    "AnalysisService",
    "Upload",
    "check_served_name",
    "kind_of_task",
    "upload_path",
]

# kind -> the model `flakescan analyze KIND` uses when none is named
DEFAULT_MODELS = {
    "xrd": "xrd_cnn1d",
    "pacbed": "pacbed_srtio3",
    "phase": "phase_unet",
    "flake": "flake_classifier_cnn4",
}
ANALYSIS_KINDS = tuple(DEFAULT_MODELS)
_TASK_KINDS = {
    "xrd-phase": "xrd",
    "pacbed": "pacbed",
    "phase-retrieval": "phase",
    "flake-classifier": "flake",  # with the configured axis model: the scan's tile pipeline
}
_ENERGY_TOLERANCE = 0.01  # relative: 300 kV and 299.5 kV are the same microscope setting


_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_served_name(model: str) -> str:
    """A model a remote client may ask for: a registry name, never a path (no server file
    is opened by a client's say-so); ValueError names the value."""
    if not _SERVED_NAME.fullmatch(model) or model.lower().endswith(".onnx"):
        raise ValueError(
            f"model = {model!r}: a registry name is needed (letters, digits, . _ -), not a path"
        )
    return model


def kind_of_task(task: str) -> str | None:
    """The analysis kind that serves a model card's task (None: not an analysis model)."""
    return _TASK_KINDS.get(task)


class AnalysisParams(BaseModel):
    """What a caller may say about the data beside the files; the public contract of the
    CLI options, the HTTP form fields and the ZMQ request alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_angle_mrad: float | None = Field(None, gt=0, le=100, description="pacbed: probe")
    energy_kev: float | None = Field(
        None, gt=0, le=1000, description="pacbed: acceleration voltage; must match the model"
    )
    zone_axis: str | None = Field(None, description="pacbed: e.g. [001]; must match the model")
    system: str | None = Field(
        None, description="pacbed: material system, register ID or name; picks the model"
    )
    dtype: str | None = Field(None, description="raw pacbed files: numpy dtype, e.g. <u2")
    shape: tuple[int, int] | None = Field(None, description="raw pacbed files: rows, cols")
    offset: int = Field(0, ge=0, description="raw pacbed files: header bytes to skip")
    pixel_size_um: float | None = Field(
        None, gt=0, le=100, description="flake: micrometres per image pixel (needed)"
    )
    srgb: bool = Field(
        True, description="flake: the image is sRGB-encoded (PNG/JPEG); false: linear (TIFF)"
    )


@dataclass(frozen=True)
class Upload:
    """A file a client sent (HTTP upload, ZMQ frame), saved by the server under `path`;
    answers and errors speak of it by the client's `name`."""

    name: str
    path: Path


def upload_path(folder: Path, name: str | None, index: int) -> Path:
    """Where a server keeps a client's file: its own name without folders (readers go by the
    suffix, pictures show the name), in a subfolder per position so two uploads of one name
    do not collide."""
    base = Path(name or "").name
    sub = Path(folder) / f"{index:03d}"
    sub.mkdir(parents=True, exist_ok=True)
    return sub / (base if base and base not in (".", "..") else "upload")


class _Loaded:
    """A model with its backend and the task's analyzer, built once."""

    def __init__(self, kind: str, entry: ModelEntry, backend, analyzer) -> None:
        self.kind, self.entry, self.backend, self.analyzer = kind, entry, backend, analyzer
        self.lock = threading.Lock()  # the tile pipeline keeps a wafer colour per call

    def describe(self) -> dict:
        return {
            "name": self.entry.name,
            "sha256": self.entry.card.onnx_sha256,
            **self.backend.describe(),
        }


class AnalysisService:
    """Served analysis models, loaded on first use and kept (one per name or path)."""

    def __init__(
        self, models: ModelsConfig | None = None, preselection: PreselectionConfig | None = None
    ) -> None:
        self.config = models or ModelsConfig()
        self.preselection = preselection or PreselectionConfig()
        self.registry = ModelRegistry(self.config.registry)
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    def loaded_names(self) -> list[str]:
        """The models loaded so far (by the name or path they were asked for)."""
        with self._lock:
            return list(self._loaded)

    # -- which model ------------------------------------------------------------------------
    def choose_model(self, kind: str, model: str | Path | None, params: AnalysisParams) -> str:
        """The model a request means: the named one, else (pacbed) the one trained for the
        given material system, else the kind's default."""
        if kind not in ANALYSIS_KINDS:
            raise ValueError(f"kind = {kind!r}: not one of {', '.join(ANALYSIS_KINDS)}")
        if model is not None:
            return str(model)
        if kind == "pacbed" and params.system is not None:
            from .pacbed import model_for_system

            return str(model_for_system(self.registry, params.system, params.conv_angle_mrad).path)
        return DEFAULT_MODELS[kind]

    def load(self, model: str | Path, kind: str | None = None) -> _Loaded:
        """The loaded model (built on first use); `kind` checks what the caller expects."""
        key = str(model)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                loaded = self._build(key)
                self._loaded[key] = loaded
        if kind is not None and loaded.kind != kind:
            raise ValueError(f"model {key!r} serves {loaded.kind!r} analyses, not {kind!r}")
        return loaded

    def _build(self, model: str) -> _Loaded:
        task = self.registry.resolve(model, None).card.task
        kind = _served_kind(model, task)
        entry, backend = open_model(self.config, model, task)
        if kind == "xrd":
            from .xrd import XrdIdentifier

            analyzer: Any = XrdIdentifier(entry, backend)
        elif kind == "pacbed":
            from .pacbed import PacbedAnalyzer

            analyzer = PacbedAnalyzer(entry, backend)
        elif kind == "phase":
            from .phase_retrieval import PhaseModel

            analyzer = PhaseModel(backend, entry.card)
        else:
            analyzer = self._tile_pipeline(backend, entry)
        return _Loaded(kind, entry, backend, analyzer)

    def _tile_pipeline(self, backend, entry: ModelEntry):
        """The scan's tile pipeline around this classifier and the configured axis model."""
        from .axis_model import AxisModel
        from .classifier import FlakeClassifier
        from .pipeline import TilePipeline

        cfg = self.config
        classifier = FlakeClassifier(backend, entry.card, cfg.batch_size)
        return TilePipeline.for_models(
            self.preselection, cfg, classifier, AxisModel.from_config(cfg)
        )

    def kind_of_model(self, model: str | Path) -> str:
        """The analysis a registry model serves; ModelNotFound or ValueError naming it. A
        loaded model answers from memory: resolving reads and hashes the ONNX file, which
        every request would otherwise pay (twice over HTTP)."""
        with self._lock:
            loaded = self._loaded.get(str(model))
        if loaded is not None:
            return loaded.kind
        return _served_kind(model, self.registry.resolve(model, None).card.task)

    # -- analysis ---------------------------------------------------------------------------
    def analyze_uploads(
        self,
        model: str,
        uploads: Sequence[Upload],
        params: AnalysisParams | None = None,
        *,
        picture: bool = False,
    ) -> tuple[dict, list[bytes | None]]:
        """A client's files with a named model: the answer speaks of the client's file
        names (never the server's paths, in results or errors), and the validation
        pictures come back as PNG bytes, one per file (None without `picture`)."""
        kind = self.kind_of_model(check_served_name(model))
        with tempfile.TemporaryDirectory(prefix="flakescan-pictures-") as tmp:
            plot_dir = Path(tmp) if picture else None
            try:
                doc = self.analyze(
                    kind, [u.path for u in uploads], params, model=model, plot_dir=plot_dir
                )
            except (ValueError, OSError) as exc:
                message = str(exc)
                for u in uploads:
                    message = message.replace(str(u.path), u.name)
                if type(exc) in (ValueError, FileNotFoundError):
                    raise type(exc)(message) from exc
                raise ValueError(message) from exc
            pictures: list[bytes | None] = []
            for result, u in zip(doc["results"], uploads, strict=True):
                for key, value in list(result.items()):
                    if value == str(u.path):
                        result[key] = u.name
                result["source"] = u.name
                path = result.pop("picture", None)
                pictures.append(Path(path).read_bytes() if path else None)
        return doc, pictures

    def analyze(
        self,
        kind: str,
        files: Sequence[Path | str],
        params: AnalysisParams | None = None,
        *,
        model: str | Path | None = None,
        plot_dir: Path | None = None,
        library: Path | None = None,
    ) -> dict:
        """{"kind", "model", "results": one per file}; every file is read first."""
        params = params or AnalysisParams()
        files = [Path(f) for f in files]
        inputs = _read(kind, files, params)
        loaded = self.load(self.choose_model(kind, model, params), kind)
        if kind == "xrd":
            results = _run_xrd(loaded, inputs, plot_dir)
        elif kind == "pacbed":
            results = _run_pacbed(loaded, inputs, params, plot_dir, library)
        elif kind == "phase":
            results = _run_phase(loaded, files, inputs, plot_dir)
        else:
            results = _run_flake(loaded, files, inputs, params, plot_dir)
        return {"kind": kind, "model": loaded.describe(), "results": results}


def _served_kind(model: str | Path, task: str) -> str:
    kind = kind_of_task(task)
    if kind is None:
        raise ValueError(
            f"model = {str(model)!r} is a {task!r} model; the analyses served are "
            f"{', '.join(ANALYSIS_KINDS)}"
        )
    return kind


def _read(kind: str, files: list[Path], params: AnalysisParams) -> list:
    if kind == "flake":
        from .flake_analysis import read_tile_image

        if params.pixel_size_um is None:
            raise ValueError("pixel_size_um is needed for a flake analysis (micrometres per pixel)")
        return [read_tile_image(f, params.srgb) for f in files]
    if kind == "xrd":
        from .xrd_readers import read_xrd

        return [read_xrd(f) for f in files]
    if kind == "pacbed":
        from .pacbed import read_pacbed_files

        return read_pacbed_files(
            files, dtype=params.dtype, shape=params.shape, offset=params.offset
        )
    from .phase_retrieval import read_reflections

    return [read_reflections(f) for f in files]


def _picture(plot_dir: Path | None, source: str, kind: str) -> Path | None:
    return None if plot_dir is None else Path(plot_dir) / f"{Path(source).stem}.{kind}.png"


def _run_xrd(loaded: _Loaded, patterns: list, plot_dir: Path | None) -> list[dict]:
    from .xrd import plot_identification

    ident = loaded.analyzer
    out = []
    for pattern, result in zip(patterns, ident.identify(patterns), strict=True):
        doc = result.to_dict()
        picture = _picture(plot_dir, pattern.source, "xrd")
        if picture is not None:
            plot_identification(pattern, ident.prepare(pattern), result, loaded.entry, picture)
            doc["picture"] = str(picture)
        out.append(doc)
    return out


def _check_pacbed_setting(analyzer, params: AnalysisParams) -> None:
    """Refuse a voltage, zone axis or system the model was not trained for."""
    spec, system = analyzer.spec, analyzer.system
    if params.energy_kev is not None:
        trained = float(spec["energy_kev"])
        if abs(params.energy_kev - trained) > _ENERGY_TOLERANCE * trained:
            raise ValueError(
                f"energy_kev = {params.energy_kev:g}: model {analyzer.entry.name!r} was trained "
                f"at {trained:g} keV"
            )
    if params.zone_axis is not None:
        wanted = params.zone_axis.strip().strip("[]").replace(" ", "").replace(",", "")
        trained = str(system.get("direction", "")).strip("[]")
        if wanted != trained:
            raise ValueError(
                f"zone_axis = {params.zone_axis!r}: model {analyzer.entry.name!r} was trained "
                f"for [{trained}]"
            )
    if params.system is not None:
        key = params.system.strip().lower()
        if key not in (str(system.get("id")), str(system.get("name", "")).lower()):
            raise ValueError(
                f"system = {params.system!r}: model {analyzer.entry.name!r} is for system "
                f"{system.get('id')} ({system.get('name')})"
            )


def _run_pacbed(
    loaded: _Loaded,
    patterns: list,
    params: AnalysisParams,
    plot_dir: Path | None,
    library: Path | None,
) -> list[dict]:
    from .pacbed import PacbedAnalyzer, analyze_pacbed

    analyzer = loaded.analyzer
    _check_pacbed_setting(analyzer, params)
    if library is not None:  # a per-call view with the library for the best-match picture
        analyzer = PacbedAnalyzer(loaded.entry, loaded.backend, library=library)
    return analyze_pacbed(
        patterns, analyzer, conv_angle_mrad=params.conv_angle_mrad, plot_dir=plot_dir
    )


def _run_phase(loaded: _Loaded, files: list[Path], reflections: list, plot_dir) -> list[dict]:
    from .phase_retrieval import analyze_reflections

    out = []
    for path, refl in zip(files, reflections, strict=True):
        picture = _picture(plot_dir, str(path), "phase")
        doc = analyze_reflections(refl, loaded.analyzer, picture)
        doc.setdefault("source", str(path))
        if picture is not None:
            doc["picture"] = str(picture)
        out.append(doc)
    return out


def _run_flake(
    loaded: _Loaded, files: list[Path], images: list, params: AnalysisParams, plot_dir
) -> list[dict]:
    from .flake_analysis import analyze_tile_image

    assert params.pixel_size_um is not None  # _read refused it
    out = []
    with loaded.lock:
        for path, image in zip(files, images, strict=True):
            picture = _picture(plot_dir, str(path), "flake")
            out.append(
                analyze_tile_image(image, str(path), loaded.analyzer, params.pixel_size_um, picture)
            )
    return out
