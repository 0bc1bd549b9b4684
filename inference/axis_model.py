"""The CNN crystal-axis regressor (AxisID), served: crop, normalise, predict, decode.

Everything that must be identical in training and in the daemon lives here, so the two
cannot drift apart: how an image becomes the network's input, how an angle becomes the
network's target, and how the eight square symmetries of an image move an angle.

Angle convention (the AxisID set's): degrees modulo `modulus` (30 for graphene and hBN,
whose edges repeat every 30 deg), measured from the image's +x axis (columns) towards +y
(rows). Stage and image axes agree in flakescan (row = stage y), so an image angle is a
stage angle.

The target is the unit vector (cos k theta, sin k theta), k = 360 / modulus: it is
continuous across the wrap-around at 0 = modulus, where a plain angle jumps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .backends import InferenceBackend
from .config import ModelsConfig
from .model_card import ModelCard
from .registry import open_model

__all__ = [
    "AXIS_TASK",
    "AxisModel",
    "AxisPrediction",
    "axis_crop",
    "axis_input",
    "circular_difference",
    "decode_angle",
    "dihedral_angle",
    "dihedral_view",
    "encode_angle",
]

AXIS_TASK = "axis-regressor"
REPRESENTATION = "RGB divided by its per-channel median, minus 1 (linear pixels)"


def axis_input(images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) or (H, W, 3) images, any scale, linear in light -> (n, 3, H, W) float32.

    Each image is divided by its own per-channel median (the wafer, in a crop around one
    crystal), which removes exposure, lamp colour and white balance; the result is the
    negative contrast, 0 on the wafer.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"axis_input expects (n, H, W, 3) RGB images, got shape {x.shape}")
    med = np.median(x.reshape(len(x), -1, 3), axis=1)  # (n, 3)
    floor = 1e-3 * np.maximum(x.reshape(len(x), -1).max(axis=1, keepdims=True), 1e-6)
    med = np.maximum(med, floor)
    out = x / med[:, None, None, :] - 1.0
    return np.ascontiguousarray(np.clip(out, -4.0, 4.0).transpose(0, 3, 1, 2))


def encode_angle(theta_deg: np.ndarray | float, modulus: float = 30.0) -> np.ndarray:
    """Angles (deg) -> (n, 2) targets (cos k theta, sin k theta), k = 360 / modulus."""
    phase = np.deg2rad(np.asarray(theta_deg, dtype=np.float64) * (360.0 / modulus))
    return np.stack([np.cos(phase), np.sin(phase)], axis=-1).astype(np.float32)


def decode_angle(vec: np.ndarray, modulus: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) network outputs -> (angles in [0, modulus), vector lengths)."""
    vec = np.asarray(vec, dtype=np.float64).reshape(-1, 2)
    phase = np.arctan2(vec[:, 1], vec[:, 0])
    theta = np.mod(np.rad2deg(phase) * modulus / 360.0, modulus)
    return theta, np.hypot(vec[:, 0], vec[:, 1])


def circular_difference(a: np.ndarray | float, b: np.ndarray | float, modulus: float = 30.0):
    """Signed a - b on the circle of circumference `modulus`, in [-modulus/2, modulus/2)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.mod(d + modulus / 2.0, modulus) - modulus / 2.0


def dihedral_view(x: np.ndarray, k: int, flip: bool, axes: tuple[int, int] = (-2, -1)):
    """One of the eight square symmetries of an image: flip the rows (if `flip`), then
    rotate by k quarter turns (numpy's rot90: counter-clockwise as displayed).

    `axes` are the (row, column) axes: (-2, -1) for network inputs (n, 3, H, W), (0, 1) for
    (H, W, 3) images.
    """
    if flip:
        x = np.flip(x, axis=axes[0])
    return np.ascontiguousarray(np.rot90(x, k, axes=axes))


def dihedral_angle(theta_deg, k: int, flip: bool, modulus: float = 30.0):
    """Where an axis at `theta_deg` lies in `dihedral_view(image, k, flip)`.

    Flipping the rows maps theta to -theta; each quarter turn counter-clockwise (as
    displayed, rows pointing down) maps theta to theta - 90.
    """
    t = -np.asarray(theta_deg, dtype=np.float64) if flip else np.asarray(theta_deg, np.float64)
    return np.mod(t - 90.0 * k, modulus)


def axis_crop(
    image: np.ndarray,
    bbox_px: tuple[float, float, float, float],
    size_px: int,
    scale: float = 1.5,
) -> np.ndarray | None:
    """A square window `scale` x the crystal's extent, centred on its box, resized to
    `size_px` as the AxisID training crops are (PIL box filter on 8-bit values).

    `bbox_px` is (row0, col0, row1, col1), as `Candidate.bbox_px`. Returns (size_px,
    size_px, 3) uint8, or None when the window does not fit in the frame.
    """
    h, w = image.shape[:2]
    r0, c0, r1, c1 = bbox_px
    side = round(max(c1 - c0, r1 - r0) * scale)
    side = max(side, 8)
    if side > min(h, w):
        return None
    left = round((c0 + c1) / 2 - side / 2)
    top = round((r0 + r1) / 2 - side / 2)
    left, top = int(np.clip(left, 0, w - side)), int(np.clip(top, 0, h - side))
    window = np.asarray(image[top : top + side, left : left + side, :3], dtype=np.float32)
    hi = float(window.max())
    if hi <= 0:
        return None
    # 8-bit codes as in the training crops; the scale is irrelevant after axis_input.
    codes = np.clip(np.rint(window * (255.0 / hi)), 0, 255)
    pil = Image.fromarray(codes.astype(np.uint8))
    return np.asarray(pil.resize((size_px, size_px), Image.Resampling.BOX))


@dataclass(frozen=True)
class AxisPrediction:
    angle_deg: float
    confidence: float  # mean resultant length over the symmetric views, 0..1


class AxisModel:
    """Runs an axis-regressor ONNX model on crystal crops, averaging its eight symmetric
    views (each mapped back to the original frame): the spread of the views is the
    confidence, and a model that has learnt the symmetry agrees with itself."""

    def __init__(
        self, backend: InferenceBackend, card: ModelCard, views: int = 8, batch_size: int = 32
    ) -> None:
        if card.task != AXIS_TASK:
            raise ValueError(f"model {card.name!r} is a {card.task!r} model, not {AXIS_TASK!r}")
        if card.output.modulus_deg is None:
            raise ValueError(f"model card {card.name!r} does not state its modulus_deg")
        if views not in (1, 2, 4, 8):
            raise ValueError(f"views must be 1, 2, 4 or 8, got {views}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.card = card
        self.views = views
        # Crops per backend call; each brings `views` images, so memory stays bounded
        # however many crops come in (2354 crops x 8 views once asked ONNX Runtime for 33 GB).
        self.batch_size = batch_size

    @classmethod
    def from_path(cls, path: Path, cfg: ModelsConfig | None = None, views: int = 8) -> AxisModel:
        """A model file (with its card) on the backend `cfg` names (default: the CPU)."""
        cfg = cfg or ModelsConfig(backend="onnxruntime")
        entry, backend = open_model(cfg, Path(path), AXIS_TASK)
        return cls(backend, entry.card, views)

    @classmethod
    def from_config(cls, cfg: ModelsConfig, engine_cache: Path | None = None) -> AxisModel | None:
        """The configured axis model, or None when the config names none."""
        if cfg.axis is None:
            return None
        entry, backend = open_model(cfg, cfg.axis, AXIS_TASK, engine_cache)
        return cls(backend, entry.card, cfg.axis_views, cfg.batch_size)

    @property
    def modulus(self) -> float:
        return float(self.card.output.modulus_deg or 30.0)

    @property
    def input_px(self) -> int:
        return int(self.card.input.shape[-1] or 0)

    def _symmetries(self) -> list[tuple[int, bool]]:
        all8 = [(k, f) for f in (False, True) for k in range(4)]
        return {1: all8[:1], 2: [all8[0], all8[4]], 4: all8[:4], 8: all8}[self.views]

    def predict(self, crops: np.ndarray) -> list[AxisPrediction]:
        """(n, s, s, 3) crops (from `axis_crop`) -> one prediction each, `batch_size` crops
        per backend call."""
        return [
            p
            for i in range(0, len(crops), self.batch_size)
            for p in self._predict_batch(crops[i : i + self.batch_size])
        ]

    def _predict_batch(self, crops: np.ndarray) -> list[AxisPrediction]:
        x = axis_input(crops)
        syms = self._symmetries()
        batch = np.concatenate([dihedral_view(x, k, f) for k, f in syms])
        out = np.asarray(self.backend.run(batch), dtype=np.float64).reshape(len(syms), len(x), 2)
        unit = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-9)
        # Back to the original frame: undo the view's angle map on the k*theta circle.
        m, kfac = self.modulus, 360.0 / self.modulus
        phases = np.arctan2(unit[..., 1], unit[..., 0])  # (views, n)
        back = []
        for (k, f), ph in zip(syms, phases, strict=True):
            theta_view = np.rad2deg(ph) / kfac
            theta = theta_view + 90.0 * k
            back.append(np.deg2rad((-theta if f else theta) * kfac))
        back = np.asarray(back)
        c, s = np.cos(back).mean(axis=0), np.sin(back).mean(axis=0)
        angles = np.mod(np.rad2deg(np.arctan2(s, c)) / kfac, m)
        return [
            AxisPrediction(float(a), float(r)) for a, r in zip(angles, np.hypot(c, s), strict=True)
        ]
