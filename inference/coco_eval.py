"""How flakescan's detector does on real, labelled micrographs in COCO format (e.g. UA_BN).

Simulated chips test the pipeline against the physics it was built from; only real images
show what a real camera, real debris and real annotators do to it. For every image of a COCO
file this module decodes the picture, **linearises** it (JPEGs are sRGB gamma-encoded, and the
contrast 1 - I / background only means what the physics says on linear intensities), runs the
preselection and optionally the classifier through `TilePipeline`, and matches the result to
the annotated polygons.

Matching (one rule for recall and precision, no one-to-one assignment, because a flake hunter
needs to be led to the spot, not to draw the outline):
- an annotation is *found* when one candidate's mask covers >= `min_cover` (30 %) of its
  polygon, or one candidate's centroid lies inside the polygon;
- a candidate is *on a flake* when >= `min_cover` of its mask lies inside the union of all
  annotated polygons (any category), or its centroid does.
Precision = candidates on a flake / all candidates. Datasets do not annotate everything (UA_BN
skips most debris and many small or partly visible flakes), so this precision is a lower bound.
Annotations without a polygon (COCO bbox only) are matched as their box.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from flakescan.hardware.frame import Frame
from flakescan.simulators.tone import srgb_decode

from .classifier import FlakeClassifier
from .config import PreselectionConfig
from .pipeline import TilePipeline
from .preselection import Candidate, preselect

__all__ = [
    "CategoryResult",
    "CocoAnnotation",
    "CocoDataset",
    "CocoImage",
    "CocoReport",
    "ImageEvaluation",
    "evaluate_coco",
    "evaluate_image",
    "load_coco",
    "load_linear_image",
    "match",
    "overlay",
]

# Linear frames are handed to the pipeline on the scale of an 8-bit camera (0-255), the range
# its thumbnails and background fit were written for.
_LINEAR_SCALE = 255.0


# --- COCO ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoAnnotation:
    """One labelled object; `polygons` are (k, 2) arrays of x, y in pixels."""

    id: int
    image_id: int
    category_id: int
    polygons: tuple[np.ndarray, ...]
    bbox: tuple[float, float, float, float]  # x, y, width, height
    area_px: float  # of the polygons (shoelace), or of the box
    from_bbox: bool  # no polygon in the file: the box stands in for it

    def mask(self, shape: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        """(row0, col0, bool mask) of the filled polygons, clipped to an image of `shape`."""
        h, w = shape
        x, y, bw, bh = self.bbox
        pts = np.concatenate(self.polygons) if self.polygons else np.zeros((0, 2))
        xs = np.r_[pts[:, 0], x, x + bw]
        ys = np.r_[pts[:, 1], y, y + bh]
        c0, r0 = max(int(np.floor(xs.min())), 0), max(int(np.floor(ys.min())), 0)
        c1, r1 = min(int(np.ceil(xs.max())) + 1, w), min(int(np.ceil(ys.max())) + 1, h)
        if r1 <= r0 or c1 <= c0:
            return 0, 0, np.zeros((0, 0), bool)
        canvas = Image.new("1", (c1 - c0, r1 - r0), 0)
        draw = ImageDraw.Draw(canvas)
        if self.from_bbox:
            draw.rectangle([x - c0, y - r0, x + bw - c0, y + bh - r0], fill=1)
        for poly in self.polygons:
            draw.polygon([(float(px - c0), float(py - r0)) for px, py in poly], fill=1)
        return r0, c0, np.asarray(canvas, dtype=bool)


@dataclass(frozen=True)
class CocoDataset:
    """A COCO file: images, categories worth reporting, annotations."""

    path: Path
    images: tuple[CocoImage, ...]
    categories: dict[int, str]  # leaf categories (not pure parents such as UA_BN's "material")
    annotations: tuple[CocoAnnotation, ...]

    def annotations_of(self, image_id: int) -> list[CocoAnnotation]:
        return [a for a in self.annotations if a.image_id == image_id]

    def image_path(self, image: CocoImage) -> Path:
        return self.path.parent / image.file_name


def _shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def load_coco(path: Path | str) -> CocoDataset:
    """Read a COCO detection/segmentation file; images are looked up next to it.

    Polygon segmentations only: RLE masks raise (UA_BN and Roboflow exports use polygons).
    A category that only serves as another's supercategory and labels nothing is dropped.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    images = tuple(
        CocoImage(int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"]))
        for im in data["images"]
    )
    anns: list[CocoAnnotation] = []
    for a in data["annotations"]:
        seg = a.get("segmentation") or []
        if isinstance(seg, dict):
            raise ValueError(f"annotation {a['id']}: RLE segmentation is not supported")
        polys = tuple(np.asarray(p, dtype=float).reshape(-1, 2) for p in seg if len(p) >= 6)
        x, y, w, h = (float(v) for v in a["bbox"])
        # Not a["area"]: Roboflow exports (UA_BN) store the box's area there.
        area = sum(_shoelace(p) for p in polys) if polys else w * h
        anns.append(
            CocoAnnotation(
                id=int(a["id"]),
                image_id=int(a["image_id"]),
                category_id=int(a["category_id"]),
                polygons=polys,
                bbox=(x, y, w, h),
                area_px=float(area),
                from_bbox=not polys,
            )
        )
    used = {a.category_id for a in anns}
    parents = {c.get("supercategory") for c in data.get("categories", [])}
    categories = {
        int(c["id"]): str(c["name"])
        for c in sorted(data.get("categories", []), key=lambda c: int(c["id"]))
        if int(c["id"]) in used or c["name"] not in parents
    }
    unknown = used - set(categories)
    if unknown:
        raise ValueError(f"{path}: annotations use undeclared category ids {sorted(unknown)}")
    return CocoDataset(path, images, categories, tuple(anns))


# --- pixels ----------------------------------------------------------------------------------


def load_linear_image(path: Path | str, srgb: bool = True) -> np.ndarray:
    """(h, w, 3) float32 linear intensities on a 0-255 scale.

    `srgb=False` takes the stored values as already linear (a scientific camera's TIFF);
    doing that to a JPEG shrinks every contrast (a graphene monolayer to about half).
    """
    with Image.open(path) as im:
        codes = np.asarray(im.convert("RGB"))
    if srgb:
        return srgb_decode(codes / np.float32(255.0)) * np.float32(_LINEAR_SCALE)
    return codes.astype(np.float32)


# --- matching --------------------------------------------------------------------------------


def _centroid_inside(cand: Candidate, r0: int, c0: int, mask: np.ndarray) -> bool:
    r = round(cand.centroid_px[0]) - r0
    c = round(cand.centroid_px[1]) - c0
    return 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and bool(mask[r, c])


def match(
    candidates: Sequence[Candidate],
    annotations: Sequence[CocoAnnotation],
    shape: tuple[int, int],
    min_cover: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """(found per annotation, on_flake per candidate) by the module's matching rule."""
    h, w = shape
    labels = np.zeros((h, w), np.int32)  # candidate index + 1; preselection regions are disjoint
    for k, cand in enumerate(candidates):
        r0, c0, r1, c1 = cand.bbox_px
        labels[r0:r1, c0:c1][cand.mask] = k + 1
    union = np.zeros((h, w), bool)
    found = np.zeros(len(annotations), bool)
    for i, ann in enumerate(annotations):
        r0, c0, m = ann.mask(shape)
        if m.size == 0 or not m.any():
            continue
        union[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] |= m
        inside = labels[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]][m]
        counts = np.bincount(inside, minlength=len(candidates) + 1)[1:]
        if counts.size and counts.max() >= min_cover * m.sum():
            found[i] = True
        else:
            found[i] = any(_centroid_inside(c, r0, c0, m) for c in candidates)
    on_flake = np.zeros(len(candidates), bool)
    for k, cand in enumerate(candidates):
        r0, c0, r1, c1 = cand.bbox_px
        share = union[r0:r1, c0:c1][cand.mask].mean() if cand.mask.any() else 0.0
        on_flake[k] = share >= min_cover or _centroid_inside(cand, 0, 0, union)
    return found, on_flake


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageEvaluation:
    """One image: what the detector proposed and which annotations it found."""

    image: CocoImage
    annotations: list[CocoAnnotation]
    candidates: list[Candidate]
    is_hit: np.ndarray | None  # per candidate, None without a classifier
    found_preselection: np.ndarray  # per annotation
    found_classifier: np.ndarray | None
    on_flake: np.ndarray  # per candidate
    skipped_reason: str | None


def evaluate_image(
    linear: np.ndarray,
    image: CocoImage,
    annotations: list[CocoAnnotation],
    pixel_size_um: float,
    preselection: PreselectionConfig,
    pipeline: TilePipeline | None = None,
    min_cover: float = 0.3,
) -> ImageEvaluation:
    """Preselect (and classify) one linear image and match it to its annotations."""
    shape = linear.shape[:2]
    pre = preselect(linear, pixel_size_um, preselection)
    cands = pre.candidates
    found, on_flake = match(cands, annotations, shape, min_cover)
    is_hit = found_cls = None
    if pipeline is not None:
        # The pipeline repeats this preselection (same image, no wafer colour after
        # start_chip), so its hits are candidates of ours: map them back by centroid.
        pipeline.start_chip()
        frame = Frame(linear, 0.0, 0.0, 0.0, pixel_size_um, 0.0, linear=True)
        result = pipeline.process(frame)
        index = {c.centroid_px: k for k, c in enumerate(cands)}
        is_hit = np.zeros(len(cands), bool)
        for hit in result.hits:
            if hit.centroid_px not in index:
                raise RuntimeError("a hit matches no candidate: pipeline and evaluation differ")
            is_hit[index[hit.centroid_px]] = True
        hits = [c for c, h in zip(cands, is_hit, strict=True) if h]
        found_cls, _ = match(hits, annotations, shape, min_cover)
    return ImageEvaluation(
        image, annotations, cands, is_hit, found, found_cls, on_flake, pre.skipped_reason
    )


@dataclass(frozen=True)
class CategoryResult:
    """Recall of one annotation category."""

    name: str
    n_annotations: int
    n_below_min_area: int  # smaller than min_area_um2 at this pixel size: unreachable alone
    found_preselection: int
    found_classifier: int | None

    @property
    def recall_preselection(self) -> float | None:
        return self.found_preselection / self.n_annotations if self.n_annotations else None

    @property
    def recall_classifier(self) -> float | None:
        if self.found_classifier is None or not self.n_annotations:
            return None
        return self.found_classifier / self.n_annotations


@dataclass(frozen=True)
class CocoReport:
    """Per-category recall and precision lower bounds of one COCO file."""

    coco_path: str
    n_images: int
    pixel_size_um: float
    srgb: bool
    min_cover: float
    preselection: dict[str, Any]
    categories: dict[str, CategoryResult]
    n_candidates: int
    n_candidates_on_flakes: int
    n_hits: int | None
    n_hits_on_flakes: int | None
    skipped_images: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_annotations(self) -> int:
        return sum(c.n_annotations for c in self.categories.values())

    @property
    def precision_preselection(self) -> float | None:
        """Lower bound: unannotated flakes and debris count against it."""
        return self.n_candidates_on_flakes / self.n_candidates if self.n_candidates else None

    @property
    def precision_classifier(self) -> float | None:
        if self.n_hits is None or self.n_hits_on_flakes is None or not self.n_hits:
            return None
        return self.n_hits_on_flakes / self.n_hits

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers, derived ratios included."""
        out = asdict(self)
        out["categories"] = {
            name: {
                **asdict(c),
                "recall_preselection": c.recall_preselection,
                "recall_classifier": c.recall_classifier,
            }
            for name, c in self.categories.items()
        }
        out["n_annotations"] = self.n_annotations
        out["precision_preselection_lower_bound"] = self.precision_preselection
        out["precision_classifier_lower_bound"] = self.precision_classifier
        return out

    def format_table(self) -> str:
        """A plain-text table for people."""

        def ratio(k: int | None, n: int | None) -> str:
            if k is None or not n:
                return "-"
            return f"{k / n:.2f} ({k}/{n})"

        lines = [
            f"{self.coco_path}: {self.n_images} images, {self.n_annotations} annotations, "
            f"{self.pixel_size_um:g} um/px, "
            f"{'sRGB linearised' if self.srgb else 'pixels taken as linear'}",
            f"{'category':<16}{'n':>5}{'< min area':>11}{'preselection recall':>22}"
            f"{'classifier recall':>20}",
        ]
        rows = list(self.categories.values())
        total = CategoryResult(
            "all",
            sum(c.n_annotations for c in rows),
            sum(c.n_below_min_area for c in rows),
            sum(c.found_preselection for c in rows),
            None if self.n_hits is None else sum(c.found_classifier or 0 for c in rows),
        )
        for c in [*rows, total]:
            lines.append(
                f"{c.name:<16}{c.n_annotations:>5}{c.n_below_min_area:>11}"
                f"{ratio(c.found_preselection, c.n_annotations):>22}"
                f"{ratio(c.found_classifier, c.n_annotations):>20}"
            )
        lines.append(
            "precision (lower bound: not everything is annotated): candidates "
            f"{ratio(self.n_candidates_on_flakes, self.n_candidates)}, hits "
            f"{ratio(self.n_hits_on_flakes, self.n_hits)}"
        )
        if self.skipped_images:
            lines.append(f"skipped (too little bare wafer): {', '.join(self.skipped_images)}")
        return "\n".join(lines)


def evaluate_coco(
    coco_path: Path | str,
    pixel_size_um: float,
    preselection: PreselectionConfig,
    classifier: FlakeClassifier | None = None,
    srgb: bool = True,
    *,
    threshold: float = 0.5,
    min_cover: float = 0.3,
) -> CocoReport:
    """Run preselection (and the classifier, if given) on every image of a COCO file.

    `pixel_size_um` matters through the minimum flake area and the classifier's crop of
    fixed physical size; datasets that do not state it need a sensitivity sweep.
    """
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    t0 = time.perf_counter()
    data = load_coco(coco_path)
    pipeline = TilePipeline(preselection, classifier, threshold) if classifier is not None else None
    min_px = preselection.min_area_um2 / pixel_size_um**2
    counts = {cid: [0, 0, 0, 0] for cid in data.categories}  # n, small, pre, cls
    n_cand = n_cand_ok = n_hits = n_hits_ok = 0
    skipped: list[str] = []
    for image in data.images:
        linear = load_linear_image(data.image_path(image), srgb)
        anns = data.annotations_of(image.id)
        ev = evaluate_image(linear, image, anns, pixel_size_um, preselection, pipeline, min_cover)
        if ev.skipped_reason:
            skipped.append(image.file_name)
        n_cand += len(ev.candidates)
        n_cand_ok += int(ev.on_flake.sum())
        if ev.is_hit is not None:
            n_hits += int(ev.is_hit.sum())
            n_hits_ok += int((ev.on_flake & ev.is_hit).sum())
        for i, ann in enumerate(anns):
            row = counts[ann.category_id]
            row[0] += 1
            row[1] += int(ann.area_px < min_px)
            row[2] += int(ev.found_preselection[i])
            if ev.found_classifier is not None:
                row[3] += int(ev.found_classifier[i])
    categories: dict[str, CategoryResult] = {}
    for cid, name in data.categories.items():
        n, small, pre, cls = counts[cid]
        categories[name] = CategoryResult(name, n, small, pre, cls if pipeline else None)
    return CocoReport(
        coco_path=str(coco_path),
        n_images=len(data.images),
        pixel_size_um=pixel_size_um,
        srgb=srgb,
        min_cover=min_cover,
        preselection=preselection.model_dump(),
        categories=categories,
        n_candidates=n_cand,
        n_candidates_on_flakes=n_cand_ok,
        n_hits=n_hits if pipeline else None,
        n_hits_on_flakes=n_hits_ok if pipeline else None,
        skipped_images=skipped,
        seconds=time.perf_counter() - t0,
    )


# --- pictures --------------------------------------------------------------------------------

_CATEGORY_COLOURS = [(255, 220, 0), (255, 60, 60), (255, 255, 255), (0, 230, 255), (255, 140, 0)]


def overlay(encoded: np.ndarray, ev: ImageEvaluation, categories: dict[int, str]) -> Image.Image:
    """The image with annotations and candidates drawn, for people to check the numbers.

    Annotations: outlines in one colour per category (yellow, red, white, ... in category-id
    order), 3 px if found by preselection, 1 px if missed. Candidates: tinted green if on an
    annotated flake, magenta if not. Hits (with a classifier): a white box.
    """
    img = Image.fromarray(np.asarray(encoded, np.uint8)).convert("RGB")
    tint = np.asarray(img).copy()
    for k, cand in enumerate(ev.candidates):
        r0, c0, r1, c1 = cand.bbox_px
        colour = np.array((0, 255, 0) if ev.on_flake[k] else (255, 0, 255), np.float32)
        view = tint[r0:r1, c0:c1]
        view[cand.mask] = (0.45 * view[cand.mask] + 0.55 * colour).astype(np.uint8)
    img = Image.fromarray(tint)
    draw = ImageDraw.Draw(img)
    order = list(categories)
    for i, ann in enumerate(ev.annotations):
        colour = _CATEGORY_COLOURS[order.index(ann.category_id) % len(_CATEGORY_COLOURS)]
        width = 3 if ev.found_preselection[i] else 1
        shapes = ann.polygons or (
            np.array(
                [
                    (ann.bbox[0], ann.bbox[1]),
                    (ann.bbox[0] + ann.bbox[2], ann.bbox[1]),
                    (ann.bbox[0] + ann.bbox[2], ann.bbox[1] + ann.bbox[3]),
                    (ann.bbox[0], ann.bbox[1] + ann.bbox[3]),
                ]
            ),
        )
        for poly in shapes:
            pts = [(float(x), float(y)) for x, y in poly]
            draw.line([*pts, pts[0]], fill=colour, width=width)
    if ev.is_hit is not None:
        for cand, hit in zip(ev.candidates, ev.is_hit, strict=True):
            if hit:
                r0, c0, r1, c1 = cand.bbox_px
                draw.rectangle([c0 - 3, r0 - 3, c1 + 2, r1 + 2], outline=(255, 255, 255))
    return img
