"""Tile processing: preselection -> CNN on candidate crops -> axis angle -> hits.

No threads, sockets or database here: the daemon runs it in its processing worker and logs
what it returns. Its one piece of state is the wafer colour of the chip being scanned,
learnt from tiles that are mostly bare wafer and used to anchor the background fit of tiles
that are not (the chip edge); `start_chip()` forgets it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flakescan.hardware.frame import Frame
from flakescan.simulators.tone import srgb_encode

from .axis import estimate_axis
from .axis_model import AxisModel, AxisPrediction, axis_crop
from .classifier import FlakeClassifier
from .config import ModelsConfig, PreselectionConfig
from .crops import classifier_crop
from .preselection import Candidate, preselect
from .shape import Outline, ShapeMetrics, measure_shape, outline_from_mask

__all__ = ["CLEAN_TILE_FRACTION", "Hit", "TilePipeline", "TileResult"]

_AXIS_MARGIN_PX = 6
_THUMB_MARGIN_PX = 24
# A tile this much bare wafer teaches the pipeline the chip's wafer colour (training's data
# generator follows the same rule, so the network sees tiles as the daemon does).
CLEAN_TILE_FRACTION = 0.6


@dataclass(frozen=True)
class Hit:
    """A candidate the classifier accepted, in stage coordinates."""

    x_um: float
    y_um: float
    bbox_um: tuple[float, float, float, float]  # x0, y0, x1, y1
    area_um2: float
    flake_class: int  # 1-3, the classifier's most likely contrast class
    scores: tuple[float, ...]  # per model class, the last being "any"
    contrast: tuple[float, ...]  # median contrast per channel (R, G, B)
    contrast_class: int  # bin of the measured R contrast (0: outside the bins)
    axis_angle_deg: float | None
    axis_confidence: float | None
    touches_border: bool
    centroid_px: tuple[float, float]
    thumbnail: np.ndarray = field(repr=False)  # sRGB uint8 crop, for people to look at
    # Both axis measurements are kept; axis_angle_deg is the primary one (the pipeline's
    # `axis_primary`) where it exists, else the other ("cnn" / "edges" / None). The CNN
    # reads only crystals it sees whole.
    axis_source: str | None = None
    axis_cnn_deg: float | None = None
    axis_cnn_confidence: float | None = None
    axis_edges_deg: float | None = None
    axis_edges_confidence: float | None = None
    # The outline in stage um (simplified to ~1 px) and the shape figures read off it.
    outline_um: Outline = ()
    shape: ShapeMetrics | None = None


AXIS_FIELDS = (
    "axis_angle_deg",
    "axis_confidence",
    "axis_source",
    "axis_cnn_deg",
    "axis_cnn_confidence",
    "axis_edges_deg",
    "axis_edges_confidence",
)


@dataclass(frozen=True)
class TileResult:
    index: int
    x_um: float
    y_um: float
    n_candidates: int
    hits: list[Hit]
    background: tuple[float, ...]
    skipped_reason: str | None
    timings_ms: dict[str, float]
    background_fraction: float = 0.0  # of the tile that is bare wafer


def _srgb_thumbnail(image: np.ndarray, bbox: tuple[int, int, int, int], white: float) -> np.ndarray:
    """Crop round a bbox, encoded for display (linear -> sRGB, `white` -> 255)."""
    h, w = image.shape[:2]
    r0, c0, r1, c1 = bbox
    m = _THUMB_MARGIN_PX
    crop = image[max(r0 - m, 0) : min(r1 + m, h), max(c0 - m, 0) : min(c1 + m, w)]
    return (255 * srgb_encode(crop.astype(np.float32) / white)).astype(np.uint8)


class TilePipeline:
    """Turns one frame into its hits."""

    def __init__(
        self,
        preselection: PreselectionConfig,
        classifier: FlakeClassifier,
        threshold: float = 0.5,
        axis_modulus_deg: float = 30.0,
        axis_model: AxisModel | None = None,
        axis_primary: str = "cnn",
    ) -> None:
        if axis_primary not in ("edges", "cnn"):
            raise ValueError(f"axis_primary must be 'edges' or 'cnn', got {axis_primary!r}")
        if axis_model is not None and axis_model.modulus != axis_modulus_deg:
            raise ValueError(
                f"axis model {axis_model.card.name!r} has modulus {axis_model.modulus} deg, "
                f"the pipeline {axis_modulus_deg} deg"
            )
        self.preselection = preselection
        self.classifier = classifier
        self.threshold = threshold
        self.axis_modulus_deg = axis_modulus_deg
        self.axis_model = axis_model
        self.axis_primary = axis_primary
        self.wafer_colour: np.ndarray | None = None

    @classmethod
    def for_models(
        cls,
        preselection: PreselectionConfig,
        models: ModelsConfig,
        classifier: FlakeClassifier,
        axis_model: AxisModel | None,
    ) -> TilePipeline:
        """The pipeline the daemon runs: threshold and axis reading as `[models]` says."""
        return cls(
            preselection,
            classifier,
            models.threshold,
            axis_modulus_deg=axis_model.modulus if axis_model else 30.0,
            axis_model=axis_model,
            axis_primary=models.axis_primary,
        )

    def start_chip(self) -> None:
        """Forget the wafer colour: the next tiles may show another chip."""
        self.wafer_colour = None

    def learn_wafer(self, colour: Sequence[float], fraction: float) -> None:
        """A tile's background becomes the chip's wafer colour if the tile is mostly bare
        wafer. A resumed scan replays its finished tiles' backgrounds through this, so it
        goes on with the reference the interrupted scan had."""
        if fraction >= CLEAN_TILE_FRACTION:
            self.wafer_colour = np.asarray(colour, float)

    def _axis(self, contrast: np.ndarray, cand: Candidate) -> tuple[float | None, float | None]:
        h, w = contrast.shape[:2]
        r0, c0, r1, c1 = cand.bbox_px
        m = _AXIS_MARGIN_PX
        R0, C0, R1, C1 = max(r0 - m, 0), max(c0 - m, 0), min(r1 + m, h), min(c1 + m, w)
        region = np.zeros((R1 - R0, C1 - C0), bool)
        region[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] = cand.mask
        # Project the contrast on the flake's own colour: works for any material's signs.
        direction = np.asarray(cand.contrast, np.float32)
        norm = float(np.linalg.norm(direction))
        if norm == 0:
            return None, None
        signal = contrast[R0:R1, C0:C1] @ (direction / norm)
        est = estimate_axis(signal, region, modulus_deg=self.axis_modulus_deg)
        return (est.angle_deg, est.confidence) if est else (None, None)

    def _cnn_axes(self, image: np.ndarray, cands: list[Candidate]) -> list[AxisPrediction | None]:
        """The axis CNN on every hit it can see whole (one batch); None for the others:
        no model, a crystal cut by the frame edge, or one too large for a centred window."""
        found: list[AxisPrediction | None] = [None] * len(cands)
        if self.axis_model is None or not cands:
            return found
        crops, where = [], []
        for i, cand in enumerate(cands):
            if cand.touches_border:
                continue
            crop = axis_crop(image, cand.bbox_px, self.axis_model.input_px)
            if crop is not None:
                crops.append(crop)
                where.append(i)
        if crops:
            for i, pred in zip(where, self.axis_model.predict(np.stack(crops)), strict=True):
                found[i] = pred
        return found

    def process(self, frame: Frame) -> TileResult:
        t0 = time.perf_counter()
        image = frame.linear_image()
        pre = preselect(image, frame.pixel_size_um, self.preselection, self.wafer_colour)
        self.learn_wafer(pre.background.colour, pre.background.fraction)
        t1 = time.perf_counter()
        cands = pre.candidates
        scores = np.zeros((0, len(self.classifier.classes)), np.float32)
        if cands and pre.contrast is not None:
            crops = np.stack(
                [
                    classifier_crop(
                        pre.contrast,
                        c.centroid_px,
                        frame.pixel_size_um,
                        self.classifier.crop_um,
                        self.classifier.input_px,
                    )
                    for c in cands
                ]
            )
            scores = self.classifier.scores(crops)
        t2 = time.perf_counter()
        hits: list[Hit] = []
        px = frame.pixel_size_um
        # One white point per tile for the thumbnails (the 99.5th percentile: not a speck).
        white = max(float(np.percentile(image[::4, ::4], 99.5)), 1.0) if cands else 1.0
        accepted = [(c, s) for c, s in zip(cands, scores, strict=True) if s[-1] >= self.threshold]
        cnn_axes = self._cnn_axes(image, [c for c, _ in accepted])
        for (cand, s), cnn in zip(accepted, cnn_axes, strict=True):
            assert pre.contrast is not None
            edges_angle, edges_conf = self._axis(pre.contrast, cand)
            readings = {
                "cnn": (cnn.angle_deg, cnn.confidence) if cnn is not None else None,
                "edges": (edges_angle, edges_conf) if edges_angle is not None else None,
            }
            other = "edges" if self.axis_primary == "cnn" else "cnn"
            source = next((k for k in (self.axis_primary, other) if readings[k]), None)
            angle, conf = readings[source] if source else (None, None)
            r0, c0, r1, c1 = cand.bbox_px
            x0, y0 = frame.pixel_to_stage(r0 - 0.5, c0 - 0.5)
            x, y = frame.pixel_to_stage(*cand.centroid_px)
            outline = outline_from_mask(
                cand.mask, lambda r, c, r0=r0, c0=c0: frame.pixel_to_stage(r + r0, c + c0)
            )
            hits.append(
                Hit(
                    x_um=x,
                    y_um=y,
                    bbox_um=(x0, y0, x0 + (c1 - c0) * px, y0 + (r1 - r0) * px),
                    area_um2=cand.area_um2,
                    flake_class=1 + int(np.argmax(s[:-1])),
                    scores=tuple(float(v) for v in s),
                    contrast=cand.contrast,
                    contrast_class=cand.contrast_class,
                    axis_angle_deg=angle,
                    axis_confidence=conf,
                    touches_border=cand.touches_border,
                    centroid_px=cand.centroid_px,
                    thumbnail=_srgb_thumbnail(image, cand.bbox_px, white),
                    axis_source=source,
                    axis_cnn_deg=cnn.angle_deg if cnn else None,
                    axis_cnn_confidence=cnn.confidence if cnn else None,
                    axis_edges_deg=edges_angle,
                    axis_edges_confidence=edges_conf,
                    outline_um=outline,
                    shape=measure_shape(outline, min_step_um=px / 2),
                )
            )
        t3 = time.perf_counter()
        return TileResult(
            index=frame.index,
            x_um=frame.x_um,
            y_um=frame.y_um,
            n_candidates=len(cands),
            hits=hits,
            background=tuple(float(v) for v in pre.background.colour),
            skipped_reason=pre.skipped_reason,
            background_fraction=float(pre.background.fraction),
            timings_ms={
                "preselection": 1000 * (t1 - t0),
                "classifier": 1000 * (t2 - t1),
                "axis": 1000 * (t3 - t2),
                "total": 1000 * (t3 - t0),
            },
        )
