"""A frame as it leaves the hardware layer: pixels plus where, how and when they were taken."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flakescan.simulators.tone import srgb_decode

__all__ = ["Frame"]


@dataclass(frozen=True)
class Frame:
    """One camera image with its stage position, pixel size and timestamp.

    Pixel (row r, column c) images the stage point
    (x_um + (c - (w-1)/2) * pixel_size_um, y_um + (r - (h-1)/2) * pixel_size_um):
    columns run along +x and rows along +y of the stage.
    """

    image: np.ndarray  # (h, w, 3) RGB or (h, w) mono
    x_um: float
    y_um: float
    z_um: float
    pixel_size_um: float
    timestamp: float  # seconds since the epoch
    linear: bool = True  # whether pixel values are proportional to light (no gamma)
    index: int = 0  # position in the scan
    metadata: dict = field(default_factory=dict)

    def linear_image(self) -> np.ndarray:
        """Pixel values proportional to light, as contrast needs them.

        Frames a camera declares non-linear are decoded with the sRGB curve (what consumer
        cameras and JPEG files apply); the scale of the stored values is kept.
        """
        if self.linear:
            return self.image
        top = float(np.iinfo(self.image.dtype).max) if self.image.dtype.kind in "ui" else 1.0
        return srgb_decode(self.image / np.float32(top)) * np.float32(top)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    @property
    def fov_um(self) -> tuple[float, float]:
        h, w = self.shape
        return (w * self.pixel_size_um, h * self.pixel_size_um)

    def pixel_to_stage(self, row: float, col: float) -> tuple[float, float]:
        h, w = self.shape
        return (
            self.x_um + (col - (w - 1) / 2) * self.pixel_size_um,
            self.y_um + (row - (h - 1) / 2) * self.pixel_size_um,
        )

    def stage_to_pixel(self, x_um: float, y_um: float) -> tuple[float, float]:
        """(row, col) of a stage point; may lie outside the frame."""
        h, w = self.shape
        return (
            (y_um - self.y_um) / self.pixel_size_um + (h - 1) / 2,
            (x_um - self.x_um) / self.pixel_size_um + (w - 1) / 2,
        )
