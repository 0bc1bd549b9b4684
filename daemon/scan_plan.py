"""A scan plan: a chip region tiled by fields of view, as a useq `MDASequence`.

useq-schema's `GridFromEdges` lays the tiles (snake order, overlap in %); this module adds
what a flake scan needs on top: the check that every tile centre lies within the travel
limits before anything moves, and tile *ownership*: with overlapping tiles one flake is seen
twice, and only the tile whose cell (the grid's Voronoi cell) holds its centroid keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import useq
from pydantic import AfterValidator

from flakescan.hardware.config import TravelLimits
from flakescan.hardware.errors import TravelLimitError

__all__ = ["MAX_TILES", "RegionUm", "ScanPlan"]

# A 25 x 25 mm chip at the seed's 5x field is about 3,000 tiles; far more is a typo (nm for um).
MAX_TILES = 100_000


def _ordered_region(v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    if v[0] >= v[2] or v[1] >= v[3]:
        raise ValueError(
            f"region_um must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {list(v)}"
        )
    return v


# A scan region in stage um, as config files and control requests give it.
RegionUm = Annotated[tuple[float, float, float, float], AfterValidator(_ordered_region)]


@dataclass(frozen=True)
class ScanPlan:
    """Tiles covering region_um = (x0, y0, x1, y1) with fields of view fov_um = (w, h)."""

    region_um: tuple[float, float, float, float]
    fov_um: tuple[float, float]
    overlap_pct: float
    z_um: float | None = None
    # The chip's outline (stage um): only tiles that meet it are scanned (useq's polygon
    # grid, laid on the region's bounding box like the rectangular one).
    polygon_um: tuple[tuple[float, float], ...] | None = None
    sequence: useq.MDASequence = field(init=False, repr=False)
    centres: np.ndarray = field(init=False, repr=False)  # (n, 2) in acquisition order

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.region_um
        n = self.count_tiles()
        if n > MAX_TILES:
            raise ValueError(
                f"region_um {list(self.region_um)} would take {n} tiles of "
                f"{self.fov_um[0]:.0f} x {self.fov_um[1]:.0f} um; at most {MAX_TILES} per scan"
            )
        grid: useq.GridFromEdges | useq.GridFromPolygon
        if self.polygon_um is not None:
            grid = useq.GridFromPolygon(
                vertices=list(self.polygon_um),
                overlap=self.overlap_pct,
                fov_width=self.fov_um[0],
                fov_height=self.fov_um[1],
                mode="row_wise_snake",
            )
        else:
            grid = useq.GridFromEdges(
                top=y1,
                left=x0,
                bottom=y0,
                right=x1,
                overlap=self.overlap_pct,
                fov_width=self.fov_um[0],
                fov_height=self.fov_um[1],
                mode="row_wise_snake",
            )
        # A fixed focus, when asked for, rides on one position without x, y.
        at_z = [useq.AbsolutePosition(z=self.z_um)] if self.z_um is not None else []
        seq = useq.MDASequence(grid_plan=grid, stage_positions=at_z)
        object.__setattr__(self, "sequence", seq)
        object.__setattr__(self, "centres", np.array([(p.x, p.y) for p in grid], float))

    def count_tiles(self) -> int:
        """Tiles the region needs, computed without laying them out (as useq counts them)."""
        (x0, y0, x1, y1), (sx, sy) = self.region_um, self.step_um

        def count(span: float, fov: float, step: float) -> int:
            return 1 if span <= fov else math.ceil((span - fov) / step) + 1

        return count(x1 - x0, self.fov_um[0], sx) * count(y1 - y0, self.fov_um[1], sy)

    @property
    def n_tiles(self) -> int:
        return len(self.centres)

    @property
    def step_um(self) -> tuple[float, float]:
        f = 1 - self.overlap_pct / 100
        return (self.fov_um[0] * f, self.fov_um[1] * f)

    def check_limits(self, limits: TravelLimits) -> None:
        """Refuse the plan (TravelLimitError) if any tile lies outside the travel limits."""
        for i, (x, y) in enumerate(self.centres):
            if not limits.contains_xy(x, y):
                raise TravelLimitError(
                    f"tile {i} at ({x:.1f}, {y:.1f}) um lies outside the travel limits "
                    f"x [{limits.x_min_um}, {limits.x_max_um}], "
                    f"y [{limits.y_min_um}, {limits.y_max_um}]; "
                    f"shrink region_um {list(self.region_um)}"
                )
        if self.z_um is not None and not limits.contains_z(self.z_um):
            raise TravelLimitError(
                f"scan z_um = {self.z_um} lies outside [{limits.z_min_um}, {limits.z_max_um}]"
            )

    def owner_of(self, x_um: float, y_um: float) -> int:
        """Index of the tile whose grid cell contains the point (nearest centre in steps)."""
        sx, sy = self.step_um
        d = np.maximum(
            np.abs(self.centres[:, 0] - x_um) / sx, np.abs(self.centres[:, 1] - y_um) / sy
        )
        return int(np.argmin(d))

    @staticmethod
    def tile_index(event: useq.MDAEvent) -> int:
        """The tile (grid position) an event of this plan's sequence images."""
        return int(event.index.get("g", 0))

    def as_settings(self) -> dict:
        """Everything that lays the tiles, exactly (a resumed scan lays them again)."""
        return {
            "region_um": list(self.region_um),
            "fov_um": list(self.fov_um),
            "overlap_pct": self.overlap_pct,
            "z_um": self.z_um,
            "polygon_um": [list(p) for p in self.polygon_um] if self.polygon_um else None,
        }

    @classmethod
    def from_settings(cls, d: dict) -> ScanPlan:
        polygon = d.get("polygon_um")
        return cls(
            region_um=tuple(d["region_um"]),  # type: ignore[arg-type]
            fov_um=tuple(d["fov_um"]),  # type: ignore[arg-type]
            overlap_pct=d["overlap_pct"],
            z_um=d.get("z_um"),
            polygon_um=tuple(tuple(p) for p in polygon) if polygon else None,
        )

    def describe(self) -> dict:
        return {
            "region_um": list(self.region_um),
            "polygon_um": [list(p) for p in self.polygon_um] if self.polygon_um else None,
            "fov_um": [round(v, 2) for v in self.fov_um],
            "overlap_pct": self.overlap_pct,
            "tiles": self.n_tiles,
        }
