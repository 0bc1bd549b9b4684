"""A cheap check that a camera frame is an image and not what a faulty transfer leaves.

Cameras fail quietly as well as loudly: a dropped frame comes back black (or one value
throughout), a partial transfer fills the first rows and leaves the rest of the buffer
zero, a blown exposure is white. None of these raise in the driver, and each would reach
the pipeline as a tile with nothing on it, a tile silently missing from the catalogue. The
check runs on every snap, before a frame leaves the hardware layer; it costs a few ms on a
megapixel frame (strided views, no copies of the whole image).
"""

from __future__ import annotations

import numpy as np

__all__ = ["frame_problem"]

# Trailing rows that are exactly zero in every pixel: a transfer that stopped. Real frames
# have read noise and an offset; a run of this many all-zero rows does not happen.
_TRUNCATED_ROWS = 8
_SATURATED_SHARE = 0.98


def frame_problem(
    image: object, shape: tuple[int, int] | None = None, dtype: np.dtype | None = None
) -> str | None:
    """What is wrong with a frame, or None if it looks like an image.

    `shape` (height, width) and `dtype` are what the camera says it delivers (None: not
    checked); colour frames carry their channels after those.
    """
    if not isinstance(image, np.ndarray):
        return f"not an image array but {type(image).__name__}"
    if shape is not None and tuple(image.shape[:2]) != tuple(shape):
        return f"shape {tuple(image.shape)}, expected (height, width) = {tuple(shape)}"
    if dtype is not None and image.dtype != np.dtype(dtype):
        return f"dtype {image.dtype}, expected {np.dtype(dtype)}"
    if image.size == 0 or image.ndim < 2:
        return f"no pixels (shape {tuple(image.shape)})"
    if image.dtype.kind == "f" and not np.isfinite(image[::7, ::7]).all():
        return "non-finite pixel values"
    lo, hi = image.min(), image.max()
    top = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else None
    if lo == hi:
        if lo == top:
            return f"every pixel saturated at {top} (a blown exposure)"
        return f"every pixel is {lo} (a dropped or blank frame)"
    if top is not None:
        sample = image[::4, ::4]
        share = float(np.count_nonzero(sample == top)) / sample.size
        if share >= _SATURATED_SHARE:
            return f"{share:.0%} of pixels saturated at {top}"
    rows = image.reshape(image.shape[0], -1)
    tail = rows[-_TRUNCATED_ROWS:]
    if rows.shape[0] > 2 * _TRUNCATED_ROWS and not tail.any():
        nonzero = np.flatnonzero(rows.any(axis=1))
        last = int(nonzero[-1]) + 1 if nonzero.size else 0
        return f"rows {last} to {rows.shape[0] - 1} are all zero (a partial transfer)"
    return None
