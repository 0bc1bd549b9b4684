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
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.pipeline import TilePipeline

from .config import ServiceConfig
from .scan import Publish, ScanRunner

__all__ = ["Components", "StartupError", "open_components"]


class StartupError(RuntimeError):
    """A part could not come up; the message names the part."""


@dataclass
class Components:
    engine: Engine
    writer: CatalogueWriter
    microscope: Microscope
    classifier: FlakeClassifier
    runner: ScanRunner
    interrupted_scans: list[int]

    def close(self) -> None:
        self.microscope.close()
        self.engine.dispose()


def open_components(cfg: ServiceConfig, state_dir: Path, publish: Publish) -> Components:
    """Database first (mark scans a dead daemon left running), then model, then hardware."""
    url = cfg.database_url(state_dir)
    try:
        engine = open_database(url)
        writer = CatalogueWriter(engine)
        interrupted = writer.mark_interrupted()
    except Exception as exc:
        raise StartupError(f"database {url}: {exc}") from exc
    try:
        classifier = FlakeClassifier.from_config(cfg.models)
    except Exception as exc:
        engine.dispose()
        raise StartupError(f"classifier {cfg.models.classifier}: {exc}") from exc
    try:
        microscope = open_microscope(cfg.hardware, cfg.objective, cfg.travel_limits, cfg.simulator)
    except Exception as exc:
        engine.dispose()
        raise StartupError(f"hardware ({cfg.hardware.backend}): {exc}") from exc
    pipeline = TilePipeline(cfg.preselection, classifier, cfg.models.threshold)
    runner = ScanRunner(
        microscope,
        pipeline,
        writer,
        publish,
        instrument=cfg.instrument,
        thumbnails_dir=state_dir / "thumbnails",
        classifier_name=classifier.card.name,
    )
    return Components(engine, writer, microscope, classifier, runner, interrupted)
