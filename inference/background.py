"""The wafer background of a tile: its colour and how the illumination falls off across it.

Contrast is measured against the bare wafer next to a flake, so the background must follow
the illumination fall-off (vignetting) of the objective, not be one number per tile. A
quadratic surface per channel is fitted to the pixels that look like bare wafer, found by
iterating from the tile's median colour; it is cheap on a block-averaged copy of the tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Background", "estimate_background"]

_BLOCK = 8


@dataclass(frozen=True)
class Background:
    """Fitted background: per-channel quadratic surfaces in normalised tile coordinates."""

    coefficients: np.ndarray  # (channels, 6): 1, u, v, u^2, uv, v^2
    shape: tuple[int, int]
    colour: np.ndarray  # background at the tile centre, per channel
    fraction: float  # share of the tile that looked like bare wafer

    def evaluate(
        self, rows: np.ndarray | slice = slice(None), cols: np.ndarray | slice = slice(None)
    ) -> np.ndarray:
        """Background values (h', w', channels) on a grid of rows x cols of the tile."""
        h, w = self.shape
        r = np.arange(h)[rows] if isinstance(rows, slice) else np.asarray(rows)
        c = np.arange(w)[cols] if isinstance(cols, slice) else np.asarray(cols)
        v = (2 * r / max(h - 1, 1) - 1).astype(np.float32)[:, None]
        u = (2 * c / max(w - 1, 1) - 1).astype(np.float32)[None, :]
        k = self.coefficients.astype(np.float32)
        out = (
            k[:, 0, None, None]
            + k[:, 1, None, None] * u
            + k[:, 2, None, None] * v
            + k[:, 3, None, None] * u * u
            + k[:, 4, None, None] * u * v
            + k[:, 5, None, None] * v * v
        )
        return np.moveaxis(out, 0, -1)


def _block_mean(image: np.ndarray, block: int) -> np.ndarray:
    h, w, c = image.shape
    hb, wb = h // block, w // block
    trimmed = image[: hb * block, : wb * block].astype(np.float32)
    return trimmed.reshape(hb, block, wb, block, c).mean(axis=(1, 3))


def estimate_background(
    image: np.ndarray,
    tolerance: float = 0.04,
    iterations: int = 4,
    reference: np.ndarray | None = None,
) -> Background:
    """Fit the bare-wafer background of a (h, w, c) linear image.

    Pixels within `tolerance` (relative) of the current model in every channel count as
    wafer; flakes, dirt and off-chip areas are excluded as the fit converges. The fit starts
    from `reference`, the wafer colour seen on earlier tiles, when given: at the chip edge,
    where tape or holder may fill half the tile, the tile's own median is no guide.
    """
    if image.ndim == 2:
        image = image[..., None]
    h, w, _ = image.shape
    small = _block_mean(image, _BLOCK)
    hb, wb, ch = small.shape
    rows = np.arange(hb) * _BLOCK + (_BLOCK - 1) / 2
    cols = np.arange(wb) * _BLOCK + (_BLOCK - 1) / 2
    v = np.repeat(2 * rows / max(h - 1, 1) - 1, wb)
    u = np.tile(2 * cols / max(w - 1, 1) - 1, hb)
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    values = small.reshape(-1, ch)
    if reference is None:
        start = np.median(values, axis=0)
    else:
        # No fallback to the median: a tile with nothing like the wafer (off the chip, a
        # huge crystal) must report that, not fit whatever fills it.
        start = np.asarray(reference, float)
        if start.shape != (ch,):
            raise ValueError(f"reference colour has {start.shape} values, the image {ch} channels")
    model = np.broadcast_to(start, values.shape)
    for _ in range(iterations):
        rel = np.abs(values - model) / np.maximum(model, 1e-6)
        mask = (rel < tolerance).all(axis=1)
        if mask.sum() < 12:
            break
        coef = np.linalg.lstsq(design[mask], values[mask], rcond=None)[0].T
        model = design @ coef.T
    if mask.sum() < 12:
        coef = np.zeros((ch, 6))
        coef[:, 0] = start
    centre = coef[:, 0]
    return Background(coefficients=coef, shape=(h, w), colour=centre, fraction=float(mask.mean()))
