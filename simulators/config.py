"""Parameters of the simulated microscope and chip: the `[simulator]` section of service.toml.

Every random draw of a chip or a frame comes from `seed`, so a scan on the simulator can be
repeated exactly and checked against the chip's ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .turret import SimObjective

__all__ = [
    "ChipSpec",
    "FaultSpec",
    "ImagingSpec",
    "ReplayConfig",
    "SimulatorConfig",
    "StageSpec",
]


class ChipSpec(BaseModel):
    """What lies on the chip: material, oxide, and how many objects of each kind per mm2."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    material: Literal["graphene", "hBN", "MoS2", "WSe2"] = "graphene"
    oxide_nm: float = Field(285.0, gt=0, le=2000)
    width_um: float = Field(5000.0, gt=0)
    height_um: float = Field(5000.0, gt=0)
    thin_flakes_per_mm2: float = Field(6.0, ge=0)
    bulk_crystals_per_mm2: float = Field(4.0, ge=0)
    # Where the tape touched: patches crowded with fragments of every size.
    clusters_per_mm2: float = Field(0.6, ge=0)
    fragments_per_cluster: float = Field(25.0, ge=0)
    cluster_radius_um: float = Field(180.0, gt=0)
    residue_per_mm2: float = Field(6.0, ge=0)
    bubbles_per_mm2: float = Field(1.0, ge=0)
    scratches_per_mm2: float = Field(0.15, ge=0)
    dust_per_mm2: float = Field(20.0, ge=0)
    terrace_fraction: float = Field(0.4, ge=0, le=1)
    # Thick crystals split into terraces along cleavage lines: up to this many cuts.
    max_terrace_cuts: int = Field(5, ge=0, le=8)
    # Thickness of thick crystals, log-uniform (nm).
    bulk_thickness_nm: tuple[float, float] = (8.0, 250.0)
    facet_scatter_deg: float = Field(2.0, ge=0, le=15)
    torn_fraction: float = Field(0.25, ge=0, le=1)
    # Thin-flake size: equivalent diameter lognormal around this median (um).
    thin_median_diameter_um: float = Field(16.0, gt=0)
    margin_um: float = Field(150.0, ge=0, description="flake-free band along the chip edge")
    edge_roughness_um: float = Field(15.0, ge=0, description="chipped chip edge")
    # A corner broken off along a cleave line: the legs (along the top edge, along the
    # right edge) of the triangle missing at (width, height); (0, 0): a whole chip.
    broken_corner_um: tuple[float, float] = (0.0, 0.0)
    # What the camera sees beyond the chip edge.
    surround: Literal["holder", "tape"] = "holder"

    @model_validator(mode="after")
    def _thickness_range(self) -> ChipSpec:
        lo, hi = self.bulk_thickness_nm
        if not 0 < lo < hi:
            raise ValueError(
                f"bulk_thickness_nm must be [low, high] with 0 < low < high, got {[lo, hi]}"
            )
        return self


class ImagingSpec(BaseModel):
    """Camera and illumination: sensor, bit depth, noise, fall-off, flare, white balance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width_px: int = Field(1024, ge=64, le=8192)
    height_px: int = Field(768, ge=64, le=8192)
    # 8 bits give uint8 frames, more give uint16 (values up to 2**bits - 1).
    bit_depth: Literal[8, 10, 12, 14, 16] = 8
    exposure_ms: float = Field(20.0, gt=0)
    # Electrons a perfect white reflector gives per pixel at 20 ms; the 285 nm oxide
    # reflects 17 / 14 / 30 % in R / G / B, so its blue sits near 3/4 of the full well.
    white_electrons_20ms: float = Field(21000.0, gt=0)
    read_noise_e: float = Field(6.0, ge=0)
    full_well_e: float = Field(10000.0, gt=0)
    # Illumination: radial fall-off at the frame corner, a hot spot off the optical axis
    # (fraction of the half-width), and a linear gradient across the frame.
    vignetting: float = Field(0.12, ge=0, lt=1, description="fall-off at the frame corner")
    illumination_offset: tuple[float, float] = (0.08, -0.05)
    illumination_gradient: float = Field(0.03, ge=0, lt=0.5)
    # Veiling glare as a share of the substrate signal: it lowers measured contrast by
    # 1/(1+flare), the 15-25 % shortfall against the ideal model that labs measure.
    flare: float = Field(0.15, ge=0, lt=1)
    # Light a step edge of a thick crystal scatters out of the objective: its edges and
    # terrace steps show as dark lines (the full darkening for steps of 100 nm and more).
    edge_scatter: float = Field(0.5, ge=0, le=1)
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # What leaves the camera: linear values (for measuring contrast), or sRGB-encoded with
    # a colour-saturation matrix, as consumer cameras and JPEG files deliver.
    encoding: Literal["linear", "srgb"] = "linear"
    saturation: float = Field(1.0, gt=0, le=3)
    jpeg_quality: int | None = Field(None, ge=10, le=100)

    @model_validator(mode="after")
    def _jpeg_needs_8_bits(self) -> ImagingSpec:
        if self.jpeg_quality is not None and self.bit_depth != 8:
            raise ValueError(f"jpeg_quality needs bit_depth 8, got bit_depth {self.bit_depth}")
        return self

    @property
    def linear(self) -> bool:
        return self.encoding == "linear"


class StageSpec(BaseModel):
    """Motion timing of the simulated stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    xy_speed_um_s: float = Field(20000.0, gt=0)
    xy_settle_ms: float = Field(20.0, ge=0)
    z_speed_um_s: float = Field(2000.0, gt=0)
    # Chip surface height: z_surface = focus_z_um + tilt * (x, y) in um per mm + a bow
    # (a chip that bends: bow * r^2, r in mm from bow_centre_um), drifting with time
    # (thermal drift of the stand).
    focus_z_um: float = 0.0
    tilt_x_um_per_mm: float = 0.0
    tilt_y_um_per_mm: float = 0.0
    bow_um_per_mm2: float = 0.0
    bow_centre_um: tuple[float, float] = (2500.0, 2500.0)
    focus_drift_um_per_min: float = 0.0


class FaultSpec(BaseModel):
    """Faults the simulated devices inject, for testing that faults surface and that the
    fault policy (`[hardware.fault_policy]`) handles them.

    Each fault starts at the n-th move or frame (`*_on_*`, counted from 1) and lasts for
    `*_count` moves or frames (None: for ever from then on), so a transient fault that heals
    (a bounded retry makes sense) and a permanent one are both expressible.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    xy_fail_on_move: int | None = Field(None, ge=1, description="n-th XY move raises")
    xy_fail_count: int | None = Field(None, ge=1, description="how many moves raise")
    snap_fail_on_frame: int | None = Field(
        None, ge=1, description="n-th snap raises a camera timeout at once"
    )
    snap_fail_count: int | None = Field(None, ge=1, description="how many snaps raise")
    xy_stuck_on_move: int | None = Field(
        None, ge=1, description="from the n-th XY move on, the stage reports busy for ever"
    )
    xy_stuck_count: int | None = Field(None, ge=1, description="how many moves stick")
    # A move that never arrives: the stage stops part way (a motor stall, a snagged cable)
    # and stays busy until it is stopped; the wait for it times out.
    xy_stall_on_move: int | None = Field(None, ge=1, description="n-th XY move stalls")
    xy_stall_count: int | None = Field(None, ge=1, description="how many moves stall")
    z_fail_on_move: int | None = Field(None, ge=1, description="n-th focus move raises")
    z_fail_count: int | None = Field(None, ge=1, description="how many focus moves raise")
    # A stuck or stalled stage that only homing cures (lost steps, encoder error): every
    # move sticks once the fault has struck, until `home()`; then the fault is spent.
    xy_fault_until_homed: bool = False
    # A camera that hangs: the snap blocks `snap_hang_s`, then its driver gives up with
    # a timeout (what a camera that never delivers the frame does).
    snap_hang_on_frame: int | None = Field(None, ge=1, description="n-th snap hangs")
    snap_hang_count: int | None = Field(None, ge=1, description="how many snaps hang")
    snap_hang_s: float = Field(0.2, ge=0, le=60)
    # A camera error that is not a timeout (a readout or transfer error reported at once).
    snap_error_on_frame: int | None = Field(None, ge=1, description="n-th snap errs")
    snap_error_count: int | None = Field(None, ge=1, description="how many snaps err")
    # A corrupt frame, delivered as if good: black (a dropped frame), truncated (a partial
    # transfer: the rows after the first part are zero), or saturated (a blown exposure).
    corrupt_on_frame: int | None = Field(None, ge=1, description="n-th frame is corrupt")
    corrupt_count: int | None = Field(None, ge=1, description="how many frames are corrupt")
    corrupt_kind: Literal["black", "truncated", "saturated"] = "black"

    @staticmethod
    def hits(n: int, start: int | None, count: int | None) -> bool:
        """Whether the n-th move or frame falls in a fault's window."""
        return start is not None and n >= start and (count is None or n < start + count)


class ReplayConfig(BaseModel):
    """`[replay]`: a recorded scan to serve fields of view from (backend "replay")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mosaic: Path | None = Field(None, description="a mosaic's JSON sidecar")
    tiles: Path | None = Field(None, description="a folder with tiles.csv and tiles.json")
    width_px: int = Field(1024, ge=64, le=8192)
    height_px: int = Field(768, ge=64, le=8192)
    stage: StageSpec = StageSpec()

    @model_validator(mode="after")
    def _one_source(self) -> ReplayConfig:
        if (self.mosaic is None) == (self.tiles is None):
            raise ValueError("give exactly one of mosaic = <sidecar.json> or tiles = <folder>")
        return self


class SimulatorConfig(BaseModel):
    """The `[simulator]` section: seed, chip, imaging, stages, faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 1
    # Draw this chip's oxide, illumination, flare, white balance, exposure and tilt from
    # the seed (simulators.conditions), so that a set of chips is diverse.
    vary_conditions: bool = False
    chip: ChipSpec = ChipSpec()
    imaging: ImagingSpec = ImagingSpec()
    stage: StageSpec = StageSpec()
    faults: FaultSpec = FaultSpec()
    # The objectives on the simulated turret as they really are (optics, true offsets);
    # empty: 1x, the scanning objective, 20x and 50x (simulators.turret.default_turret).
    turret: list[SimObjective] = []

    @model_validator(mode="after")
    def _white_balance_positive(self) -> SimulatorConfig:
        if any(g <= 0 for g in self.imaging.white_balance):
            raise ValueError(
                f"imaging.white_balance must be positive, got {self.imaging.white_balance}"
            )
        return self
