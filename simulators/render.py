"""Image formation: what the camera of a reflected-light microscope records of the chip.

The field of view is rasterised from the chip's outlines into linear reflectances (thin-film
optics per object, the holder or tape beyond the chip edge), blurred by the objective's
diffraction limit and by defocus, lit by an illumination with fall-off, an off-axis hot spot
and a gradient (the flat field, which `flat_field()` returns for checking a measured one),
veiled by flare, converted to electrons with shot and read noise, and quantised. By default
pixels stay *linear*; `encoding = "srgb"` gives what a consumer camera or a JPEG delivers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .chip import Chip, ChipObject
from .config import ImagingSpec
from .optics import MATERIALS, POLYMER, StackOptics
from .tone import srgb_encode

__all__ = ["FieldRenderer"]

# Reflectance beyond the chip edge, R, G, B: anodised holder, or the back of blue tape.
_SURROUND = {"holder": np.array([0.05, 0.05, 0.06]), "tape": np.array([0.10, 0.16, 0.24])}
_WAVELENGTH_UM = 0.55
_WAFER, _OUTSIDE = 0, 1


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
    _waves: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spec = self.chip.spec
        na = self.numerical_aperture
        self._optics = StackOptics(MATERIALS[spec.material], spec.oxide_nm, na)
        self._polymer = StackOptics(POLYMER, spec.oxide_nm, na)
        self._flat = self._illumination()
        # Texture of what lies beyond the chip: a few plane waves in stage coordinates.
        rng = np.random.default_rng([self.chip.seed, 7])
        k = 2 * np.pi / rng.uniform(15, 150, size=6)
        ang = rng.uniform(0, np.pi, size=6)
        self._waves = np.stack([k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 6.3, 6)], 1)

    def _illumination(self) -> np.ndarray:
        im = self.imaging
        h, w = im.height_px, im.width_px
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        u = (xx - (w - 1) / 2) / ((w - 1) / 2)
        v = (yy - (h - 1) / 2) / ((h - 1) / 2)
        ox, oy = im.illumination_offset
        rho2 = ((u - ox) ** 2 + (v - oy) ** 2) / 2.0
        flat = (1.0 - im.vignetting * rho2) * (1.0 + im.illumination_gradient * u)
        return (flat / flat.max()).astype(np.float32)

    def flat_field(self) -> np.ndarray:
        """The true illumination profile (h, w), brightest pixel 1: what a flat-field
        calibration should measure."""
        return self._flat.copy()

    @property
    def substrate_reflectance(self) -> np.ndarray:
        return self._optics.layers_reflectance(0)

    def reflectance_of(self, obj: ChipObject) -> np.ndarray:
        """Linear R, G, B reflectance of an object on this chip."""
        if obj.kind in ("flake", "bulk"):
            return self._optics.channel_reflectance(obj.thickness_nm)
        if obj.kind in ("residue", "bubble"):
            return self._polymer.channel_reflectance(obj.thickness_nm)
        if obj.kind == "scratch":  # oxide scraped thinner: the wafer's colour changes
            return StackOptics(
                POLYMER, obj.thickness_nm, self.numerical_aperture
            ).layers_reflectance(0)
        return self.substrate_reflectance * (obj.dust_albedo or 0.5)

    def edge_darkening(self, obj: ChipObject) -> float:
        """How much of the light an object's edge loses to scattering (0 for thin flakes:
        a step of a few layers scatters next to nothing at low magnification)."""
        if obj.kind != "bulk" or self.imaging.edge_scatter == 0:
            return 0.0
        return self.imaging.edge_scatter * min(1.0, obj.thickness_nm / 100.0)

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
        objs = self.chip.query(x0, y0, x0 + w * px, y0 + h * px)
        labels = Image.new("I", (w, h), _OUTSIDE)
        draw = ImageDraw.Draw(labels)

        def to_px(pts: np.ndarray) -> list[tuple[float, float]]:
            cols = ((pts[:, 0] - x0) / px - 0.5).tolist()
            rows = ((pts[:, 1] - y0) / px - 0.5).tolist()
            return list(zip(cols, rows, strict=True))

        draw.polygon(to_px(np.asarray(self.chip.outline_um)), fill=_WAFER)
        lut = [self.substrate_reflectance, _SURROUND[self.chip.spec.surround]]
        edge_px = max(1, round(0.8 / px))  # a scattering edge is about a micrometre wide
        for obj in objs:
            outline = to_px(np.asarray(obj.outline_um))
            draw.polygon(outline, fill=len(lut))
            lut.append(self.reflectance_of(obj))
            dark = self.edge_darkening(obj)
            if dark > 0:
                draw.line([*outline, outline[0]], fill=len(lut), width=edge_px)
                lut.append(lut[-1] * (1.0 - dark))
        idx = np.asarray(labels)
        refl = np.asarray(lut, dtype=np.float32)[idx]
        outside = idx == _OUTSIDE
        if outside.any():
            rows, cols = np.nonzero(outside)
            xs, ys = x0 + (cols + 0.5) * px, y0 + (rows + 0.5) * px
            kx, ky, ph = self._waves.T
            texture = np.sin(np.outer(xs, kx) + np.outer(ys, ky) + ph).sum(axis=1)
            refl[rows, cols] *= (1.0 + 0.06 * texture)[:, None].astype(np.float32)
        return refl

    def render(
        self,
        x_um: float,
        y_um: float,
        *,
        defocus_um: float = 0.0,
        exposure_ms: float | None = None,
        frame_index: int = 0,
    ) -> np.ndarray:
        """(h, w, 3) frame centred at the stage position: uint8 for 8 bits, else uint16."""
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
        signal = electrons / np.float32(im.full_well_e)
        if im.encoding == "srgb":
            signal = self._camera_colour(signal)
        top = 2**im.bit_depth - 1
        out = np.rint(signal * top).astype(np.uint8 if im.bit_depth == 8 else np.uint16)
        if im.jpeg_quality is not None:
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="JPEG", quality=im.jpeg_quality)
            out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return out

    def _camera_colour(self, linear: np.ndarray) -> np.ndarray:
        """A consumer camera's rendering: saturation matrix, then the sRGB curve."""
        s = self.imaging.saturation
        grey = linear.mean(axis=2, keepdims=True)
        saturated = grey + s * (linear - grey)
        return srgb_encode(saturated).astype(np.float32)
