"""Point-group operations on PACBED patterns and mistilts, and the tilt wedge they leave.

A library holds one symmetry wedge of mistilts only (66 tilts instead of 441 for 4mm at
1 mrad up to 10 mrad): an operation g of the zero-tilt pattern's point group maps the pattern
at tilt t onto the pattern at tilt g·t, P_{g·t}(k) = P_t(g⁻¹·k). This holds because the
averaging over one unit cell removes in-plane translations, so only the point group matters.

Frame: a pattern array is indexed [ix, iy] with axis 0 along kx and axis 1 along ky (abTEM's
order), square and of odd size with k = 0 at the centre pixel; a mistilt (mx, my) is in
mrad along the same x and y. Azimuth is atan2(my, mx) in degrees, counter-clockwise from +x
towards +y. Operations are signed permutation matrices acting on (x, y) column vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pacbed_systems import Symmetry

__all__ = [
    "apply_op",
    "group_ops",
    "in_wedge",
    "map_tilt",
    "to_wedge",
    "wedge_tilts",
]

_IDENTITY = np.eye(2, dtype=int)
_ROT90 = np.array([[0, -1], [1, 0]])  # (x, y) -> (-y, x)
_MIRROR_X = np.array([[-1, 0], [0, 1]])  # x -> -x
_MIRROR_Y = np.array([[1, 0], [0, -1]])  # y -> -y


def group_ops(symmetry: Symmetry) -> list[np.ndarray]:
    """The operations of a point group as 2x2 integer matrices, identity first."""
    if symmetry == "1":
        return [_IDENTITY.copy()]
    if symmetry == "2mm":
        return [_IDENTITY.copy(), _MIRROR_X.copy(), _MIRROR_Y.copy(), -_IDENTITY]
    if symmetry == "4mm":
        rotations = [np.linalg.matrix_power(_ROT90, k) for k in range(4)]
        return rotations + [r @ _MIRROR_Y for r in rotations]
    raise ValueError(f"symmetry = {symmetry!r}: expected '4mm', '2mm' or '1'")


def in_wedge(tilt: Sequence[float], symmetry: Symmetry, tol: float = 1e-9) -> bool:
    """Whether a tilt lies in the group's fundamental wedge (what a library stores)."""
    mx, my = float(tilt[0]), float(tilt[1])
    if symmetry == "4mm":
        return -tol <= my <= mx + tol
    if symmetry == "2mm":
        return mx >= -tol and my >= -tol
    return True


def wedge_tilts(
    max_mrad: float = 10.0, step_mrad: float = 1.0, symmetry: Symmetry = "4mm"
) -> list[tuple[float, float]]:
    """Grid of tilts over one wedge: for 4mm, 0 <= my <= mx <= max_mrad (66 at 1 / 10 mrad)."""
    if step_mrad <= 0:
        raise ValueError(f"step_mrad must be positive, got {step_mrad}")
    if max_mrad < 0:
        raise ValueError(f"max_mrad must not be negative, got {max_mrad}")
    n = int(np.floor(max_mrad / step_mrad + 1e-9))
    axis = [round(i * step_mrad, 9) for i in range(-n, n + 1)]
    return [(mx, my) for mx in axis for my in axis if in_wedge((mx, my), symmetry)]


def map_tilt(op: np.ndarray, tilt: Sequence[float]) -> tuple[float, float]:
    """The tilt g·t."""
    mx, my = op @ np.asarray(tilt, float)
    return float(mx) + 0.0, float(my) + 0.0  # + 0.0 turns -0.0 into 0.0


def to_wedge(tilt: Sequence[float], symmetry: Symmetry) -> tuple[np.ndarray, tuple[float, float]]:
    """An operation g and the wedge tilt w with g·w = tilt (the first g that fits)."""
    for op in group_ops(symmetry):
        w = map_tilt(np.linalg.inv(op).round().astype(int), tilt)
        if in_wedge(w, symmetry):
            return op, w
    raise AssertionError(f"no operation of {symmetry} maps {tuple(tilt)} into its wedge")


def apply_op(op: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """The pattern g acts on: out[k] = pattern[g⁻¹·k], exact (a re-indexing, no resampling).

    Works on the last two axes of an (..., n, n) array with n odd (k = 0 at the centre).
    """
    n = pattern.shape[-1]
    if pattern.shape[-2] != n or n % 2 != 1:
        raise ValueError(f"pattern must be square with odd size, got {pattern.shape[-2:]}")
    c = n // 2
    k = np.arange(n) - c
    kx, ky = np.meshgrid(k, k, indexing="ij")
    inv = np.linalg.inv(op).round().astype(int)
    src_x = inv[0, 0] * kx + inv[0, 1] * ky + c
    src_y = inv[1, 0] * kx + inv[1, 1] * ky + c
    return pattern[..., src_x, src_y]
