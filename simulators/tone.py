"""Tone curves of cameras: how recorded values relate to light.

Contrast is a ratio of intensities, so it needs values proportional to light. Scientific
cameras deliver that; consumer cameras and JPEG files apply the sRGB curve (IEC 61966-2-1).
The simulated camera encodes with it, and whoever reads such frames decodes with it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["srgb_decode", "srgb_encode"]


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """The sRGB curve on linear values in [0, 1] (clipped); float32 out."""
    x = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(
        np.float32
    )


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """The inverse sRGB curve on encoded values in [0, 1]: linear float32 out."""
    x = np.clip(np.asarray(encoded, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)
