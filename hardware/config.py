"""Hardware settings of service.toml: backend, travel limits, objective."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["HardwareConfig", "ObjectiveConfig", "TravelLimits"]


class TravelLimits(BaseModel):
    """The box the stage may be commanded into; a move outside it is refused, not clipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x_min_um: float = -1000.0
    x_max_um: float = 26000.0
    y_min_um: float = -1000.0
    y_max_um: float = 26000.0
    z_min_um: float = -500.0
    z_max_um: float = 500.0

    @model_validator(mode="after")
    def _ordered(self) -> TravelLimits:
        for axis in "xyz":
            lo, hi = getattr(self, f"{axis}_min_um"), getattr(self, f"{axis}_max_um")
            if lo >= hi:
                raise ValueError(f"{axis}_min_um ({lo}) must be below {axis}_max_um ({hi})")
        return self

    def contains_xy(self, x: float, y: float) -> bool:
        return self.x_min_um <= x <= self.x_max_um and self.y_min_um <= y <= self.y_max_um

    def contains_z(self, z: float) -> bool:
        return self.z_min_um <= z <= self.z_max_um


class ObjectiveConfig(BaseModel):
    """An objective: its pixel size on the camera fixes the field of view. `[objective]` is
    the scanning one; `[[objectives]]` the others, with their offsets as calibrated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("5x", min_length=1)
    magnification: float = Field(5.0, gt=0)
    numerical_aperture: float = Field(0.14, gt=0, lt=1.6)
    pixel_size_um: float = Field(0.57, gt=0, le=50)
    # Expected field of view (width, height) in um; checked against camera size x pixel size.
    field_of_view_um: tuple[float, float] | None = None
    # Its position's label on the turret (Micro-Manager state device); default: the name.
    label: str | None = None
    # Calibrated against the scanning objective: where this one's image centre lies (stage
    # um) when the scanning one's is at 0, and where it focuses. Zero for the scanning one.
    offset_x_um: float = 0.0
    offset_y_um: float = 0.0
    offset_z_um: float = 0.0

    @property
    def turret_label(self) -> str:
        return self.label or self.name


class HardwareConfig(BaseModel):
    """`[hardware]`: which backend drives the microscope, and its device settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["simulator", "mmconfig", "replay"] = "simulator"
    # For `mmconfig`: a Micro-Manager .cfg file and where its device adapters live.
    mm_config: Path | None = None
    adapter_paths: list[Path] = []
    timeout_ms: int = Field(5000, ge=10, le=600000)
    # Whether camera values are proportional to light; contrast bins need linear pixels.
    pixels_linear: bool = True
    # The objective turret's Micro-Manager device label (a state device); none: one objective.
    # The simulator always has one, "Objective".
    objective_device: str | None = None

    @model_validator(mode="after")
    def _mm_config_given(self) -> HardwareConfig:
        if self.backend == "mmconfig" and self.mm_config is None:
            raise ValueError("backend 'mmconfig' needs mm_config = <path to a .cfg file>")
        return self
