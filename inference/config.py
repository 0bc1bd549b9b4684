"""Inference settings of service.toml: `[preselection]` and `[models]`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ModelsConfig",
    "PreselectionConfig",
    "default_axis_model",
    "default_classifier_path",
]

_MODELS_DIR = Path(__file__).parent / "models"


def default_classifier_path() -> Path:
    """The small CNN-4 classifier shipped with flakescan (see its model card)."""
    return _MODELS_DIR / "flake_classifier_cnn4.onnx"


def default_axis_model() -> Path | None:
    """The shipped axis regressor (AxisID Model 3), if this installation has one."""
    path = _MODELS_DIR / "axis_model3.onnx"
    return path if path.is_file() else None


class PreselectionConfig(BaseModel):
    """Hand-coded colour preselection: which pixels look like a thin flake on this wafer.

    Contrast is C = (background - pixel) / background per channel on linear intensities;
    defaults suit graphene on 285 nm SiO2 (monolayer R/G/B about 7 / 6 / 0 %).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Per-channel contrast window (R, G, B) a pixel must fall in.
    contrast_min: tuple[float, float, float] = (0.03, 0.015, -0.06)
    contrast_max: tuple[float, float, float] = (0.33, 0.35, 0.06)
    # The GrapheneClassifier bins on R contrast: <=12 %, 12-19 %, 19-30 % (classes 1-3).
    class_bins: tuple[float, float, float, float] = (0.0, 0.12, 0.19, 0.30)
    min_area_um2: float = Field(20.0, ge=0)
    # Regions of one contrast class closer than this are one flake (0: never merge).
    merge_gap_um: float = Field(2.0, ge=0, le=50)
    smooth_sigma_px: float = Field(1.0, ge=0, le=10)
    opening_radius_px: int = Field(2, ge=0, le=10)
    # Share of a tile that must look like bare wafer for its background to be trusted.
    min_background_fraction: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> PreselectionConfig:
        for i, ch in enumerate("RGB"):
            if self.contrast_min[i] >= self.contrast_max[i]:
                raise ValueError(
                    f"contrast_min[{ch}] = {self.contrast_min[i]} must be below "
                    f"contrast_max[{ch}] = {self.contrast_max[i]}"
                )
        if list(self.class_bins) != sorted(self.class_bins):
            raise ValueError(f"class_bins must increase, got {list(self.class_bins)}")
        return self


class ModelsConfig(BaseModel):
    """`[models]`: which networks score candidates and measure axes, and on what.

    A model is a registry name (`<name>.onnx` with its card in a `registry` folder or among
    the shipped models) or a path ending in `.onnx`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    classifier: Path = Field(default_factory=default_classifier_path)
    # None: the axis angle comes from the flake's straight edges only.
    axis: Path | None = Field(default_factory=default_axis_model)
    registry: list[Path] = []
    # auto: TensorRT on a GPU, else ONNX Runtime on CUDA, else on the CPU (status says which
    # and why). onnxruntime runs on `device`; tensorrt always on a GPU. No silent fallback
    # from an explicit choice.
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    device: Literal["cpu", "cuda"] = "cpu"
    engine_cache: Path | None = None  # TensorRT engines; None: <state_dir>/engines
    threshold: float = Field(0.5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=4096)
    intra_op_threads: int = Field(0, ge=0, le=256, description="0: ONNX Runtime decides")
    axis_views: Literal[1, 2, 4, 8] = 8
    # Which reading becomes a hit's axis_angle_deg when both exist (both are always stored);
    # the other is the fallback. "cnn" by measurement: on the demo chip's hits the shipped
    # axis CNN is closer to the lattice than the straight-edge estimate (docs/training.md).
    axis_primary: Literal["edges", "cnn"] = "cnn"

    @field_validator("axis", mode="before")
    @classmethod
    def _no_axis_model(cls, value: object) -> object:
        # TOML has no null: "" or "none" ask for the straight-edge estimate only.
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @model_validator(mode="after")
    def _tensorrt_on_gpu(self) -> ModelsConfig:
        if self.backend == "tensorrt" and self.device != "cuda":
            raise ValueError("backend 'tensorrt' runs on a GPU: set device = 'cuda'")
        return self
