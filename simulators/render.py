"""Image formation: what the camera of a reflected-light microscope records of the chip.

The field of view is rasterised from the chip's outlines into linear reflectances (thin-film
optics per object), blurred by the objective's diffraction limit and by defocus, lit by an
illumination that falls off towards the corners, veiled by flare, converted to electrons with
shot and read noise, and quantised. Pixels stay *linear* (no gamma), as contrast needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .chip import Chip, ChipObject
from .config import ImagingSpec
from .optics import MATERIALS, POLYMER, StackOptics

__all__ = ["FieldRenderer"]

# Reflectance of what lies off the chip (dark tape / holder), R, G, B.
_OFF_CHIP = np.array([0.05, 0.05, 0.06])
_WAVELENGTH_UM = 0.55


@dataclass
class FieldRenderer:
    """Renders the chip as seen at a stage position by a colour camera."""

    chip: Chip
    imaging: ImagingSpec
    pixel_size_um: float
    numerical_aperture: float
    seed: int = 0
    _optics: StackOptics = field(init=False, repr=False)
    _polymer: StackOptics = field(init=False, repr=False)
    _flat: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spec = self.chip.spec
        self._optics = StackOptics(MATERIALS[spec.material], spec.oxide_nm, self.numerical_aperture)
        self._polymer = StackOptics(POLYMER, spec.oxide_nm, self.numerical_aperture)
        h, w = self.imaging.height_px, self.imaging.width_px
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rho2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (
            ((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2
        )
        self._flat = (1.0 - self.imaging.vignetting * rho2).astype(np.float32)

    @property
    def substrate_reflectance(self) -> np.ndarray:
        return self._optics.layers_reflectance(0)

    def reflectance_of(self, obj: ChipObject) -> np.ndarray:
        """Linear R, G, B reflectance of an object on this chip."""
        if obj.kind in ("flake", "bulk"):
            return self._optics.channel_reflectance(obj.thickness_nm)
        if obj.kind == "residue":
            return self._polymer.channel_reflectance(obj.thickness_nm)
        return self.substrate_reflectance * (obj.dust_albedo or 0.5)

    def blur_sigma_px(self, defocus_um: float) -> float:
        """Gaussian PSF width: diffraction limit plus geometric defocus blur."""
        na = self.numerical_aperture
        sigma_diff = 0.21 * _WAVELENGTH_UM / na
        sigma_defocus = 0.5 * abs(defocus_um) * np.tan(np.arcsin(min(na, 0.99)))
        return float(np.hypot(sigma_diff, sigma_defocus) / self.pixel_size_um)

    def reflectance_map(self, x_um: float, y_um: float) -> np.ndarray:
        """(h, w, 3) float32 linear reflectance of the field centred at (x_um, y_um)."""
        h, w = self.imaging.height_px, self.imaging.width_px
        px = self.pixel_size_um
        x0, y0 = x_um - w * px / 2, y_um - h * px / 2
        x1, y1 = x0 + w * px, y0 + h * px
        objs = self.chip.query(x0, y0, x1, y1)
        labels = Image.new("I", (w, h), 1)  # 1 = off chip
        draw = ImageDraw.Draw(labels)
        spec = self.chip.spec

        def to_px(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
            cols = ((xs - x0) / px - 0.5).tolist()
            rows = ((ys - y0) / px - 0.5).tolist()
            return list(zip(cols, rows, strict=True))

        chip_corners = to_px(np.array([0, spec.width_um]), np.array([0, spec.height_um]))
        draw.rectangle([chip_corners[0], chip_corners[1]], fill=0)
        lut = [self.substrate_reflectance, _OFF_CHIP]
        for obj in objs:
            pts = np.asarray(obj.outline_um)
            draw.polygon(to_px(pts[:, 0], pts[:, 1]), fill=len(lut))
            lut.append(self.reflectance_of(obj))
        table = np.asarray(lut, dtype=np.float32)
        return table[np.asarray(labels)]

    def render(
        self,
        x_um: float,
        y_um: float,
        *,
        defocus_um: float = 0.0,
        exposure_ms: float | None = None,
        frame_index: int = 0,
    ) -> np.ndarray:
        """(h, w, 3) uint8 linear RGB frame centred at the stage position (x_um, y_um)."""
        im = self.imaging
        refl = self.reflectance_map(x_um, y_um)
        sigma = self.blur_sigma_px(defocus_um)
        refl = ndimage.gaussian_filter(refl, sigma=(sigma, sigma, 0), mode="nearest")
        veil = im.flare * self.substrate_reflectance.astype(np.float32)
        exposure = im.exposure_ms if exposure_ms is None else exposure_ms
        gains = np.asarray(im.white_balance, dtype=np.float32)
        electrons = (refl + veil) * self._flat[..., None]
        electrons *= gains * np.float32(im.white_electrons_20ms * exposure / 20.0)
        rng = np.random.default_rng([self.seed, frame_index])
        noise = rng.standard_normal(electrons.shape, dtype=np.float32)
        electrons += noise * np.sqrt(electrons + im.read_noise_e**2)
        np.clip(electrons, 0, im.full_well_e, out=electrons)
        adu_per_e = (2**im.bit_depth - 1) / im.full_well_e
        return np.rint(electrons * adu_per_e).astype(np.uint8)
