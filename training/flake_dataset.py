"""Labelled classifier crops from simulated chips: the training data of the flake classifier.

The network must learn on exactly what the daemon will show it, so this module runs the
daemon's own chain on rendered tiles: `FieldRenderer` -> `preselect` -> `classifier_crop` for
every candidate. Labels come from the chip's ground truth, not from the preselection: a
candidate carries class k when a thin flake whose *measured* R contrast (ideal contrast
/ (1 + flare)) falls in GrapheneClassifier bin k covers a meaningful share of it. Everything
else the preselection lets through (dust rims, residue, bulk edges, flakes beyond 30 %
contrast) is a negative, and random bare-wafer crops teach the network that a crop may hold
nothing at all.

Each crop also keeps the measured R contrasts of the flakes that label it (`flake_r`), so
training can change a crop's contrast scale -- what a change of flare does -- and recompute
its labels from the scaled contrasts (`labels_at_scale`) instead of keeping labels the new
contrast no longer earns.

Generation is reproducible from the chip seeds alone; each chip is independent, so chips can
be rendered in parallel processes without changing the result. No torch here: the data can be
made on a machine without the training extras.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from collections.abc import Container, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flakescan.inference.background import Background
from flakescan.inference.config import PreselectionConfig
from flakescan.inference.crops import classifier_crop, crop_window
from flakescan.inference.pipeline import CLEAN_TILE_FRACTION
from flakescan.inference.preselection import Candidate, preselect
from flakescan.simulators.chip import Chip, generate_chip
from flakescan.simulators.conditions import draw_conditions
from flakescan.simulators.config import ChipSpec, ImagingSpec, SimulatorConfig
from flakescan.simulators.evaluate import measured_contrast
from flakescan.simulators.optics import MATERIALS, StackOptics, contrast_class, contrast_classes
from flakescan.simulators.render import FieldRenderer

__all__ = [
    "CLASS_NAMES",
    "DatasetSpec",
    "FlakeDataset",
    "chip_crops",
    "flake_classes",
    "flake_contrasts",
    "generate_dataset",
    "label_map",
    "labelling_flakes",
    "labels_at_scale",
    "load_dataset",
    "main",
    "save_dataset",
    "seed_range",
    "tile_crops",
]

CLASS_NAMES = ["class1_R_le_12", "class2_R_12_19", "class3_R_19_30", "any"]

# Label-map values: 0 off the chip, 1 bare wafer, object id + 1 for an object.
_OFF_CHIP, _WAFER = 0, 1
# Per-crop provenance stored in the dataset.
SOURCE_CANDIDATE, SOURCE_BACKGROUND = 0, 1


@dataclass(frozen=True)
class DatasetSpec:
    """How crops are drawn from each chip; the defaults are the daemon's imaging defaults."""

    chip: ChipSpec = field(default_factory=ChipSpec)
    imaging: ImagingSpec = field(default_factory=ImagingSpec)
    preselection: PreselectionConfig = field(default_factory=PreselectionConfig)
    pixel_size_um: float = 0.57
    numerical_aperture: float = 0.14
    random_tiles: int = 8  # tiles at uniform positions: the chip as a scan sees it
    flake_tiles: int = 24  # tiles near a random thin flake, so positives are not rare
    background_crops_per_tile: int = 1  # random crops with no thin flake of classes 1-3
    crop_um: float = 100.0
    input_px: int = 64
    # A flake labels a candidate when it covers this share of the candidate's pixels ...
    min_candidate_share: float = 0.3
    # ... or when the candidate covers this share of the flake's pixels visible in the tile.
    min_flake_share: float = 0.5
    # Each chip draws its own oxide, illumination, flare, white balance and exposure
    # (simulators.conditions), so the network does not learn one microscope.
    vary_conditions: bool = True

    def __post_init__(self) -> None:
        for name in ("random_tiles", "flake_tiles", "background_crops_per_tile"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.random_tiles + self.flake_tiles == 0:
            raise ValueError("random_tiles + flake_tiles must be > 0, got 0 tiles per chip")
        for name in ("pixel_size_um", "crop_um"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.input_px < 8:
            raise ValueError(f"input_px must be >= 8, got {self.input_px}")
        for name in ("min_candidate_share", "min_flake_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["chip"] = self.chip.model_dump()
        d["imaging"] = self.imaging.model_dump()
        d["preselection"] = self.preselection.model_dump()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        d = dict(d)
        return cls(
            chip=ChipSpec.model_validate(d.pop("chip")),
            imaging=ImagingSpec.model_validate(d.pop("imaging")),
            preselection=PreselectionConfig.model_validate(d.pop("preselection")),
            **d,
        )


@dataclass
class FlakeDataset:
    """Crops X (n, 3, px, px) float16, labels Y (n, 4) uint8, and where each crop came from."""

    x: np.ndarray
    y: np.ndarray
    chip_seed: np.ndarray  # (n,) int64: chip each crop was cut from
    source: np.ndarray  # (n,) uint8: SOURCE_CANDIDATE or SOURCE_BACKGROUND
    preselection_class: np.ndarray  # (n,) int8: the candidate's contrast bin, -1 for background
    spec: DatasetSpec
    seeds: list[int]
    # (n, k) float64: measured R contrast of each flake that labels the crop, NaN-padded; the
    # labels are `labels_at_scale(flake_r, 1, bins)`. None for sets written before it existed.
    flake_r: np.ndarray | None = None
    # (n,) float64: contrast scales at or below this would bring a flake the crop holds but is
    # not labelled by (a too-thick one in a background crop) into a class; 0 = no limit.
    scale_floor: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        """Positives per class, plus totals: what the card reports about the data."""
        out = {name: int(self.y[:, k].sum()) for k, name in enumerate(CLASS_NAMES)}
        out["negatives"] = int((self.y[:, 3] == 0).sum())
        out["background_crops"] = int((self.source == SOURCE_BACKGROUND).sum())
        out["total"] = len(self)
        return out

    def metadata(self) -> dict:
        return {"seeds": list(self.seeds), "counts": self.counts(), "spec": self.spec.to_dict()}


def flake_contrasts(chip: Chip, spec: DatasetSpec) -> dict[int, float]:
    """Measured R contrast of every thin flake: the ideal stack contrast lowered by the
    camera's flare, which is what the preselection sees on a rendered tile."""
    optics = StackOptics(MATERIALS[chip.spec.material], chip.spec.oxide_nm, spec.numerical_aperture)
    return {
        obj.id: measured_contrast(obj, optics, spec.imaging.flare)
        for obj in chip.objects
        if obj.kind == "flake" and obj.layers is not None
    }


def flake_classes(chip: Chip, spec: DatasetSpec) -> dict[int, int]:
    """Class (1-3, 0 outside the bins) of every thin flake, by its measured R contrast in
    the preselection's bins."""
    bins = spec.preselection.class_bins
    return {i: contrast_class(r, bins) for i, r in flake_contrasts(chip, spec).items()}


def labels_at_scale(flake_r: np.ndarray, scale: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """(n, 4) uint8 targets of crops whose contrast is multiplied by `scale` (n,).

    `flake_r` (n, k) holds the measured R contrasts of the flakes that label each crop
    (NaN-padded); a flake gives class k when its scaled contrast falls in bin k, as
    `contrast_class` bins it. At scale 1 this is the label the crop was generated with.
    """
    r = np.asarray(flake_r, np.float64) * np.asarray(scale, np.float64)[:, None]
    classes = contrast_classes(r, bins)  # NaN padding: class 0
    y = np.zeros((len(r), 4), np.uint8)
    for k in range(1, len(bins)):
        y[:, k - 1] = (classes == k).any(axis=1)
    y[:, 3] = y[:, :3].any(axis=1)
    return y


def label_map(
    chip: Chip, x_um: float, y_um: float, shape: tuple[int, int], pixel_size_um: float
) -> np.ndarray:
    """(h, w) int32 map of the top-most object under each pixel of a tile centred at (x, y).

    Rasterised with the same transform and drawing order as `FieldRenderer.reflectance_map`,
    so labels agree pixel for pixel with the (unblurred) rendered field. Values: 0 off the
    chip, 1 bare wafer, `obj.id + 1` for an object.
    """
    h, w = shape
    px = pixel_size_um
    x0, y0 = x_um - w * px / 2, y_um - h * px / 2
    img = Image.new("I", (w, h), _OFF_CHIP)
    draw = ImageDraw.Draw(img)

    def to_px(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
        cols, rows = ((xs - x0) / px - 0.5).tolist(), ((ys - y0) / px - 0.5).tolist()
        return list(zip(cols, rows, strict=True))

    outline = np.asarray(chip.outline_um)
    draw.polygon(to_px(outline[:, 0], outline[:, 1]), fill=_WAFER)
    for obj in chip.query(x0, y0, x0 + w * px, y0 + h * px):
        pts = np.asarray(obj.outline_um)
        draw.polygon(to_px(pts[:, 0], pts[:, 1]), fill=obj.id + 1)
    return np.asarray(img, dtype=np.int32)


def labelling_flakes(
    cand: Candidate,
    labels: np.ndarray,
    pixel_counts: np.ndarray,
    thin_ids: Container[int],
    spec: DatasetSpec,
) -> list[int]:
    """Ids of the thin flakes that label a candidate, whatever their class.

    A flake counts when it covers `min_candidate_share` of the candidate's pixels or the
    candidate covers `min_flake_share` of the flake's pixels in this tile (a small flake
    inside a candidate that the blur made larger than the flake).
    """
    r0, c0, r1, c1 = cand.bbox_px
    under = labels[r0:r1, c0:c1][cand.mask]
    ids, counts = np.unique(under, return_counts=True)
    n = max(len(under), 1)
    return [
        value - 1
        for value, count in zip(ids.tolist(), counts.tolist(), strict=True)
        if value - 1 in thin_ids
        and (
            count / n >= spec.min_candidate_share
            or count / pixel_counts[value] >= spec.min_flake_share
        )
    ]


def _tile_centres(
    chip: Chip, spec: DatasetSpec, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Random tile centres over the whole chip, then centres near random thin flakes."""
    cs = chip.spec
    centres = [
        (float(rng.uniform(0, cs.width_um)), float(rng.uniform(0, cs.height_um)))
        for _ in range(spec.random_tiles)
    ]
    flakes = chip.flakes()
    half_w = spec.imaging.width_px * spec.pixel_size_um / 2
    half_h = spec.imaging.height_px * spec.pixel_size_um / 2
    for _ in range(spec.flake_tiles if flakes else 0):
        cx, cy = flakes[int(rng.integers(len(flakes)))].centroid_um
        # Jitter so the flake lands anywhere in the tile, edges included, as in a scan.
        centres.append(
            (
                cx + float(rng.uniform(-0.8, 0.8)) * half_w,
                cy + float(rng.uniform(-0.8, 0.8)) * half_h,
            )
        )
    return centres


def _background_points(
    labels: np.ndarray,
    contrasts: dict[int, float],
    bins: Sequence[float],
    side_px: int,
    n: int,
    rng: np.random.Generator,
    tries: int = 10,
) -> list[tuple[tuple[float, float], float]]:
    """Up to n random crop centres whose crop window holds no thin flake of classes 1-3,
    each with its scale floor: the contrast scale at which a too-thick flake in the window
    would fall into the top bin (0 when the window holds none)."""
    h, w = labels.shape
    positive_values = np.array(
        [i + 1 for i, r in contrasts.items() if contrast_class(r, bins) > 0], dtype=np.int32
    )
    out: list[tuple[tuple[float, float], float]] = []
    for _ in range(n):
        for _attempt in range(tries):
            r, c = float(rng.uniform(0, h - 1)), float(rng.uniform(0, w - 1))
            (r0, c0, r1, c1), _ = crop_window((r, c), side_px, (h, w))  # what the crop sees
            window = labels[r0:r1, c0:c1]
            if not np.isin(window, positive_values).any():
                present = [contrasts.get(v - 1) for v in np.unique(window).tolist()]
                thick = [x for x in present if x is not None and x > bins[-1]]
                out.append(((r, c), max((bins[-1] / x for x in thick), default=0.0)))
                break
    return out


@dataclass
class TileCrops:
    """Crops of one tile with their labels, provenance and preselection bins."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    preselection_class: list[int] = field(default_factory=list)
    flake_r: list[list[float]] = field(default_factory=list)  # contrasts of labelling flakes
    scale_floor: list[float] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    background: Background | None = None  # the tile's fitted wafer background

    def add(
        self,
        x: np.ndarray,
        y: np.ndarray,
        source: int,
        pclass: int,
        flake_r: list[float],
        scale_floor: float = 0.0,
    ) -> None:
        self.x.append(x)
        self.y.append(y)
        self.source.append(source)
        self.preselection_class.append(pclass)
        self.flake_r.append(flake_r)
        self.scale_floor.append(scale_floor)

    def extend(self, other: TileCrops) -> None:
        for name in ("x", "y", "source", "preselection_class", "flake_r", "scale_floor"):
            getattr(self, name).extend(getattr(other, name))


def tile_crops(
    chip: Chip,
    renderer: FieldRenderer,
    contrasts: dict[int, float],
    centre_um: tuple[float, float],
    frame_index: int,
    spec: DatasetSpec,
    rng: np.random.Generator,
    wafer_colour: np.ndarray | None = None,
) -> TileCrops:
    """Render one tile, preselect it as the daemon does, and label every candidate crop.

    `contrasts` are the chip's `flake_contrasts`. `wafer_colour` is the wafer colour learnt
    from earlier clean tiles of the chip, passed to `preselect` exactly as the daemon's
    pipeline passes it.
    """
    x_um, y_um = centre_um
    tile = renderer.render(x_um, y_um, frame_index=frame_index)
    result = preselect(tile, spec.pixel_size_um, spec.preselection, wafer_colour)
    out = TileCrops(background=result.background)
    if result.contrast is None:
        return out  # the daemon crops nothing from a tile without enough bare wafer
    labels = label_map(chip, x_um, y_um, tile.shape[:2], spec.pixel_size_um)
    pixel_counts = np.bincount(labels.ravel())
    bins = spec.preselection.class_bins
    for cand in result.candidates:
        out.candidates.append(cand)
        r = [contrasts[i] for i in labelling_flakes(cand, labels, pixel_counts, contrasts, spec)]
        out.add(
            _crop(result.contrast, cand.centroid_px, spec),
            labels_at_scale(np.array([r]), np.ones(1), bins)[0],
            SOURCE_CANDIDATE,
            cand.contrast_class,
            r,
        )
    side_px = max(round(spec.crop_um / spec.pixel_size_um), 1)
    n_bg = spec.background_crops_per_tile
    for centre, floor in _background_points(labels, contrasts, bins, side_px, n_bg, rng):
        out.add(
            _crop(result.contrast, centre, spec),
            np.zeros(4, np.uint8),
            SOURCE_BACKGROUND,
            -1,
            [],
            floor,
        )
    return out


def chip_crops(seed: int, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """All crops and labels of one chip, drawn from `seed` alone (chip, tiles and noise)."""
    if spec.vary_conditions:
        sim = draw_conditions(SimulatorConfig(chip=spec.chip, imaging=spec.imaging), seed)
        spec = replace(spec, chip=sim.chip, imaging=sim.imaging)
    chip = generate_chip(spec.chip, seed)
    contrasts = flake_contrasts(chip, spec)
    renderer = FieldRenderer(
        chip, spec.imaging, spec.pixel_size_um, spec.numerical_aperture, seed=seed
    )
    rng = np.random.default_rng([seed, 0x5EED])
    crops = TileCrops()
    wafer_colour: np.ndarray | None = None
    for frame, centre in enumerate(_tile_centres(chip, spec, rng)):
        t = tile_crops(chip, renderer, contrasts, centre, frame, spec, rng, wafer_colour)
        if t.background is not None and t.background.fraction >= CLEAN_TILE_FRACTION:
            wafer_colour = t.background.colour
        crops.extend(t)
    n = len(crops.y)
    px = spec.input_px
    return {
        "x": np.stack(crops.x).astype(np.float16) if n else np.zeros((0, 3, px, px), np.float16),
        "y": np.stack(crops.y) if n else np.zeros((0, 4), np.uint8),
        "chip_seed": np.full(n, seed, np.int64),
        "source": np.asarray(crops.source, np.uint8),
        "preselection_class": np.asarray(crops.preselection_class, np.int8),
        "flake_r": _pad_rows(crops.flake_r),
        "scale_floor": np.asarray(crops.scale_floor, np.float64),
    }


def _pad_rows(rows: Sequence[Sequence[float]], width: int = 1) -> np.ndarray:
    """Ragged rows -> (n, max(width, longest)) float64, NaN-padded."""
    out = np.full((len(rows), max([width, *map(len, rows)])), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _crop(contrast: np.ndarray, centre: tuple[float, float], spec: DatasetSpec) -> np.ndarray:
    return classifier_crop(contrast, centre, spec.pixel_size_um, spec.crop_um, spec.input_px)


def _chip_crops_args(args: tuple[int, DatasetSpec]) -> dict[str, np.ndarray]:
    return chip_crops(*args)


def generate_dataset(
    seeds: Iterable[int],
    spec: DatasetSpec | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    description: str = "chips",
) -> FlakeDataset:
    """Crops of every chip seed, concatenated in seed order (independent of `workers`)."""
    spec = spec or DatasetSpec()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one chip, got none")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"chip seeds must be distinct, got {seeds}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    parts: list[dict[str, np.ndarray]] = []
    jobs = [(s, spec) for s in seeds]
    with _progress(progress) as bar:
        task = bar.add_task(description, total=len(seeds)) if bar else None
        if workers == 1:
            results: Iterable[dict[str, np.ndarray]] = map(_chip_crops_args, jobs)
            pool = None
        else:
            # spawn, not fork: the caller may already run torch's thread pools.
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
            results = pool.map(_chip_crops_args, jobs)
        try:
            for part in results:  # map() yields in seed order
                parts.append(part)
                if bar is not None:
                    bar.advance(task)
        finally:
            if pool is not None:
                pool.shutdown()
    width = max(p["flake_r"].shape[1] for p in parts)
    return FlakeDataset(
        x=np.concatenate([p["x"] for p in parts]),
        y=np.concatenate([p["y"] for p in parts]),
        chip_seed=np.concatenate([p["chip_seed"] for p in parts]),
        source=np.concatenate([p["source"] for p in parts]),
        preselection_class=np.concatenate([p["preselection_class"] for p in parts]),
        spec=spec,
        seeds=seeds,
        flake_r=np.concatenate([_widen(p["flake_r"], width) for p in parts]),
        scale_floor=np.concatenate([p["scale_floor"] for p in parts]),
    )


def _widen(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan)


def _progress(enabled: bool) -> AbstractContextManager:
    """A rich progress bar over chips, or nothing (tests, --quiet)."""
    if not enabled:
        return nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def save_dataset(ds: FlakeDataset, path: str | Path) -> Path:
    """Write one .npz (arrays plus JSON metadata); written to a temp file, then renamed."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"dataset path must end in .npz, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    extra = {}
    if ds.flake_r is not None and ds.scale_floor is not None:
        extra = {"flake_r": ds.flake_r, "scale_floor": ds.scale_floor}
    np.savez(
        tmp,
        x=ds.x,
        y=ds.y,
        chip_seed=ds.chip_seed,
        source=ds.source,
        preselection_class=ds.preselection_class,
        metadata=np.array(json.dumps(ds.metadata())),
        **extra,
    )
    tmp.replace(path)
    return path


def load_dataset(path: str | Path) -> FlakeDataset:
    """Read a dataset written by `save_dataset`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        missing = {"x", "y", "chip_seed", "source", "preselection_class", "metadata"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not a flake dataset: missing arrays {sorted(missing)}")
        meta = json.loads(str(z["metadata"]))
        has_r = "flake_r" in z.files and "scale_floor" in z.files
        ds = FlakeDataset(
            x=z["x"],
            y=z["y"],
            chip_seed=z["chip_seed"],
            source=z["source"],
            preselection_class=z["preselection_class"],
            spec=DatasetSpec.from_dict(meta["spec"]),
            seeds=[int(s) for s in meta["seeds"]],
            flake_r=z["flake_r"] if has_r else None,
            scale_floor=z["scale_floor"] if has_r else None,
        )
    if ds.flake_r is not None:
        again = labels_at_scale(ds.flake_r, np.ones(len(ds)), ds.spec.preselection.class_bins)
        bad = np.flatnonzero((again != ds.y).any(axis=1))
        if len(bad):
            raise ValueError(
                f"{path}: flake_r does not reproduce the labels of {len(bad)} crops "
                f"(first: crop {int(bad[0])}); the file is damaged or mixes two sets"
            )
    return ds


def seed_range(start: int, count: int) -> list[int]:
    """Chip seeds start, start+1, ..., start+count-1."""
    if count < 1:
        raise ValueError(f"chip count must be >= 1, got {count}")
    return list(range(start, start + count))


def main(argv: Sequence[str] | None = None) -> int:
    """Generate a dataset file: `python -m flakescan.training.flake_dataset --chips N ...`."""
    p = argparse.ArgumentParser(
        prog="flakescan.training.flake_dataset",
        description=__doc__.splitlines()[0],
        fromfile_prefix_chars="@",
    )
    p.add_argument("--chips", type=int, required=True, help="number of chips")
    p.add_argument("--seed", type=int, default=1, help="first chip seed (default 1)")
    p.add_argument("--random-tiles", type=int, default=DatasetSpec.random_tiles)
    p.add_argument("--flake-tiles", type=int, default=DatasetSpec.flake_tiles)
    p.add_argument("--background-crops", type=int, default=DatasetSpec.background_crops_per_tile)
    p.add_argument("--crop-um", type=float, default=DatasetSpec.crop_um)
    p.add_argument("--input-px", type=int, default=DatasetSpec.input_px)
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    args = p.parse_args(argv)
    if args.chips < 1:
        p.error(f"--chips must be >= 1, got {args.chips}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    try:
        spec = DatasetSpec(
            random_tiles=args.random_tiles,
            flake_tiles=args.flake_tiles,
            background_crops_per_tile=args.background_crops,
            crop_um=args.crop_um,
            input_px=args.input_px,
        )
    except ValueError as exc:
        p.error(str(exc))
    t0 = time.perf_counter()
    ds = generate_dataset(seed_range(args.seed, args.chips), spec, workers=args.workers)
    save_dataset(ds, args.out)
    print(f"{args.out}: {ds.counts()} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
