"""The scan's overview map: every tile stitched at low resolution, every hit drawn on it.

The scan worker keeps a downsampled sRGB preview of each tile (`save_tile_preview`) and,
when asked, the full-resolution tile (`save_full_tile`); the map is rebuilt from those and
the catalogue (`render_overview`), at the scan's end and by `flakescan overview SCAN`, so a
flake's notes or a re-analysis show on it without scanning again. The full-resolution
mosaic is a tiled, pyramidal OME-TIFF written by tifffile (`write_ome_tiff`), streamed from a
memory-mapped canvas so a chip larger than memory still stitches.

Tiles are placed by their recorded stage position; where tiles overlap, each pixel is taken
from the tile whose centre is nearest (the tile's own grid cell), so seams sit mid-overlap.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from flakescan.db.models import Flake, Scan, Tile
from flakescan.hardware.frame import Frame
from flakescan.inference.annotate import HitMark, draw_hits, draw_legend, draw_scale_bar
from flakescan.simulators.tone import srgb_encode

__all__ = [
    "OverviewInfo",
    "preview_path",
    "render_overview",
    "save_full_tile",
    "save_tile_preview",
    "scan_folder",
    "write_ome_tiff",
]

_WHITE_OVER_WAFER = 1.6  # display white point, in units of the wafer's brightest channel


def scan_folder(state_images: Path, scan_id: int) -> Path:
    """Where a scan's pictures live: thumbnails, previews, tiles, the overview."""
    return state_images / f"scan-{scan_id}"


def preview_path(folder: Path, tile_index: int) -> Path:
    return folder / "previews" / f"tile{tile_index:04d}.png"


def _full_tile_path(folder: Path, tile_index: int) -> Path:
    return folder / "tiles" / f"tile{tile_index:04d}.tif"


def _display_white(image: np.ndarray, background: tuple[float, ...]) -> float:
    """One white point per chip, not per tile, so the map has no patchwork of exposures:
    a fixed multiple of the wafer colour; the tile's own highlights when there is none."""
    wafer = max(background) if background else 0.0
    if wafer > 0:
        return _WHITE_OVER_WAFER * wafer
    return max(float(np.percentile(image[::4, ::4], 99.5)), 1e-6)


def save_tile_preview(
    frame: Frame, background: tuple[float, ...], folder: Path, um_per_px: float
) -> Path:
    """A tile's preview at about `um_per_px` (block mean, then sRGB), for the map."""
    image = frame.linear_image()
    factor = max(1, round(um_per_px / frame.pixel_size_um))
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    small = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).mean(axis=(1, 3))
    white = _display_white(image, background)
    encoded = (255 * srgb_encode(np.clip(small / white, 0, 1))).astype(np.uint8)
    path = preview_path(folder, frame.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encoded[..., :3] if encoded.shape[-1] >= 3 else encoded[..., 0]).save(path)
    return path


def save_full_tile(frame: Frame, folder: Path) -> Path:
    """The tile as the camera gave it (linear values, compressed TIFF), for the mosaic."""
    import tifffile

    path = _full_tile_path(folder, frame.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(frame.image), compression="zlib")
    return path


@dataclass(frozen=True)
class OverviewInfo:
    path: Path
    size_px: tuple[int, int]
    um_per_px: float
    tiles: int
    tiles_missing: int  # tiles of the catalogue whose preview is not on disk
    flakes: int


@dataclass(frozen=True)
class _Placement:
    index: int
    x_um: float
    y_um: float


def _scan_rows(engine: Engine, scan_id: int) -> tuple[Scan, list[_Placement], list[Flake]]:
    with Session(engine, expire_on_commit=False) as s:
        scan = s.get(Scan, scan_id)
        if scan is None:
            raise KeyError(f"no scan with id {scan_id}")
        tiles = [
            _Placement(t.tile_index, t.x_um, t.y_um)
            for t in s.scalars(
                select(Tile).where(Tile.scan_id == scan_id).order_by(Tile.tile_index)
            )
        ]
        flakes = list(s.scalars(select(Flake).where(Flake.scan_id == scan_id).order_by(Flake.id)))
        s.expunge_all()
    return scan, tiles, flakes


def _extent(scan: Scan, tiles: list[_Placement]) -> tuple[float, float, float, float]:
    half_w, half_h = scan.fov_width_um / 2, scan.fov_height_um / 2
    xs = [t.x_um for t in tiles] or [(scan.region_x0_um + scan.region_x1_um) / 2]
    ys = [t.y_um for t in tiles] or [(scan.region_y0_um + scan.region_y1_um) / 2]
    return (
        min(scan.region_x0_um, min(xs) - half_w),
        min(scan.region_y0_um, min(ys) - half_h),
        max(scan.region_x1_um, max(xs) + half_w),
        max(scan.region_y1_um, max(ys) + half_h),
    )


@dataclass(frozen=True)
class _Canvas:
    """A mosaic's pixel grid on the stage: origin (um), scale, and the tiles on it."""

    origin_um: tuple[float, float]
    um_per_px: float
    fov_um: tuple[float, float]
    tiles: list[_Placement]

    def owned(self, k: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        """Which pixels of the window (top, left, h, w) tile k owns: those nearer its
        centre than any other tile's (Chebyshev distance in fields of view, ties to the
        earlier tile), i.e. its grid cell on a regular grid."""
        fw, fh = self.fov_um
        ys = self.origin_um[1] + (top + np.arange(h) + 0.5) * self.um_per_px
        xs = self.origin_um[0] + (left + np.arange(w) + 0.5) * self.um_per_px
        me = self.tiles[k]

        def dist(t: _Placement) -> np.ndarray:
            return np.maximum(np.abs(ys - t.y_um)[:, None] / fh, np.abs(xs - t.x_um)[None, :] / fw)

        mine = dist(me)
        keep = np.ones((h, w), bool)
        for j, t in enumerate(self.tiles):
            if j == k or abs(t.x_um - me.x_um) >= 2 * fw or abs(t.y_um - me.y_um) >= 2 * fh:
                continue
            other = dist(t)
            keep &= (mine < other) | ((mine == other) & (k < j))
        return keep

    def paste(self, canvas: np.ndarray, k: int, tile: np.ndarray) -> None:
        """Put tile k (already at the canvas scale) where it belongs and owns the pixels."""
        t = self.tiles[k]
        h, w = tile.shape[:2]
        left = round((t.x_um - self.origin_um[0]) / self.um_per_px - w / 2)
        top = round((t.y_um - self.origin_um[1]) / self.um_per_px - h / 2)
        cy0, cx0 = max(top, 0), max(left, 0)
        cy1, cx1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
        if cy1 <= cy0 or cx1 <= cx0:
            return
        part = tile[cy0 - top : cy1 - top, cx0 - left : cx1 - left]
        mine = self.owned(k, cy0, cx0, cy1 - cy0, cx1 - cx0)
        region = canvas[cy0:cy1, cx0:cx1]
        region[mine] = part.reshape(*mine.shape, -1)[mine].reshape(region[mine].shape)


def _marks(flakes: list[Flake]) -> list[HitMark]:
    return [
        HitMark(
            label=str(f.id) + (" *" if f.favourite else "") + (" used" if f.used else ""),
            flake_class=f.flake_class,
            outline_um=[tuple(p) for p in json.loads(f.outline_json or "[]")],
            bbox_um=(f.bbox_x0_um, f.bbox_y0_um, f.bbox_x1_um, f.bbox_y1_um),
            centre_um=(f.x_um, f.y_um),
            axis_angle_deg=f.axis_angle_deg,
        )
        for f in flakes
    ]


def render_overview(
    engine: Engine,
    scan_id: int,
    folder: Path,
    out: Path | None = None,
    um_per_px: float | None = None,
    max_side_px: int = 4096,
    marks: bool = True,
) -> OverviewInfo:
    """Stitch the scan's tile previews and draw its hits (outline in the class colour,
    flake id, crystal axis), with a legend and a scale bar (`marks=False`: the bare
    mosaic, for figures). Written as a PNG."""
    scan, tiles, flakes = _scan_rows(engine, scan_id)
    x0, y0, x1, y1 = _extent(scan, tiles)
    if um_per_px is None:
        um_per_px = float(json.loads(scan.settings_json or "{}").get("overview_um_per_px", 4.0))
    # A map people can open: at most `max_side_px` on its long side.
    um_per_px = max(um_per_px, max(x1 - x0, y1 - y0) / max_side_px)
    shape = (max(1, math.ceil((y1 - y0) / um_per_px)), max(1, math.ceil((x1 - x0) / um_per_px)))
    canvas = np.zeros((*shape, 3), np.uint8)
    present = [t for t in tiles if preview_path(folder, t.index).exists()]
    grid = _Canvas((x0, y0), um_per_px, (scan.fov_width_um, scan.fov_height_um), present)
    size = (round(scan.fov_width_um / um_per_px), round(scan.fov_height_um / um_per_px))
    for k, t in enumerate(present):
        preview = Image.open(preview_path(folder, t.index)).convert("RGB")
        if preview.size != size:  # previews are whole blocks of camera pixels
            preview = preview.resize(size, Image.Resampling.BILINEAR)
        grid.paste(canvas, k, np.asarray(preview))
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    if marks:
        _draw_marks(draw, im.size, scan, flakes, (x0, y0), um_per_px, len(present))
    out = out or folder / "overview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    im.save(tmp)
    tmp.replace(out)  # a reader (the dashboard) never sees half a file
    return OverviewInfo(
        out, im.size, um_per_px, len(present), len(tiles) - len(present), len(flakes)
    )


def _draw_marks(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    scan: Scan,
    flakes: list[Flake],
    origin: tuple[float, float],
    um_per_px: float,
    tiles_present: int,
) -> None:
    x0, y0 = origin
    chip = json.loads(scan.settings_json or "{}").get("chip_outline")
    if chip and len(chip["vertices_um"]) >= 3:  # where the pre-pass found the chip
        pts = [((x - x0) / um_per_px, (y - y0) / um_per_px) for x, y in chip["vertices_um"]]
        draw.line([*pts, pts[0]], fill=(255, 255, 255), width=1)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x - x0) / um_per_px, (y - y0) / um_per_px

    draw_hits(draw, _marks(flakes), to_px, line_width=1 if um_per_px > 2 else 2)
    counts: dict[int, int] = {}
    for f in flakes:
        counts[f.flake_class] = counts.get(f.flake_class, 0) + 1
    draw_legend(draw, (6, 6), counts)
    draw.text(
        (6, size[1] - 16),
        f"scan {scan.id}  chip {scan.chip_id}  {scan.status}  "
        f"{tiles_present}/{scan.tiles_planned} tiles",
        fill=(255, 255, 255),
    )
    draw_scale_bar(draw, size, um_per_px)


def write_ome_tiff(engine: Engine, scan_id: int, folder: Path, out: Path) -> dict:
    """The full-resolution mosaic of a scan kept with `keep_tiles`: a tiled, pyramidal
    OME-TIFF (levels 1, 1/2, 1/4 ... down to ~1000 px) with the pixel size in its metadata."""
    import tifffile

    scan, tiles, _ = _scan_rows(engine, scan_id)
    present = [t for t in tiles if _full_tile_path(folder, t.index).exists()]
    if not present:
        raise FileNotFoundError(
            f"scan {scan_id} kept no full-resolution tiles in {folder / 'tiles'} "
            "(start it with keep_tiles, or set [scan] keep_tiles = true)"
        )
    px = scan.pixel_size_um
    x0, y0, x1, y1 = _extent(scan, present)
    shape = (math.ceil((y1 - y0) / px), math.ceil((x1 - x0) / px))
    first = tifffile.imread(_full_tile_path(folder, present[0].index))
    channels = 1 if first.ndim == 2 else first.shape[-1]
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmpdir:
        canvas = np.lib.format.open_memmap(
            Path(tmpdir) / "canvas.npy", mode="w+", dtype=first.dtype, shape=(*shape, channels)
        )
        grid = _Canvas((x0, y0), px, (scan.fov_width_um, scan.fov_height_um), present)
        for k, t in enumerate(present):
            tile = tifffile.imread(_full_tile_path(folder, t.index))
            grid.paste(canvas, k, tile[..., None] if tile.ndim == 2 else tile)
        levels = max(1, int(math.log2(max(shape) / 1000)) + 1) if max(shape) > 1000 else 1
        meta = {
            "axes": "YXS" if channels > 1 else "YX",
            "PhysicalSizeX": px,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": px,
            "PhysicalSizeYUnit": "µm",
            "Name": f"flakescan scan {scan_id} chip {scan.chip_id}",
        }
        data = canvas if channels > 1 else canvas[..., 0]
        out.parent.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffWriter(out, bigtiff=True, ome=True) as tif:
            options = {
                "tile": (512, 512),
                "compression": "zlib",
                "photometric": "rgb" if channels == 3 else "minisblack",
            }
            tif.write(data, subifds=levels - 1, metadata=meta, **options)
            level = data
            for _ in range(levels - 1):
                level = level[::2, ::2]
                tif.write(np.ascontiguousarray(level), subfiletype=1, **options)
        del canvas
    return {"path": str(out), "shape": list(shape), "levels": levels, "tiles": len(present)}
