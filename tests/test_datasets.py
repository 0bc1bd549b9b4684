"""Training sets from simulated chips in the GrapheneClassifier and AxisID conventions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from flakescan.daemon.cli import main
from flakescan.inference.axis_model import circular_difference
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, SimulatorConfig
from flakescan.simulators.datasets import (
    ClassifierSetSpec,
    crop_labels,
    write_axis_set,
    write_classifier_set,
)
from flakescan.simulators.optics import MATERIALS, StackOptics
from flakescan.simulators.shapes import edge_consensus_deg

SMALL = SimulatorConfig.model_validate(
    {"chip": {"width_um": 1200, "height_um": 1000, "thin_flakes_per_mm2": 20}}
)


def test_classifier_set_files_and_labels_follow_the_truth(tmp_path):
    spec = ClassifierSetSpec(positives_per_chip=12, negatives_per_chip=8, background_per_chip=4)
    counts = write_classifier_set(tmp_path, [3], SMALL, spec, vary=True)
    images = sorted((tmp_path / "images").glob("*.png"))
    labels = sorted((tmp_path / "labels").glob("*.txt"))
    assert counts["crops"] == len(images) == len(labels) == 24
    assert [p.stem for p in images] == [p.stem for p in labels]
    img = np.asarray(Image.open(images[0]))
    assert img.shape == (175, 175, 3) and img.dtype == np.uint8
    rows = [list(map(int, p.read_text().split())) for p in labels]
    assert all(len(r) == 4 and r[3] == int(any(r[:3])) for r in rows)
    assert 0 < counts["any"] < counts["crops"]  # positives and negatives both
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["convention"] == "GrapheneClassifier" and manifest["chip_seeds"] == [3]


def test_a_crop_is_labelled_by_the_flakes_in_its_middle():
    chip = generate_chip(ChipSpec(width_um=1200, height_um=1000, thin_flakes_per_mm2=20), 5)
    optics = StackOptics(MATERIALS["graphene"], 285, 0.14)
    spec = ClassifierSetSpec()
    mono = next(o for o in chip.flakes(1, 1) if not o.parent_id and o.area_um2 > 50)
    assert crop_labels(chip, mono.centroid_um, 100, optics, 0.15, spec)[0] == 1
    assert crop_labels(chip, mono.centroid_um, 100, optics, 0.15, spec)[3] == 1
    # Far from any flake: nothing.
    empty = [
        (x, y)
        for x in range(200, 1000, 50)
        for y in range(200, 800, 50)
        if not chip.query(x - 60, y - 60, x + 60, y + 60)
    ]
    assert empty, "the test chip should have an empty spot"
    assert crop_labels(chip, empty[0], 100, optics, 0.15, spec) == [0, 0, 0, 0]


def test_axis_set_follows_the_axisid_conventions(tmp_path):
    counts = write_axis_set(tmp_path, [3], SMALL, test_seeds=[4], crops_per_crystal=3)
    with open(tmp_path / "train" / "angles.csv") as f:
        rows = list(csv.reader(f))
    assert counts["train_crystals"] == len(rows) > 0
    for base, angle, count in rows:
        assert 0 <= float(angle) < 30 and int(count) == 3
        for n in range(3):
            img = Image.open(tmp_path / "train" / "images" / f"{base}-{n}.tif")
            assert img.size == (256, 256)
    tests = sorted((tmp_path / "test" / "images").glob("*.tif"))
    assert len(tests) == counts["test_images"] > 0
    first = (tmp_path / "test" / "annotations" / f"{tests[0].stem}-edges.csv").read_text()
    assert 0 <= float(first.splitlines()[0]) < 30
    # The label is what the crystal's straight edges agree on; truth.csv keeps the lattice too.
    chip = generate_chip(SMALL.chip, 3)
    with open(tmp_path / "train" / "truth.csv") as f:
        truth = {r["basename"]: r for r in csv.DictReader(f)}
    assert set(truth) == {r[0] for r in rows}
    for base, angle, _ in rows:
        xtal = next(o for o in chip.objects if o.id == int(base.split("xtal")[1]))
        assert float(angle) == pytest.approx(edge_consensus_deg(xtal.polygon), abs=1e-3)
        assert float(truth[base]["lattice_deg"]) == pytest.approx(xtal.axis_deg % 30, abs=1e-3)
        assert float(truth[base]["label_deg"]) == float(angle)
    # Facets scatter 2 deg about the lattice, so the two readings differ a little, not a lot.
    gaps = [
        abs(circular_difference(float(r["edges_deg"]), float(r["lattice_deg"]), 30))
        for r in truth.values()
    ]
    assert 0 < np.median(gaps) < 2
    # Thin terraces of thick crystals are in the set, cropped with their parent in view.
    for b, row in truth.items():
        xtal = next(o for o in chip.objects if o.id == int(b.split("xtal")[1]))
        assert row["terrace_of"] == ("" if xtal.parent_id is None else str(xtal.parent_id))
    assert {row["terrace_of"] == "" for row in truth.values()} == {True, False}
    assert json.loads((tmp_path / "dataset.json").read_text())["label"] == "edges"


def test_axis_set_can_label_the_lattice_and_leave_terraces_out(tmp_path):
    write_axis_set(tmp_path, [3], SMALL, crops_per_crystal=1, label="lattice", terraces=False)
    chip = generate_chip(SMALL.chip, 3)
    with open(tmp_path / "train" / "angles.csv") as f:
        rows = list(csv.reader(f))
    for base, angle, _ in rows:
        xtal = next(o for o in chip.objects if o.id == int(base.split("xtal")[1]))
        assert xtal.parent_id is None
        assert float(angle) == pytest.approx(xtal.axis_deg % 30, abs=1e-3)
    # Smaller thin flakes come in on request; thick crystals keep their own floor.
    write_axis_set(tmp_path / "small", [3], SMALL, crops_per_crystal=1, min_flake_area_um2=40)
    with open(tmp_path / "small" / "train" / "truth.csv") as f:
        small = list(csv.DictReader(f))
    assert len(small) > len(rows)
    assert any(r["kind"] == "flake" and float(r["area_um2"]) < 300 for r in small)
    assert all(float(r["area_um2"]) >= 300 for r in small if r["kind"] == "bulk")
    assert all(float(r["area_um2"]) >= 40 for r in small)
    with pytest.raises(ValueError, match=r"label must be one of .*'human'"):
        write_axis_set(tmp_path / "x", [3], SMALL, label="human")


def test_simulate_sets_from_the_command_line(tmp_path, capsys):
    small = ["--seed", "9", "--chips", "1", "--size-um", "1200", "1000"]
    rc = main(["simulate", "axis-set", *small, "--label", "lattice", "--out", str(tmp_path)])
    assert rc == 0 and "train_crystals" in capsys.readouterr().out
    assert (tmp_path / "train" / "angles.csv").is_file()
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["label"] == "lattice" and manifest["terraces"] is True
    assert manifest["simulator"]["chip"]["width_um"] == 1200
    assert main(["simulate", "axis-set", "--seed", "9", "--chips", "0", "--out", "x"]) == 2
    assert "--chips must be >= 1" in capsys.readouterr().err
