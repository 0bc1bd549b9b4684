"""PACBED thickness and mistilt from a measured pattern, served from an ONNX model.

The seed's scheme (scale CNN first, then thickness and mistilt with the convergence angle as a
second input) in two passes of one network (training/pacbed_models.py):

1. preprocess the pattern (inference/pacbed_preprocess.py: border background, centre, disc
   radius, crop, resample) with the measured disc radius and run the model; its scale head
   says how far that radius is off (log residual scale);
2. preprocess again with the corrected radius and run the model again; its thickness and
   mistilt heads give the probability curves over the card's bins, whose expectations are the
   answers (with the curves' standard deviations as a spread).

The model's one input is (n, 2, S, S): the preprocessed pattern and a channel holding the
convergence angle in mrad in every pixel. DigitalMicrograph files rarely record the angle,
so it comes from the caller (`--conv-angle-mrad`); a model trained at one angle uses that one
when none is given and says so in the result. An angle outside the trained range (plus the
card's tolerance) is refused, naming the value and the range.

Scale: the camera-length factor of the measured pattern relative to the simulation's
detector (disc radius in input pixels over the library's disc radius in pixels); the implied
calibration conv_angle / radius (mrad per input pixel) is reported too.

numpy and ONNX Runtime only; the library (for the validation picture's best-matching simulated
pattern) is read with simulators.pacbed_library, which needs numpy and pydantic only, and only
when one is given. matplotlib only for the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .backends import InferenceBackend
from .pacbed_preprocess import PreprocessConfig, PreprocessedPattern, preprocess_pattern
from .pattern_readers import DiffractionPattern, read_pattern
from .registry import ModelEntry, ModelNotFound, ModelRegistry

if TYPE_CHECKING:
    from flakescan.simulators.pacbed_library import PacbedLibrary

__all__ = [
    "PACBED_TASK",
    "PacbedAnalyzer",
    "PacbedMatch",
    "PacbedResult",
    "analyze_pacbed",
    "best_match",
    "conv_angle_range",
    "model_for_system",
    "model_input",
    "plot_pacbed",
    "read_pacbed_files",
]

PACBED_TASK = "pacbed"
# Probability in the last bin(s) above which a thickness or mistilt is called "at the edge
# of the trained range" (the sample may lie beyond it).
_EDGE_MASS = 0.5


def conv_angle_range(spec: dict) -> tuple[float, float]:
    """The convergence angles (mrad) a card's training.pacbed section serves: the trained
    ones widened by the card's tolerance."""
    angles = [float(c) for c in spec["conv_angles_mrad"]]
    tolerance = float(spec.get("conv_angle_tolerance_mrad", 0.0))
    return min(angles) - tolerance, max(angles) + tolerance


def _between(value: float, bounds: tuple[float, float]) -> bool:
    return math.isfinite(value) and bounds[0] <= value <= bounds[1]


def model_for_system(
    models: ModelRegistry | Sequence[ModelEntry],
    system: int | str,
    conv_angle_mrad: float | None = None,
) -> ModelEntry:
    """The PACBED model trained for a material system (register ID or name), as the seed keyed
    its models by system ID. Of several, the first in registry order (a lab's folders before
    the shipped models) whose convergence angles cover `conv_angle_mrad` when it is given;
    ModelNotFound names the systems the registry has models for. `models` is a registry, or
    the entries a server listed."""
    key = str(system).strip().lower()
    if isinstance(models, ModelRegistry):
        models = models.entries(PACBED_TASK)
    models = [e for e in models if e.card.task == PACBED_TASK]

    def system_of(entry: ModelEntry) -> dict:
        return (entry.card.training.get("pacbed") or {}).get("system") or {}

    matches = [
        e
        for e in models
        if key in (str(system_of(e).get("id")), str(system_of(e).get("name", "")).lower())
    ]
    if conv_angle_mrad is not None:
        covering = [
            e
            for e in matches
            if _between(conv_angle_mrad, conv_angle_range(e.card.training["pacbed"]))
        ]
        matches = covering or matches  # none covers it: the analyzer names the range
    if not matches:
        have = sorted({f"{system_of(e).get('id')} ({system_of(e).get('name')})" for e in models})
        raise ModelNotFound(
            f"system = {system!r}: no PACBED model for it in the registry (systems with "
            f"models: {', '.join(have) or 'none'})"
        )
    return matches[0]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def model_input(patterns: np.ndarray, conv_angle_mrad: float | Sequence[float]) -> np.ndarray:
    """(n, S, S) preprocessed patterns -> the model's (n, 2, S, S) input (angle channel)."""
    p = np.asarray(patterns, np.float32)
    if p.ndim == 2:
        p = p[None]
    conv = np.broadcast_to(np.asarray(conv_angle_mrad, np.float32), (len(p),))
    out = np.empty((len(p), 2, *p.shape[1:]), np.float32)
    out[:, 0] = p
    out[:, 1] = conv[:, None, None]
    return out


@dataclass(frozen=True)
class PacbedResult:
    """One pattern's answer; `to_dict` is the JSON the CLI prints."""

    source: str
    thickness_nm: float
    thickness_std_nm: float
    mistilt_mrad: float
    mistilt_std_mrad: float
    thickness_bins_nm: np.ndarray
    thickness_probability: np.ndarray
    mistilt_bins_mrad: np.ndarray
    mistilt_probability: np.ndarray
    scale: float  # camera length relative to the simulation's detector
    residual_scale: float  # the scale head's correction of the measured disc radius
    centre_px: tuple[float, float]
    radius_px: float  # corrected disc radius (input px)
    measured_radius_px: float  # the preprocessing's own measurement
    mrad_per_px: float  # implied calibration of the input
    conv_angle_mrad: float
    conv_angle_source: str  # "given" or "model (trained at one angle)"
    system: dict
    warnings: tuple[str, ...] = ()
    file_mrad_per_px: float | None = None  # the file's own calibration, if it has one
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        doc = {
            "source": self.source,
            "system": self.system,
            "thickness_nm": round(self.thickness_nm, 3),
            "thickness_std_nm": round(self.thickness_std_nm, 3),
            "mistilt_mrad": round(self.mistilt_mrad, 3),
            "mistilt_std_mrad": round(self.mistilt_std_mrad, 3),
            "thickness_curve": {
                "bins_nm": [round(float(b), 4) for b in self.thickness_bins_nm],
                "probability": [round(float(p), 5) for p in self.thickness_probability],
            },
            "mistilt_curve": {
                "bins_mrad": [round(float(b), 4) for b in self.mistilt_bins_mrad],
                "probability": [round(float(p), 5) for p in self.mistilt_probability],
            },
            "scale": round(self.scale, 5),
            "residual_scale": round(self.residual_scale, 5),
            "centre_px": [round(c, 3) for c in self.centre_px],
            "radius_px": round(self.radius_px, 3),
            "measured_radius_px": round(self.measured_radius_px, 3),
            "mrad_per_px": round(self.mrad_per_px, 6),
            "conv_angle_mrad": self.conv_angle_mrad,
            "conv_angle_source": self.conv_angle_source,
            "warnings": list(self.warnings),
        }
        if self.file_mrad_per_px is not None:
            doc["file_mrad_per_px"] = round(self.file_mrad_per_px, 6)
            # What the file's calibration says the convergence angle is (a cross-check).
            doc["conv_angle_from_file_mrad"] = round(self.file_mrad_per_px * self.radius_px, 3)
        doc.update(self.extra)
        return doc


class PacbedAnalyzer:
    """Thickness, mistilt and scale of PACBED patterns with one model from the registry."""

    def __init__(
        self,
        entry: ModelEntry,
        backend: InferenceBackend,
        library: PacbedLibrary | Path | str | None = None,
    ) -> None:
        card = entry.card
        if card.task != PACBED_TASK:
            raise ValueError(f"model {entry.name!r} is a {card.task!r} model, not {PACBED_TASK!r}")
        spec = card.training.get("pacbed")
        if not isinstance(spec, dict):
            raise ValueError(f"model card of {entry.name!r} has no training.pacbed section")
        self.entry, self.backend, self.spec = entry, backend, spec
        self.config = PreprocessConfig.model_validate(spec["preprocess"])
        self.thickness_bins = np.asarray(spec["thickness_bins_nm"], float)
        self.mistilt_bins = np.asarray(spec["mistilt_bins_mrad"], float)
        self.conv_angles = sorted(float(c) for c in spec["conv_angles_mrad"])
        self.conv_tolerance = float(spec.get("conv_angle_tolerance_mrad", 0.0))
        # disc radius in the library's detector pixels, per trained convergence angle
        self.sim_radius_px = {float(k): float(v) for k, v in spec["disc_radius_px"].items()}
        self.system = dict(spec["system"])
        self.library = self._open_library(library) if library is not None else None

    @classmethod
    def open(
        cls, model: str | Path, models_config=None, library: PacbedLibrary | Path | None = None
    ) -> PacbedAnalyzer:
        """The analyzer for a registry name or .onnx path, on the configured backend."""
        from .config import ModelsConfig
        from .registry import open_model

        entry, backend = open_model(models_config or ModelsConfig(), model, PACBED_TASK)
        return cls(entry, backend, library)

    def _open_library(self, library) -> PacbedLibrary:
        from flakescan.simulators.pacbed_library import PacbedLibrary

        if not isinstance(library, PacbedLibrary):
            folder = Path(library)
            if not folder.is_dir():
                raise FileNotFoundError(f"library = {str(folder)!r}: no such folder")
            library = PacbedLibrary(folder)
        if library.system.id != self.system.get("id"):
            raise ValueError(
                f"library {str(library.folder)!r} is system {library.system.id} "
                f"({library.system.name}); the model is for system {self.system.get('id')} "
                f"({self.system.get('name')})"
            )
        return library

    # -- conv angle --------------------------------------------------------------------------
    def conv_angle(self, conv_angle_mrad: float | None) -> tuple[float, str]:
        """The angle to use and where it came from; ValueError outside the trained range."""
        if conv_angle_mrad is None:
            if len(self.conv_angles) == 1:
                return self.conv_angles[0], "model (trained at one angle)"
            raise ValueError(
                f"conv_angle_mrad is needed: the model was trained at {self.conv_angles} mrad "
                "(give --conv-angle-mrad)"
            )
        a = float(conv_angle_mrad)
        lo, hi = conv_angle_range(self.spec)
        if not _between(a, (lo, hi)):
            trained = ", ".join(f"{c:g}" for c in self.conv_angles)
            raise ValueError(
                f"conv_angle_mrad = {conv_angle_mrad} is outside the model's range "
                f"{lo:g}-{hi:g} mrad (trained at {trained} mrad, tolerance "
                f"{self.conv_tolerance:g} mrad)"
            )
        return a, "given"

    def _sim_radius(self, conv: float) -> float:
        """The library's disc radius (px) at this angle, interpolated between trained ones."""
        angles = np.array(sorted(self.sim_radius_px))
        radii = np.array([self.sim_radius_px[a] for a in angles])
        if len(angles) == 1:
            return float(radii[0] * conv / angles[0])  # same detector, radius ∝ angle
        return float(np.interp(conv, angles, radii))

    # -- inference ---------------------------------------------------------------------------
    def run(self, patterns: np.ndarray, conv_angle_mrad: float) -> np.ndarray:
        """Raw model outputs (n, 1 + Nt + Nm) of preprocessed (n, S, S) patterns."""
        return self.backend.run(model_input(patterns, conv_angle_mrad))

    def _split(self, out: np.ndarray):
        nt = len(self.thickness_bins)
        return out[:, 0], out[:, 1 : 1 + nt], out[:, 1 + nt :]

    def _prepare(self, image, source: str, radius_px: float | None = None):
        try:
            return preprocess_pattern(image, self.config, radius_px=radius_px)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def analyze_images(
        self,
        images: Sequence[np.ndarray],
        conv_angle_mrad: float | None = None,
        sources: Sequence[str] | None = None,
    ) -> tuple[list[PacbedResult], list[PreprocessedPattern]]:
        """Results and the final preprocessed patterns of 2-D images (both passes batched)."""
        conv, conv_source = self.conv_angle(conv_angle_mrad)
        sources = (
            list(sources) if sources is not None else [f"image {i}" for i in range(len(images))]
        )
        first = [self._prepare(im, src) for im, src in zip(images, sources, strict=True)]
        log_s, _, _ = self._split(self.run(np.stack([p.pattern for p in first]), conv))
        residual = np.exp(np.clip(log_s, -0.5, 0.5))
        second = [
            self._prepare(im, src, radius_px=p.radius_px / r)
            for im, src, p, r in zip(images, sources, first, residual, strict=True)
        ]
        _, t_logits, m_logits = self._split(self.run(np.stack([p.pattern for p in second]), conv))
        pt, pm = _softmax(t_logits.astype(np.float64)), _softmax(m_logits.astype(np.float64))
        sim_radius = self._sim_radius(conv)
        results = []
        for i, (p1, p2) in enumerate(zip(first, second, strict=True)):
            t_mean = float(pt[i] @ self.thickness_bins)
            m_mean = float(pm[i] @ self.mistilt_bins)
            t_std = float(np.sqrt(max(pt[i] @ (self.thickness_bins - t_mean) ** 2, 0.0)))
            m_std = float(np.sqrt(max(pm[i] @ (self.mistilt_bins - m_mean) ** 2, 0.0)))
            warnings = []
            if pt[i][-2:].sum() > _EDGE_MASS:
                warnings.append(
                    f"thickness at the upper end of the trained range "
                    f"({self.thickness_bins[-1]:g} nm): the sample may be thicker"
                )
            if pm[i][-2:].sum() > _EDGE_MASS:
                warnings.append(
                    f"mistilt at the upper end of the trained range "
                    f"({self.mistilt_bins[-1]:g} mrad): it may be larger"
                )
            results.append(
                PacbedResult(
                    source=sources[i],
                    thickness_nm=t_mean,
                    thickness_std_nm=t_std,
                    mistilt_mrad=m_mean,
                    mistilt_std_mrad=m_std,
                    thickness_bins_nm=self.thickness_bins,
                    thickness_probability=pt[i],
                    mistilt_bins_mrad=self.mistilt_bins,
                    mistilt_probability=pm[i],
                    scale=p2.radius_px / sim_radius,
                    residual_scale=float(residual[i]),
                    centre_px=p2.centre_px,
                    radius_px=p2.radius_px,
                    measured_radius_px=p1.radius_px,
                    mrad_per_px=conv / p2.radius_px,
                    conv_angle_mrad=conv,
                    conv_angle_source=conv_source,
                    system=self.system,
                    warnings=tuple(warnings),
                )
            )
        return results, second

    def analyze(
        self, pattern: DiffractionPattern, conv_angle_mrad: float | None = None
    ) -> tuple[PacbedResult, PreprocessedPattern]:
        """One read file: the result (with the file's calibration, if any) and its input."""
        (res,), (pre,) = self.analyze_images(
            [pattern.data], conv_angle_mrad, [pattern.metadata.source]
        )
        if pattern.metadata.mrad_per_px is not None:
            res = _replace(res, file_mrad_per_px=float(pattern.metadata.mrad_per_px))
        return res, pre


def _replace(res: PacbedResult, **kw) -> PacbedResult:
    from dataclasses import replace

    return replace(res, **kw)


# -- best-matching simulated pattern -------------------------------------------------------
@dataclass(frozen=True)
class PacbedMatch:
    """The library pattern nearest a result, aligned to the measured one for display."""

    pattern: np.ndarray  # preprocessed, rotated (and mirrored) onto the measured pattern
    thickness_nm: float
    tilt_mrad: tuple[float, float]
    rotation_deg: float
    mirrored: bool
    correlation: float  # of sqrt intensities, after alignment
    library: str


def _polar(p: np.ndarray, n_r: int, n_theta: int) -> np.ndarray:
    c = (np.asarray(p.shape) - 1) / 2
    r = np.linspace(0, min(c), n_r)
    t = np.radians(np.arange(n_theta) * 360.0 / n_theta)
    rr, tt = np.meshgrid(r, t, indexing="ij")
    coords = np.stack([c[0] + rr * np.cos(tt), c[1] + rr * np.sin(tt)])
    return ndimage.map_coordinates(p, coords, order=1, mode="constant")


def _rotate(p: np.ndarray, deg: float) -> np.ndarray:
    """Rotate about the centre pixel so that _polar(out)[:, j] = _polar(p)[:, j - shift]."""
    a = math.radians(deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = (np.asarray(p.shape) - 1) / 2
    inv = rot.T
    return ndimage.affine_transform(p, inv, offset=c - inv @ c, order=1, mode="constant")


def _align(measured: np.ndarray, candidate: np.ndarray, n_theta: int = 360):
    """(best rotation in deg, correlation) of candidate onto measured, by polar
    cross-correlation (a rotation is a circular shift along the angle)."""
    n_r = measured.shape[0] // 2
    a, b = _polar(np.sqrt(measured), n_r, n_theta), _polar(np.sqrt(candidate), n_r, n_theta)
    w = np.linspace(0, 1, n_r)[:, None]  # ring weight ∝ radius (area)
    a, b = (a - a.mean()) * np.sqrt(w), (b - b.mean()) * np.sqrt(w)
    xc = np.fft.irfft(np.fft.rfft(a, axis=1) * np.conj(np.fft.rfft(b, axis=1)), n_theta, axis=1)
    score = xc.sum(axis=0) / max(float(np.sqrt((a * a).sum() * (b * b).sum())), 1e-12)
    shift = int(np.argmax(score))
    return shift * 360.0 / n_theta, float(score[shift])


def best_match(
    library: PacbedLibrary,
    thickness_nm: float,
    mistilt_mrad: float,
    measured: np.ndarray,
    config: PreprocessConfig,
    n_tilts: int = 4,
) -> PacbedMatch:
    """The stored pattern at the thickness nearest `thickness_nm` and the `n_tilts` stored
    tilts nearest the mistilt magnitude, each mirrored or not, rotated onto the measured
    (preprocessed) pattern; the best-correlated one wins."""
    i = int(np.argmin(np.abs(library.thickness_a / 10 - thickness_nm)))
    mags = np.hypot(library.tilts[:, 0], library.tilts[:, 1])
    order = np.argsort(np.abs(mags - mistilt_mrad), kind="stable")[:n_tilts]
    radius = library.disc_radius_px
    best = None
    for j in order:
        tilt = (float(library.tilts[j, 0]), float(library.tilts[j, 1]))
        raw = library.pattern_by_index(i, tilt)
        for mirrored in (False, True) if library.symmetry != "1" else (False,):
            src = raw.T if mirrored else raw  # transpose: the diagonal mirror
            cand = preprocess_pattern(src, config, radius_px=radius).pattern
            rot, corr = _align(measured, cand)
            if best is None or corr > best[0]:
                best = (corr, cand, tilt, rot, mirrored)
    assert best is not None
    corr, cand, tilt, rot, mirrored = best
    return PacbedMatch(
        pattern=np.clip(_rotate(cand, rot), 0, None),
        thickness_nm=float(library.thickness_a[i] / 10),
        tilt_mrad=tilt,
        rotation_deg=rot,
        mirrored=mirrored,
        correlation=corr,
        library=str(library.folder),
    )


# -- picture -------------------------------------------------------------------------------
def plot_pacbed(
    result: PacbedResult,
    prepared: np.ndarray,
    out: Path,
    match: PacbedMatch | None = None,
    truth: dict | None = None,
) -> Path:
    """The validation picture: the preprocessed measured pattern, the best-matching simulated
    one (if a library was given), the thickness and mistilt probability curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_img = 2 if match is not None else 1
    fig, axes = plt.subplots(
        1, n_img + 2, figsize=(3.3 * (n_img + 2), 3.4), constrained_layout=True
    )
    show = dict(cmap="inferno", origin="lower", interpolation="nearest")
    axes[0].imshow(np.sqrt(np.clip(prepared, 0, None)).T, **show)
    axes[0].set_title(f"measured: {Path(result.source).name}", fontsize=8)
    if match is not None:
        axes[1].imshow(np.sqrt(match.pattern).T, **show)
        axes[1].set_title(
            f"library: t = {match.thickness_nm:.1f} nm, tilt ({match.tilt_mrad[0]:g}, "
            f"{match.tilt_mrad[1]:g}) mrad\nrotated {match.rotation_deg:.0f}°"
            f"{', mirrored' if match.mirrored else ''}, r = {match.correlation:.3f}",
            fontsize=7,
        )
    for ax in axes[:n_img]:
        ax.set_xticks([])
        ax.set_yticks([])
    tx, mx = axes[n_img], axes[n_img + 1]
    tx.plot(result.thickness_bins_nm, result.thickness_probability, color="C0")
    tx.axvline(result.thickness_nm, color="C0", ls="--", lw=1)
    tx.set_xlabel("thickness (nm)")
    tx.set_ylabel("probability")
    tx.set_title(f"t = {result.thickness_nm:.1f} ± {result.thickness_std_nm:.1f} nm", fontsize=9)
    mx.plot(result.mistilt_bins_mrad, result.mistilt_probability, color="C1")
    mx.axvline(result.mistilt_mrad, color="C1", ls="--", lw=1)
    mx.set_xlabel("mistilt (mrad)")
    mx.set_title(
        f"mistilt = {result.mistilt_mrad:.2f} ± {result.mistilt_std_mrad:.2f} mrad", fontsize=9
    )
    if truth:
        if "thickness_nm" in truth:
            tx.axvline(truth["thickness_nm"], color="k", lw=1, label="true")
            tx.legend(fontsize=7)
        if "mistilt_mrad" in truth:
            mx.axvline(truth["mistilt_mrad"], color="k", lw=1, label="true")
            mx.legend(fontsize=7)
    fig.suptitle(
        f"{result.system.get('name', '')}: scale {result.scale:.3f} "
        f"({result.mrad_per_px:.4f} mrad/px at {result.conv_angle_mrad:g} mrad)",
        fontsize=9,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- what `flakescan analyze pacbed` calls -------------------------------------------------
def read_pacbed_files(
    paths: Sequence[Path | str | DiffractionPattern],
    dtype: str | None = None,
    shape: tuple[int, int] | None = None,
    offset: int = 0,
) -> list[DiffractionPattern]:
    """Every file read before any model runs (a bad file stops all, naming itself).

    dtype, shape and offset apply to raw files only: any file whose suffix is not one of
    .npy, .tif, .tiff, .dm3, .dm4 (those say their own layout)."""
    return [_read(p, dtype, shape, offset) for p in paths]


_SELF_DESCRIBING = (".npy", ".tif", ".tiff", ".dm3", ".dm4")


def _read(path, dtype, shape, offset) -> DiffractionPattern:
    if isinstance(path, DiffractionPattern):
        return path
    if Path(path).suffix.lower() in _SELF_DESCRIBING:
        return read_pattern(path)
    return read_pattern(path, dtype=dtype, shape=shape, offset=offset)


def analyze_pacbed(
    files: Sequence[Path | str | DiffractionPattern],
    analyzer: PacbedAnalyzer,
    *,
    conv_angle_mrad: float | None = None,
    plot_dir: Path | None = None,
    dtype: str | None = None,
    shape: tuple[int, int] | None = None,
    offset: int = 0,
) -> list[dict]:
    """JSON-able results, one per file (every file is read first; raw files need dtype
    and shape, see read_pacbed_files); with plot_dir, a picture `<stem>.pacbed.png` per
    file (its path in "picture")."""
    patterns = [_read(f, dtype, shape, offset) for f in files]
    analyzer.conv_angle(conv_angle_mrad)  # refuse a bad angle before any work
    out = []
    for pattern in patterns:
        result, pre = analyzer.analyze(pattern, conv_angle_mrad)
        doc = result.to_dict()
        match = None
        if analyzer.library is not None:
            match = best_match(
                analyzer.library,
                result.thickness_nm,
                result.mistilt_mrad,
                pre.pattern,
                analyzer.config,
            )
            doc["best_match"] = {
                "thickness_nm": round(match.thickness_nm, 3),
                "tilt_mrad": list(match.tilt_mrad),
                "rotation_deg": round(match.rotation_deg, 1),
                "mirrored": match.mirrored,
                "correlation": round(match.correlation, 4),
                "library": match.library,
            }
        if plot_dir is not None:
            picture = Path(plot_dir) / f"{Path(pattern.metadata.source).stem}.pacbed.png"
            plot_pacbed(result, pre.pattern, picture, match)
            doc["picture"] = str(picture)
        out.append(doc)
    return out
