"""The scan runner in-process: real microscope (simulated devices), real SQLite, real model.

Faults are injected where they happen in the field - a tile whose processing raises, a
frame lost in the runner's callback, a stop before the runner starts - and each must end
as a failed or stopped scan with every finished tile kept.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from flakescan.daemon.scan import ScanRequest, ScanRunner
from flakescan.db.catalogue import CatalogueWriter
from flakescan.db.engine import open_database, sqlite_url
from flakescan.hardware.frame import Frame
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig
from flakescan.inference.pipeline import TilePipeline, TileResult

REQUEST = ScanRequest(region_um=(2000.0, 2000.0, 3000.0, 2800.0), overlap_pct=10.0, chip_id="c")


class FailingPipeline(TilePipeline):
    """The real pipeline, except that one tile's processing raises."""

    fail_on: int = 2

    def process(self, frame: Frame) -> TileResult:
        if frame.index == self.fail_on:
            raise RuntimeError("disk full while writing a thumbnail")
        return super().process(frame)


@pytest.fixture
def runner_parts(microscope, tmp_path):
    engine = open_database(sqlite_url(tmp_path / "scan.db"))
    events: list[tuple[str, dict]] = []
    classifier = FlakeClassifier.from_config(ModelsConfig())

    def make(pipeline_cls: type[TilePipeline] = TilePipeline) -> ScanRunner:
        return ScanRunner(
            microscope,
            pipeline_cls(PreselectionConfig(), classifier),
            CatalogueWriter(engine),
            lambda topic, data: events.append((topic, data)),
            instrument="t",
            thumbnails_dir=tmp_path / "thumbs",
        )

    yield make, events, tmp_path / "scan.db"
    engine.dispose()


def rows(db, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def start(runner: ScanRunner) -> tuple[int, object]:
    plan = runner.plan(REQUEST)
    return runner.open_scan(REQUEST, plan, {}), plan


def test_a_complete_scan_processes_every_tile_once(runner_parts):
    make, events, db = runner_parts
    runner = make()
    scan_id, plan = start(runner)
    outcome = runner.run(scan_id, REQUEST, plan)
    assert outcome.status == "completed" and outcome.tiles_done == plan.n_tiles == 4
    assert sorted(i for (i,) in rows(db, "SELECT tile_index FROM tiles")) == [0, 1, 2, 3]
    topics = [t for t, _ in events]
    assert topics[0] == "scan.started" and topics[-1] == "scan.finished"
    found = {d["id"] for t, d in events if t == "flake.found"}
    assert found == {i for (i,) in rows(db, "SELECT id FROM flakes")}
    # The scan's settings keep the useq sequence, so it can be replayed.
    (settings,) = rows(db, "SELECT settings_json FROM scans")[0]
    assert '"grid_plan"' in settings


def test_a_processing_fault_fails_the_scan_and_keeps_the_tiles_before_it(runner_parts):
    make, events, db = runner_parts
    runner = make(FailingPipeline)
    scan_id, plan = start(runner)
    outcome = runner.run(scan_id, REQUEST, plan)
    assert outcome.status == "failed"
    assert "processing tile 2 failed: RuntimeError: disk full" in outcome.reason
    assert sorted(i for (i,) in rows(db, "SELECT tile_index FROM tiles")) == [0, 1]
    assert rows(db, "SELECT status, tiles_done FROM scans") == [("failed", 2)]
    assert events[-1][0] == "scan.failed"
    found = {d["id"] for t, d in events if t == "flake.found"}
    assert found == {i for (i,) in rows(db, "SELECT id FROM flakes")}


def test_a_frame_lost_in_the_runner_callback_fails_the_scan(runner_parts, monkeypatch):
    # pymmcore-plus's runner logs and ignores exceptions from frame handlers: a scan must not.
    make, events, db = runner_parts
    runner = make()
    real = runner.microscope.frame_from_mda

    def lose_tile_1(image: np.ndarray, event: object, meta: dict, *, index: int) -> Frame:
        if index == 1:
            raise MemoryError("no buffer for the frame")
        return real(image, event, meta, index=index)

    monkeypatch.setattr(runner.microscope, "frame_from_mda", lose_tile_1)
    scan_id, plan = start(runner)
    outcome = runner.run(scan_id, REQUEST, plan)
    assert outcome.status == "failed"
    assert "tile 1 lost: MemoryError" in outcome.reason
    assert rows(db, "SELECT status FROM scans") == [("failed",)]
    assert events[-1][0] == "scan.failed"


def test_a_stop_asked_before_the_runner_starts_is_honoured(runner_parts):
    make, events, db = runner_parts
    runner = make()
    scan_id, plan = start(runner)
    runner.cancel()
    outcome = runner.run(scan_id, REQUEST, plan)
    assert (outcome.status, outcome.tiles_done) == ("stopped", 0)
    assert rows(db, "SELECT status FROM scans") == [("stopped",)]
    assert events[-1][0] == "scan.finished"


def test_huge_regions_are_refused_before_any_tile_is_laid_out(runner_parts):
    make, _, _ = runner_parts
    runner = make()
    with pytest.raises(ValueError, match="at most 100000 per scan"):
        runner.plan(ScanRequest(region_um=(0, 0, 5e6, 5e6), overlap_pct=10, chip_id="c"))
