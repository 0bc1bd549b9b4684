"""Training sets from simulated chips, in the file conventions of the seed systems.

`training/` reads these exactly as it reads a lab's own data, so a model can be trained on
simulated chips, on real images, or on both:

* GrapheneClassifier convention: `images/<name>.png` crops (RGB, 8-bit, linear values)
  with one label file each, `labels/<name>.txt`, holding "c1 c2 c3 any" as 0/1 for the
  seed's classes (R contrast <= 12 %, 12-19 %, 19-30 %, any of them).
* AxisID convention: `train/images/<base>-<n>.tif` (n = 0..count-1: the same crystal cut
  by different windows, 256 x 256) with `train/angles.csv` rows `basename,axis_angle,count`;
  and `test/images/<base>.tif` with `test/annotations/<base>-edges.csv`, whose first line
  is the true orientation. Angles are degrees mod 30 from the image's +x (columns) towards
  +y (rows). The label is, by default, what the crystal's straight edges agree on
  (`shapes.edge_consensus_deg`), as the seed's people labelled it; `label="lattice"` gives
  the lattice axis the simulator drew, which the facets scatter about. `truth.csv` beside
  each split keeps both, with the object's kind, layers and area.

Every set carries `dataset.json`: seeds, specs, counts, conventions. Every crop is
reproducible from the chip seeds.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from shapely.geometry import box

from .chip import THIN_MAX_LAYERS, Chip, ChipObject, generate_chip
from .conditions import draw_conditions
from .config import SimulatorConfig
from .evaluate import measured_class
from .optics import MATERIALS, StackOptics
from .render import FieldRenderer
from .shapes import edge_consensus_deg

__all__ = ["AxisLabel", "ClassifierSetSpec", "write_axis_set", "write_classifier_set"]

CLASS_BINS = (0.0, 0.12, 0.19, 0.30)
AxisLabel = Literal["edges", "lattice"]
AXIS_LABELS: dict[str, str] = {
    "edges": "what the straight edges agree on (length-weighted circular mean mod 30)",
    "lattice": "the lattice axis the simulator drew, mod 30",
}
TRUTH_HEADER = [
    "basename",
    "label_deg",
    "edges_deg",
    "lattice_deg",
    "kind",
    "layers",
    "area_um2",
    "terrace_of",  # the parent crystal's id for a thin terrace, else empty
]


@dataclass(frozen=True)
class ClassifierSetSpec:
    """How crops are drawn from each chip for the GrapheneClassifier convention."""

    crop_um: float = 100.0
    pixel_size_um: float = 0.57
    numerical_aperture: float = 0.14
    positives_per_chip: int = 40  # crops on thin flakes
    negatives_per_chip: int = 30  # crops on thick crystals, dirt, bubbles, scratches
    background_per_chip: int = 10  # random crops of the chip
    # A flake labels a crop when this much of it (or at least min_visible_um2) lies in the
    # crop's central part: presence, as the seed labelled it.
    min_visible_share: float = 0.5
    min_visible_um2: float = 100.0
    central_fraction: float = 0.6


def _sim_for(base: SimulatorConfig, seed: int, vary: bool) -> SimulatorConfig:
    return draw_conditions(base, seed) if vary else base.model_copy(update={"seed": seed})


def _renderer(
    sim: SimulatorConfig, chip: Chip, side_px: int, px: float, na: float
) -> FieldRenderer:
    imaging = sim.imaging.model_copy(update={"width_px": side_px, "height_px": side_px})
    return FieldRenderer(chip, imaging, px, na, seed=sim.seed)


def crop_labels(
    chip: Chip,
    centre: tuple[float, float],
    crop_um: float,
    optics: StackOptics,
    flare: float,
    spec: ClassifierSetSpec,
) -> list[int]:
    """Classes 1-3 and "any" of a crop: thin flakes that lie mostly in its central part."""
    half = crop_um * spec.central_fraction / 2
    core = box(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    present = [0, 0, 0]
    for obj in chip.query(*core.bounds):
        if obj.kind != "flake" or obj.area_um2 <= 0:
            continue
        needed = min(spec.min_visible_share * obj.area_um2, spec.min_visible_um2)
        if obj.polygon.intersection(core).area < needed:
            continue
        k = measured_class(obj, optics, flare, CLASS_BINS)
        if k:
            present[k - 1] = 1
    return [*present, int(any(present))]


def _targets(
    chip: Chip, rng: np.random.Generator, spec: ClassifierSetSpec
) -> list[tuple[float, float]]:
    """Crop centres: on thin flakes, on other objects, and anywhere on the chip."""
    thin = [o for o in chip.flakes() if o.area_um2 >= 10]
    other = [o for o in chip.objects if o.kind not in ("flake",) and o.area_um2 >= 5]
    jitter = spec.crop_um * 0.2

    def around(objs: Sequence[ChipObject], n: int) -> list[tuple[float, float]]:
        if not objs:
            return []
        picks = rng.choice(len(objs), size=n, replace=len(objs) < n)
        return [
            tuple(np.asarray(objs[i].centroid_um) + rng.uniform(-jitter, jitter, 2)) for i in picks
        ]

    s = chip.spec
    anywhere = [
        (
            float(rng.uniform(s.margin_um, s.width_um - s.margin_um)),
            float(rng.uniform(s.margin_um, s.height_um - s.margin_um)),
        )
        for _ in range(spec.background_per_chip)
    ]
    return around(thin, spec.positives_per_chip) + around(other, spec.negatives_per_chip) + anywhere


def write_classifier_set(
    out: Path,
    seeds: Sequence[int],
    base: SimulatorConfig | None = None,
    spec: ClassifierSetSpec = ClassifierSetSpec(),
    *,
    vary: bool = True,
) -> dict:
    """Write a GrapheneClassifier-convention set from the chips `seeds`; returns counts."""
    base = base or SimulatorConfig()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    side = round(spec.crop_um / spec.pixel_size_um)
    counts = {"crops": 0, "class1": 0, "class2": 0, "class3": 0, "any": 0}
    for seed in seeds:
        sim = _sim_for(base, seed, vary)
        chip = generate_chip(sim.chip, seed)
        optics = StackOptics(
            MATERIALS[chip.spec.material], chip.spec.oxide_nm, spec.numerical_aperture
        )
        renderer = _renderer(sim, chip, side, spec.pixel_size_um, spec.numerical_aperture)
        rng = np.random.default_rng([seed, 0xC1A5])
        for k, centre in enumerate(_targets(chip, rng, spec)):
            name = f"chip{seed:05d}-{k:04d}"
            img = renderer.render(*centre, frame_index=k)
            Image.fromarray(img).save(out / "images" / f"{name}.png")
            labels = crop_labels(chip, centre, spec.crop_um, optics, sim.imaging.flare, spec)
            (out / "labels" / f"{name}.txt").write_text(" ".join(map(str, labels)) + "\n")
            counts["crops"] += 1
            for key, v in zip(("class1", "class2", "class3", "any"), labels, strict=True):
                counts[key] += v
    _write_manifest(
        out,
        "GrapheneClassifier",
        seeds,
        base,
        vary,
        counts,
        {
            "crop_um": spec.crop_um,
            "crop_px": side,
            "pixel_size_um": spec.pixel_size_um,
            "pixels": "RGB, 8-bit, linear in light",
            "labels": "c1 c2 c3 any; R contrast <= 12 %, 12-19 %, 19-30 %, any",
        },
    )
    return counts


def write_axis_set(
    out: Path,
    seeds: Sequence[int],
    base: SimulatorConfig | None = None,
    *,
    test_seeds: Sequence[int] = (),
    crops_per_crystal: int = 4,
    size_px: int = 256,
    pixel_size_um: float = 0.57,
    numerical_aperture: float = 0.14,
    min_area_um2: float = 300.0,
    vary: bool = True,
    label: AxisLabel = "edges",
    terraces: bool = True,
    min_flake_area_um2: float | None = None,
) -> dict:
    """Write an AxisID-convention set: augmented training crops, a plain test set.

    `terraces` adds the thin terraces that stick out of thick crystals, cropped round the
    terrace with part of its parent in view: the crops the daemon's hits give.
    `min_flake_area_um2` (default: `min_area_um2`) lets smaller thin flakes in, the
    daemon's hits being mostly small thin flakes.
    """
    if label not in AXIS_LABELS:
        raise ValueError(f"label must be one of {sorted(AXIS_LABELS)}, got {label!r}")
    base = base or SimulatorConfig()
    out = Path(out)
    counts = {"train_crystals": 0, "train_images": 0, "test_images": 0, "no_straight_edge": 0}
    flake_area = min_area_um2 if min_flake_area_um2 is None else min_flake_area_um2
    how = (pixel_size_um, numerical_aperture, min_area_um2, flake_area, label, terraces)
    (out / "train" / "images").mkdir(parents=True, exist_ok=True)
    with (
        open(out / "train" / "angles.csv", "w", newline="") as f,
        open(out / "train" / "truth.csv", "w", newline="") as t,
    ):
        writer, truth = csv.writer(f), csv.writer(t)
        truth.writerow(TRUTH_HEADER)
        for seed in seeds:
            for crop in _axis_crops(base, seed, vary, crops_per_crystal, size_px, *how):
                if crop is None:
                    counts["no_straight_edge"] += 1
                    continue
                for n, img in enumerate(crop.images):
                    img.save(out / "train" / "images" / f"{crop.name}-{n}.tif")
                writer.writerow([crop.name, f"{crop.label_deg:.3f}", len(crop.images)])
                truth.writerow(crop.truth_row())
                counts["train_crystals"] += 1
                counts["train_images"] += len(crop.images)
    if test_seeds:
        (out / "test" / "images").mkdir(parents=True, exist_ok=True)
        (out / "test" / "annotations").mkdir(parents=True, exist_ok=True)
        with open(out / "test" / "truth.csv", "w", newline="") as t:
            truth = csv.writer(t)
            truth.writerow(TRUTH_HEADER)
            for seed in test_seeds:
                for crop in _axis_crops(base, seed, vary, 1, size_px, *how):
                    if crop is None:
                        counts["no_straight_edge"] += 1
                        continue
                    crop.images[0].save(out / "test" / "images" / f"{crop.name}.tif")
                    (out / "test" / "annotations" / f"{crop.name}-edges.csv").write_text(
                        f"{crop.label_deg:.3f}\n"
                    )
                    truth.writerow(crop.truth_row())
                    counts["test_images"] += 1
    _write_manifest(
        out,
        "AxisID",
        [*seeds, *test_seeds],
        base,
        vary,
        counts,
        {
            "size_px": size_px,
            "angle": "degrees mod 30, from image +x (columns) towards +y (rows)",
            "label": label,
            "label_means": AXIS_LABELS[label],
            "terraces": terraces,
            "min_area_um2": min_area_um2,
            "min_flake_area_um2": flake_area,
            "pixels": "RGB, 8-bit, linear in light",
            "test_seeds": list(test_seeds),
        },
    )
    return counts


@dataclass
class AxisCrop:
    """One crystal of an AxisID set: its crops and both readings of its orientation."""

    name: str
    label_deg: float
    edges_deg: float | None
    obj: ChipObject
    images: list[Image.Image]

    def truth_row(self) -> list:
        o = self.obj
        edges = "" if self.edges_deg is None else f"{self.edges_deg:.3f}"
        lattice = f"{(o.axis_deg or 0.0) % 30.0:.3f}"
        return [
            self.name,
            f"{self.label_deg:.3f}",
            edges,
            lattice,
            o.kind,
            o.layers,
            round(o.area_um2, 1),
            "" if o.parent_id is None else o.parent_id,
        ]


def _axis_objects(
    chip: Chip, min_area_um2: float, min_flake_area_um2: float, terraces: bool
) -> list[ChipObject]:
    """Whole crystals with straight edges (thin or thick) from `min_area_um2`, thin flakes
    (1-10 layers, what the daemon hunts) from `min_flake_area_um2`, and with `terraces` the
    thin terraces of thick crystals too."""

    def wanted(o: ChipObject) -> bool:
        if o.kind == "flake" and o.area_um2 >= min_flake_area_um2:
            return o.parent_id is None or terraces
        return o.parent_id is None and o.area_um2 >= min_area_um2

    return [
        o
        for o in chip.objects
        if o.kind in ("flake", "bulk")
        and o.axis_deg is not None
        and (o.layers or 0) <= THIN_MAX_LAYERS * 100
        and wanted(o)
    ]


def _axis_crops(
    base: SimulatorConfig,
    seed: int,
    vary: bool,
    n_crops: int,
    size_px: int,
    px: float,
    na: float,
    min_area_um2: float,
    min_flake_area_um2: float,
    label: AxisLabel,
    terraces: bool,
) -> list[AxisCrop | None]:
    """Each crystal cut by `n_crops` windows of different size and offset, resized to
    size_px; None for a crystal with no straight edge when the label is `edges` (a person
    would not label it either)."""
    sim = _sim_for(base, seed, vary)
    chip = generate_chip(sim.chip, seed)
    rng = np.random.default_rng([seed, 0xA715])
    frame = 4 * size_px
    renderer = _renderer(sim, chip, frame, px, na)
    result: list[AxisCrop | None] = []
    for k, obj in enumerate(_axis_objects(chip, min_area_um2, min_flake_area_um2, terraces)):
        edges = edge_consensus_deg(obj.polygon)
        if label == "edges" and edges is None:
            result.append(None)
            continue
        x0, y0, x1, y1 = obj.polygon.bounds
        extent = max(x1 - x0, y1 - y0)
        cx, cy = obj.centroid_um
        img = renderer.render(cx, cy, frame_index=k)
        images = []
        for _ in range(n_crops):
            side_um = min(extent * rng.uniform(1.2, 1.8), frame * px)
            ox, oy = rng.uniform(-0.1, 0.1, 2) * side_um
            side = max(8, round(side_um / px))
            c0 = round((frame - 1) / 2 + ox / px - side / 2)
            r0 = round((frame - 1) / 2 + oy / px - side / 2)
            c0, r0 = int(np.clip(c0, 0, frame - side)), int(np.clip(r0, 0, frame - side))
            window = Image.fromarray(img[r0 : r0 + side, c0 : c0 + side])
            images.append(window.resize((size_px, size_px), Image.Resampling.BOX))
        lattice = float(obj.axis_deg or 0.0) % 30.0
        angle = edges if label == "edges" and edges is not None else lattice
        result.append(AxisCrop(f"chip{seed:05d}-xtal{obj.id:05d}", angle, edges, obj, images))
    return result


def _write_manifest(
    out: Path,
    convention: str,
    seeds: Sequence[int],
    base: SimulatorConfig,
    vary: bool,
    counts: dict,
    details: dict,
) -> None:
    (out / "dataset.json").write_text(
        json.dumps(
            {
                "convention": convention,
                "source": "flakescan simulated chips",
                "chip_seeds": list(seeds),
                "vary_conditions": vary,
                "simulator": base.model_dump(mode="json"),
                "counts": counts,
                **details,
            },
            indent=1,
        )
    )
