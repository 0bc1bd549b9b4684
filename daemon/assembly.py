"""Putting the parts together: database, classifier, microscope and pipeline from a config.

The daemon and `flakescan scan --local` assemble the same way; a part that cannot come up is
reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from flakescan.db.catalogue import CatalogueWriter
from flakescan.db.engine import open_database
from flakescan.hardware.backends import open_microscope
from flakescan.hardware.microscope import Microscope
from flakescan.inference.axis_model import AxisModel
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.pipeline import TilePipeline

from .config import ServiceConfig, images_dir, presets_dir
from .lock import StateDirBusy, StateDirLock
from .protocol import ScanStartParams
from .scan import Publish, ScanRequest, ScanRunner

__all__ = ["Components", "StartupError", "open_components", "scan_request", "scan_settings"]


class StartupError(RuntimeError):
    """A part could not come up; the message names the part."""


@dataclass
class Components:
    lock: StateDirLock
    engine: Engine
    writer: CatalogueWriter
    microscope: Microscope
    classifier: FlakeClassifier
    axis_model: AxisModel | None
    runner: ScanRunner
    interrupted_scans: list[int]

    def describe_models(self) -> dict:
        """The models the daemon serves and the backends they run on, for `status`."""
        models: dict = {
            "classifier": {
                "name": self.classifier.card.name,
                "sha256": self.classifier.card.onnx_sha256,
                **self.classifier.backend.describe(),
            },
            "axis": None,
        }
        if self.axis_model is not None:
            models["axis"] = {
                "name": self.axis_model.card.name,
                "sha256": self.axis_model.card.onnx_sha256,
                "modulus_deg": self.axis_model.modulus,
                "views": self.axis_model.views,
                **self.axis_model.backend.describe(),
            }
        return models

    def close(self) -> None:
        try:
            self.microscope.close()
            self.engine.dispose()
        finally:
            self.lock.release()


def open_components(cfg: ServiceConfig, state_dir: Path, publish: Publish) -> Components:
    """The state-directory lock first, then the database (marking scans a dead daemon left
    running), the model, and the hardware."""
    try:
        lock = StateDirLock(state_dir).acquire()
    except StateDirBusy as exc:
        raise StartupError(str(exc)) from None
    url = cfg.database_url(state_dir)
    try:
        engine = open_database(url)
    except Exception as exc:
        lock.release()
        raise StartupError(f"database {url}: {exc}") from exc
    try:
        writer = CatalogueWriter(engine, cfg.instrument)
        interrupted = writer.mark_interrupted()
        engines = state_dir / "engines"
        try:
            classifier = FlakeClassifier.from_config(cfg.models, engines)
        except Exception as exc:
            raise StartupError(f"classifier {cfg.models.classifier}: {exc}") from exc
        try:
            axis_model = AxisModel.from_config(cfg.models, engines)
        except Exception as exc:
            raise StartupError(f"axis model {cfg.models.axis}: {exc}") from exc
        try:
            microscope = open_microscope(
                cfg.hardware,
                cfg.objective,
                cfg.travel_limits,
                cfg.simulator,
                cfg.replay,
                objectives=cfg.objectives or None,
            )
        except Exception as exc:
            raise StartupError(f"hardware ({cfg.hardware.backend}): {exc}") from exc
    except BaseException:
        engine.dispose()
        lock.release()
        raise
    pipeline = TilePipeline.for_models(cfg.preselection, cfg.models, classifier, axis_model)
    runner = ScanRunner(
        microscope,
        pipeline,
        writer,
        publish,
        instrument=cfg.instrument,
        thumbnails_dir=images_dir(state_dir),
        presets_dir=presets_dir(state_dir),
        classifier_name=classifier.card.name,
        focus=cfg.focus,
        chip_finder=cfg.chip_finder,
    )
    return Components(lock, engine, writer, microscope, classifier, axis_model, runner, interrupted)


def scan_request(cfg: ServiceConfig, p: ScanStartParams, microscope: Microscope) -> ScanRequest:
    """A scan as requested; the rest from `[scan]`, and the region, if neither says, from
    the hardware (the chip on the simulator, the recording on replay)."""
    d = cfg.scan
    region = p.region_um or d.region_um or microscope.default_region_um
    if region is None:
        raise ValueError("no scan region: pass region_um or set [scan] region_um")
    return ScanRequest(
        region_um=region,
        overlap_pct=d.overlap_pct if p.overlap_pct is None else p.overlap_pct,
        chip_id=p.chip_id or d.chip_id,
        name=p.name,
        z_um=d.z_um if p.z_um is None else p.z_um,
        keep_tiles=d.keep_tiles if p.keep_tiles is None else p.keep_tiles,
        autofocus=cfg.focus.enabled if p.autofocus is None else p.autofocus,
        find_chip=cfg.chip_finder.enabled if p.find_chip is None else p.find_chip,
        preset=p.preset,
        overview_um_per_px=d.overview_um_per_px,
    )


def scan_settings(cfg: ServiceConfig) -> dict:
    """What a scan's row keeps of the configuration, so its results can be understood later."""
    return {
        "preselection": cfg.preselection.model_dump(),
        "models": cfg.models.model_dump(mode="json"),
        "objective": cfg.objective.model_dump(),
        "overview_um_per_px": cfg.scan.overview_um_per_px,
        "focus": cfg.focus.model_dump(),
    }
