"""Hardware settings of service.toml: backend, travel limits, objective, fault policy, park."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .fault_policy import FaultPolicy

__all__ = ["HardwareConfig", "ObjectiveConfig", "ParkConfig", "TravelLimits"]


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


class ParkConfig(BaseModel):
    """`[hardware.park]`: where `Microscope.park()` leaves the stage (on SIGTERM).

    Z goes first, to `z_um`, default the top of the Z travel (`z_max_um`): focus up is away
    from the chip, so that is the objective's farthest, safest place (`z_min_um` is the
    lowest it may ever go, not a place to rest). Then XY to `xy_um`, if given (say, the
    loading position); not given, XY stays. Both must lie inside the travel limits
    (`check`): a park outside them is refused when the microscope opens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    z_um: float | None = None
    xy_um: tuple[float, float] | None = None

    def target_z(self, limits: TravelLimits) -> float:
        return limits.z_max_um if self.z_um is None else self.z_um

    def check(self, limits: TravelLimits) -> None:
        """ValueError naming the key if a park target lies outside the travel limits."""
        if self.z_um is not None and not limits.contains_z(self.z_um):
            raise ValueError(
                f"hardware.park.z_um = {self.z_um} lies outside the Z travel limits "
                f"[{limits.z_min_um}, {limits.z_max_um}]"
            )
        if self.xy_um is not None and not limits.contains_xy(*self.xy_um):
            raise ValueError(
                f"hardware.park.xy_um = {list(self.xy_um)} lies outside the XY travel limits "
                f"x [{limits.x_min_um}, {limits.x_max_um}], y [{limits.y_min_um}, "
                f"{limits.y_max_um}]"
            )


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
    # What to do when a device call fails: retry (bounded), re-home, or fail the scan.
    fault_policy: FaultPolicy = FaultPolicy()
    # Check every frame for what faulty transfers leave (black, partial, saturated).
    check_frames: bool = True
    park: ParkConfig = ParkConfig()

    def check_against(self, limits: TravelLimits) -> None:
        """ValueError naming the key if the park position, or the home a `rehome` policy
        would drive to, lies outside the travel limits (the limits are another section)."""
        self.park.check(limits)
        pol = self.fault_policy
        if "rehome" in (pol.xy_move.action, pol.xy_timeout.action) and not limits.contains_xy(
            *pol.home_xy_um
        ):
            raise ValueError(
                f"hardware.fault_policy.home_xy_um = {list(pol.home_xy_um)} lies outside the "
                "XY travel limits, and a rehome action would drive there"
            )

    @model_validator(mode="after")
    def _mm_config_given(self) -> HardwareConfig:
        if self.backend == "mmconfig" and self.mm_config is None:
            raise ValueError("backend 'mmconfig' needs mm_config = <path to a .cfg file>")
        return self
