"""The simulated chip: lattice-aligned edges, ground truth, reproducibility."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from shapely import affinity
from shapely.geometry import Point, Polygon, box

from flakescan.inference.axis_model import circular_difference
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec
from flakescan.simulators.shapes import cleaved_crystal, edge_consensus_deg

SMALL = ChipSpec(width_um=2000, height_um=2000, thin_flakes_per_mm2=20, bulk_crystals_per_mm2=8)


def edge_angles(poly) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(poly.exterior.coords)
    d = np.diff(c, axis=0)
    return np.degrees(np.arctan2(d[:, 1], d[:, 0])), np.hypot(d[:, 0], d[:, 1])


def test_cleaved_edges_lie_every_30_degrees_from_the_axis():
    rng = np.random.default_rng(3)
    for axis in (0.0, 7.5, 22.0, 41.0):
        poly = cleaved_crystal(rng, (0, 0), 20, axis, facet_scatter_deg=0, torn_fraction=0)
        ang, _ = edge_angles(poly)
        off = (ang - axis + 15) % 30 - 15
        assert np.abs(off).max() < 1e-6


def test_torn_edges_are_not_crystallographic():
    rng = np.random.default_rng(4)
    poly = cleaved_crystal(rng, (0, 0), 30, 10.0, facet_scatter_deg=0, torn_fraction=1.0)
    ang, length = edge_angles(poly)
    off = np.abs((ang - 10.0 + 15) % 30 - 15)
    assert (length[off > 2]).sum() > 0.5 * length.sum()


@pytest.mark.parametrize("turn", [0.0, 7.0, 29.5, 44.0])
def test_edge_consensus_reads_the_straight_edges_mod_30(turn):
    rect = affinity.rotate(box(0, 0, 40, 25), turn, origin=(0, 0))
    assert circular_difference(edge_consensus_deg(rect), turn % 30) == pytest.approx(0, abs=1e-6)
    # Two edges at +3 deg and two at -1 deg of equal length: the mean, +1 deg.
    square = Polygon([(0, 0), (30, 0), (30, 30), (0, 30)])
    tilted = Polygon(
        [(0, 0), (30, 30 * np.tan(np.radians(3))), (30, 30), (0, 30 + 30 * np.tan(np.radians(-1)))]
    )
    assert edge_consensus_deg(square) == pytest.approx(0, abs=1e-9)
    assert circular_difference(edge_consensus_deg(tilted), 0) > 0


def test_edge_consensus_ignores_torn_edges_and_answers_none_without_a_straight_one():
    rng = np.random.default_rng(5)
    for axis in (4.0, 19.0):
        poly = cleaved_crystal(rng, (0, 0), 30, axis, facet_scatter_deg=0, torn_fraction=0.5)
        got = edge_consensus_deg(poly)
        assert circular_difference(got, axis, 30) == pytest.approx(0, abs=0.05)
    assert edge_consensus_deg(Point(0, 0).buffer(20, quad_segs=64)) is None  # a round blob


def test_chip_is_reproducible_from_its_seed():
    a, b = generate_chip(SMALL, 7), generate_chip(SMALL, 7)
    assert a.to_json() == b.to_json()
    assert generate_chip(SMALL, 8).to_json() != a.to_json()


def test_chip_holds_what_an_exfoliated_chip_holds():
    chip = generate_chip(SMALL, 1)
    kinds = Counter(o.kind for o in chip.objects)
    assert {"flake", "bulk", "residue", "dust"} <= set(kinds)
    layers = Counter(o.layers for o in chip.flakes())
    assert layers[1] > layers[5] > 0  # monolayers commonest, thicker ones rarer
    areas = np.array([o.area_um2 for o in chip.flakes()])
    assert np.median(areas) < areas.mean()  # many small, few large
    assert any(o.parent_id for o in chip.flakes()), "some thin flakes are terraces"
    for o in chip.flakes():
        assert o.axis_deg is not None and 0 <= o.axis_deg < 60
        assert o.polygon.is_valid and o.area_um2 > 0


def test_terraces_share_the_lattice_of_their_crystal():
    chip = generate_chip(SMALL, 2)
    by_id = {o.id: o for o in chip.objects}
    terraces = [o for o in chip.flakes() if o.parent_id]
    assert terraces
    for t in terraces:
        assert by_id[t.parent_id].kind == "bulk"
        assert t.axis_deg == by_id[t.parent_id].axis_deg
        assert t.polygon.intersection(by_id[t.parent_id].polygon).area < 1.0


def test_ground_truth_file(tmp_path):
    chip = generate_chip(SMALL, 1)
    path = chip.write_truth(tmp_path / "truth.json")
    data = json.loads(path.read_text())
    assert data["seed"] == 1 and len(data["objects"]) == len(chip.objects)
    flake = next(o for o in data["objects"] if o["kind"] == "flake")
    assert {"outline_um", "layers", "axis_deg", "centroid_um", "area_um2"} <= set(flake)


def test_query_finds_objects_in_a_window():
    chip = generate_chip(SMALL, 1)
    f = chip.flakes()[0]
    x, y = f.centroid_um
    assert f in chip.query(x - 1, y - 1, x + 1, y + 1)
    assert chip.query(-500, -500, -400, -400) == []


@pytest.mark.parametrize("bad", [{"oxide_nm": -5}, {"material": "unobtainium"}, {"width_um": 0}])
def test_bad_chip_specs_are_refused(bad):
    with pytest.raises(ValueError):
        ChipSpec(**bad)
