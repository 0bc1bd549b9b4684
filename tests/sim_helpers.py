"""What the scan tests build again and again: a simulated microscope with fast stages, and
a scan runner on it with the shipped classifier, writing a real SQLite catalogue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from flakescan.daemon.scan import ScanRunner
from flakescan.db.catalogue import CatalogueWriter
from flakescan.hardware.backends.simulator import SimulatedMicroscope, open_simulated_microscope
from flakescan.hardware.config import HardwareConfig, ObjectiveConfig, TravelLimits
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig
from flakescan.inference.pipeline import TilePipeline
from flakescan.simulators.config import SimulatorConfig

FAST_STAGE = {"xy_speed_um_s": 100000, "xy_settle_ms": 5}


def sim_microscope(
    limits: TravelLimits | None = None,
    *,
    stage: dict | None = None,
    hardware: HardwareConfig | None = None,
    **sections: Any,
) -> SimulatedMicroscope:
    """The simulated microscope on the default chip, stages fast; `stage` and `sections`
    (chip, imaging, faults, ...) override the simulator's settings, `hardware` the
    `[hardware]` section (fault policy, timeout, park)."""
    sim = SimulatorConfig.model_validate({**sections, "stage": {**FAST_STAGE, **(stage or {})}})
    return open_simulated_microscope(
        hardware or HardwareConfig(), ObjectiveConfig(), limits or TravelLimits(), sim
    )


def scan_runner(
    mic: SimulatedMicroscope,
    engine: Engine,
    thumbnails: Path,
    publish: Callable[[str, dict], Any] = lambda *_: None,
    **kw: Any,
) -> ScanRunner:
    """A runner with the shipped classifier and the default preselection."""
    return ScanRunner(
        mic,
        TilePipeline(PreselectionConfig(), FlakeClassifier.from_config(ModelsConfig())),
        CatalogueWriter(engine, "t"),
        publish,
        instrument="t",
        thumbnails_dir=thumbnails,
        **kw,
    )
