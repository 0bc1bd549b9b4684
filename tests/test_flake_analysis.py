"""`flakescan analyze flake`: the scan's tile pipeline on an image taken by hand.

A simulated tile with a known monolayer, saved as a linear .npy and as an sRGB PNG (what a
person saves from a camera program), must give the flake where it is, with the same hits as
the pipeline run on the frame directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flakescan.hardware.frame import Frame
from flakescan.inference.analysis import AnalysisParams, AnalysisService
from flakescan.inference.axis_model import AxisModel
from flakescan.inference.classifier import FlakeClassifier
from flakescan.inference.config import ModelsConfig, PreselectionConfig
from flakescan.inference.pipeline import TilePipeline
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.render import FieldRenderer
from flakescan.simulators.tone import srgb_encode

PX = 0.57


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    """(folder, frame, the monolayer's offset from the image centre in um)."""
    chip = generate_chip(ChipSpec(width_um=4000, height_um=4000, thin_flakes_per_mm2=12), 21)
    flake = next(f for f in chip.flakes(1, 1) if f.parent_id is None and f.area_um2 > 300)
    fx, fy = flake.centroid_um
    x, y = fx + 70, fy - 50  # the flake off-centre
    image = FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=21).render(x, y)
    folder = tmp_path_factory.mktemp("tile")
    np.save(folder / "tile.npy", image.astype(np.float32))
    scale = float(image.max())
    png = (srgb_encode(np.clip(image / scale, 0, 1)) * 255).round().astype(np.uint8)
    Image.fromarray(png).save(folder / "tile.png")
    frame = Frame(image.astype(np.float32), 0.0, 0.0, 0.0, PX, 0.0)
    return folder, frame, (fx - x, fy - y), flake


def test_the_flake_is_found_where_it_is_with_the_pipeline_s_hits(tile):
    folder, frame, (dx, dy), flake = tile
    service = AnalysisService()
    doc = service.analyze("flake", [folder / "tile.npy"], AnalysisParams(pixel_size_um=PX))
    assert doc["model"]["name"] == "flake_classifier_cnn4"
    (r,) = doc["results"]
    near = [h for h in r["hits"] if np.hypot(h["x_um"] - dx, h["y_um"] - dy) < flake.radius_um]
    assert near and near[0]["flake_class"] == 1 and set(near[0]["scores"]) >= {"any"}
    assert near[0]["area_um2"] == pytest.approx(flake.area_um2, rel=0.35)
    cfg = ModelsConfig()
    direct = TilePipeline(
        PreselectionConfig(),
        FlakeClassifier.from_config(cfg),
        cfg.threshold,
        axis_model=AxisModel.from_config(cfg),
        axis_primary=cfg.axis_primary,
    ).process(frame)
    assert [(round(h.x_um, 2), h.flake_class) for h in direct.hits] == [
        (h["x_um"], h["flake_class"]) for h in r["hits"]
    ]
    assert [h["axis_angle_deg"] for h in r["hits"]] == [h.axis_angle_deg for h in direct.hits]
    # the same tile as an sRGB PNG (8 bits): decoded to linear, the monolayer is still there
    params = AnalysisParams(pixel_size_um=PX)
    png = service.analyze("flake", [folder / "tile.png"], params, plot_dir=folder / "pics")
    (p,) = png["results"]
    assert any(
        np.hypot(h["x_um"] - dx, h["y_um"] - dy) < flake.radius_um and h["flake_class"] == 1
        for h in p["hits"]
    )
    assert (folder / "pics" / "tile.flake.png").stat().st_size > 10_000


def test_analyze_flake_through_the_cli_and_its_refusals(tile, capsys):
    from flakescan.daemon.cli import main as cli

    folder, *_ = tile
    argv = ["analyze", "flake", str(folder / "tile.npy")]
    assert cli([*argv, "--pixel-size-um", str(PX)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "flake" and doc["results"][0]["hits"]
    assert cli(argv) == 2
    assert "pixel_size_um is needed" in capsys.readouterr().err
    assert cli([*argv, "--pixel-size-um", "-1"]) == 2
    assert "pixel_size_um" in capsys.readouterr().err
    np.save(folder / "grey.npy", np.zeros((20, 20)))
    assert cli(["analyze", "flake", str(folder / "grey.npy"), "--pixel-size-um", "0.5"]) == 2
    assert "expected an (h, w, 3) RGB array" in capsys.readouterr().err
