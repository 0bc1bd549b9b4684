"""The reciprocal-space grid of the phase-retrieval models, and what is measured on it.

numpy only: the simulator, the trainer and the served model (`phase_retrieval`) all use
these functions, so a grid index, a density or an error means the same everywhere.

Grid. Reflections h = (h, k, l) with -6 <= h, k, l <= 6 sit at array index h + 6 of a
(13, 13, 13) array. The Friedel mate -h of index i is index 12 - i on every axis, i.e. the
array flipped on all three axes (in C order: flat index 2196 - n). F(000) is never a model
input or target (it is not measured; its phase is 0).

Conventions (Dans_Diffraction's). F(h) = sum_j f_j occ_j DW_j exp(+2 pi i h.x_j), so a
structure shifted by t has F(h) exp(2 pi i h.t), the inverted structure (x -> -x) has
conj F(h), and the density is

    rho(x) = (1/V) sum_h F(h) exp(-2 pi i h.x),

a *forward* `fftn` of F placed at index h mod n on an n^3 grid of fractional coordinates
x = m / n, divided by V. The 13^3 series is truncated: a separable Hann taper
w(h) = prod cos^2(pi h_i / 14) is applied before the transform (`taper`), and densities are
compared without F(000) (mean-zero maps), so a constant does not hide errors.

Ambiguities. Amplitudes fix a structure only up to (a) a translation t (phases change by
2 pi h.t) and (b) inversion (all phases negated, = the Friedel-conjugate set). Every
comparison here is therefore made after the best alignment: `align_phases` finds the sign
s in {+1, -1} and the shift t maximising sum_h w_h cos(phi_pred - s phi_true - 2 pi h.t)
(an FFT over a fine grid of t, then Newton refinement), and the errors, the loss and the
density R-factor are measured on s (phi_pred - 2 pi h.t), the prediction moved into the
true structure's frame. `canonical_origin` gives labels a definite origin as well: the
highest maximum of the tapered density is moved to x = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "GRID",
    "N_MAX",
    "PhaseScores",
    "align_phases",
    "apply_alignment",
    "canonical_origin",
    "decode_phases",
    "density",
    "friedel_mate",
    "grid_hkl",
    "model_input",
    "r_factor",
    "score_phases",
    "symmetrise_friedel",
    "taper",
    "wrap",
]

N_MAX = 6
GRID = 2 * N_MAX + 1  # 13 points per axis


def grid_hkl(n_max: int = N_MAX) -> np.ndarray:
    """(G, G, G, 3) integer (h, k, l) of every grid point, G = 2 n_max + 1."""
    r = np.arange(-n_max, n_max + 1)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1)


def friedel_mate(grid: np.ndarray) -> np.ndarray:
    """The value at -h for every h: the array flipped on its last three axes."""
    return grid[..., ::-1, ::-1, ::-1]


def wrap(phase: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(phase) + np.pi) % (2 * np.pi) - np.pi


def taper(n_max: int = N_MAX) -> np.ndarray:
    """Separable Hann taper prod_i cos^2(pi h_i / (2 (n_max + 1))): 1 at h = 0, ~0.05 at 6."""
    h = np.arange(-n_max, n_max + 1)
    w = np.cos(np.pi * h / (2 * (n_max + 1))) ** 2
    return w[:, None, None] * w[None, :, None] * w[None, None, :]


def symmetrise_friedel(amplitudes: np.ndarray) -> np.ndarray:
    """|F| on the grid made Friedel-symmetric: mean of |F(h)| and |F(-h)| where both are
    given (> 0), else whichever is."""
    a = np.asarray(amplitudes, dtype=np.float64)
    b = friedel_mate(a)
    both = (a > 0) & (b > 0)
    return np.where(both, 0.5 * (a + b), np.maximum(a, b))


def model_input(amplitudes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n, 13, 13, 13) |F| and measured-mask -> (n, 2, 13, 13, 13) float32 network input.

    Channel 0: |F| / sqrt(mean |F|^2 over the measured reflections), so any intensity scale
    gives the same input; 0 where not measured and at F(000). Channel 1: the mask (1 where
    measured, i.e. inside the limiting sphere for simulated data), which tells a missing
    reflection from a weak one.
    """
    a = np.asarray(amplitudes, dtype=np.float64)
    m = np.asarray(mask, dtype=bool).copy()
    if a.ndim == 3:
        a, m = a[None], m[None]
    if a.shape[1:] != (GRID, GRID, GRID) or m.shape != a.shape:
        raise ValueError(
            f"model_input expects (n, {GRID}, {GRID}, {GRID}) amplitudes and mask, "
            f"got {a.shape} and {m.shape}"
        )
    m[:, N_MAX, N_MAX, N_MAX] = False
    a = np.where(m, a, 0.0)
    n = np.maximum(m.reshape(len(m), -1).sum(axis=1), 1)
    rms = np.sqrt((a.reshape(len(a), -1) ** 2).sum(axis=1) / n)
    a = a / np.maximum(rms, 1e-12)[:, None, None, None]
    return np.ascontiguousarray(np.stack([a, m], axis=1), dtype=np.float32)


def decode_phases(output: np.ndarray) -> np.ndarray:
    """(n, 2, 13, 13, 13) network output (cos, sin) -> phases (n, 13, 13, 13) in radians."""
    out = np.asarray(output, dtype=np.float64)
    return np.arctan2(out[:, 1], out[:, 0])


def _on_fft_grid(values: np.ndarray, n: int) -> np.ndarray:
    """(..., G, G, G) grid values placed at index h mod n of an (..., n, n, n) array."""
    g = values.shape[-1]
    n_max = (g - 1) // 2
    if n < g:
        raise ValueError(f"an FFT grid of {n} cannot hold {g} reflections per axis")
    out = np.zeros((*values.shape[:-3], n, n, n), dtype=np.result_type(values, np.complex64))
    out[..., :g, :g, :g] = values
    return np.roll(out, (-n_max, -n_max, -n_max), axis=(-3, -2, -1))


def density(
    structure_factors: np.ndarray,
    n: int = 24,
    *,
    volume: float = 1.0,
    tapered: bool = True,
    include_f000: bool = False,
) -> np.ndarray:
    """rho(x) = (1/V) sum_h F(h) exp(-2 pi i h.x) at x = m / n: (..., 13, 13, 13) complex
    -> (..., n, n, n) real. Hann-tapered and without F(000) unless told otherwise."""
    f = np.array(structure_factors, dtype=np.complex128)
    g = f.shape[-1]
    if tapered:
        f = f * taper((g - 1) // 2)
    if not include_f000:
        c = (g - 1) // 2
        f[..., c, c, c] = 0
    rho = np.fft.fftn(_on_fft_grid(f, n), axes=(-3, -2, -1))
    return rho.real / volume


def r_factor(rho_pred: np.ndarray, rho_true: np.ndarray) -> np.ndarray:
    """Density R-factor sum |rho_pred - rho_true| / sum |rho_true| over the grid (per map)."""
    p = np.asarray(rho_pred, dtype=np.float64)
    t = np.asarray(rho_true, dtype=np.float64)
    axes = (-3, -2, -1)
    return np.abs(p - t).sum(axis=axes) / np.maximum(np.abs(t).sum(axis=axes), 1e-300)


def _fourier_peaks(coef: np.ndarray, n: int, candidates: int = 8, steps: int = 20):
    """Maximise g(x) = Re sum_h C(h) exp(-2 pi i h.x) over x in the unit cell, per map.

    `coef` (N, G, G, G) complex. The FFT on an n^3 grid gives the start points (the
    `candidates` highest grid values that are local maxima); each is refined on the exact
    Fourier series by damped Newton steps (gradient steps where g is not concave), every
    step accepted only if g rises; the best refined one wins. Returns (x (N, 3) in
    [0, 1), g(x) (N,)).
    """
    from scipy import ndimage

    hkl = grid_hkl((coef.shape[-1] - 1) // 2).reshape(-1, 3).astype(np.float64)
    flat = coef.reshape(len(coef), -1)
    keep = np.abs(flat).max(axis=0) > 0
    hkl, flat = hkl[keep], flat[:, keep]
    xs = np.zeros((len(coef), 3))
    best = np.full(len(coef), -np.inf)
    for i in range(len(coef)):
        c = flat[i]

        def value(x: np.ndarray, c: np.ndarray = c) -> float:
            return float((c * np.exp(-2j * np.pi * (hkl @ x))).real.sum())

        g = np.fft.fftn(_on_fft_grid(coef[i], n)).real
        peak = g == ndimage.maximum_filter(g, size=3, mode="wrap")
        idx = np.flatnonzero(peak)
        idx = idx[np.argsort(g.ravel()[idx])[::-1][:candidates]]
        for start in np.stack(np.unravel_index(idx, g.shape), axis=1) / n:
            x, v = start.astype(np.float64), value(start)
            for _ in range(steps):
                e = c * np.exp(-2j * np.pi * (hkl @ x))
                grad = 2 * np.pi * (e.imag @ hkl)
                hess = -(4 * np.pi**2) * (hkl.T * e.real) @ hkl
                if np.all(np.linalg.eigvalsh(hess) < 0):
                    step = -np.linalg.solve(hess, grad)
                else:
                    step = grad / max(np.linalg.norm(grad), 1e-300) * (0.25 / n)
                limit = 1.0 / n
                if np.abs(step).max() > limit:
                    step *= limit / np.abs(step).max()
                for _ in range(8):  # backtrack until g rises
                    v_new = value(x + step)
                    if v_new > v:
                        break
                    step = step / 2
                else:
                    break
                x, v = x + step, v_new
                if np.abs(step).max() < 1e-11:
                    break
            if v > best[i]:
                best[i], xs[i] = v, np.mod(x, 1.0)
    return xs, best


def canonical_origin(structure_factors: np.ndarray, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Move the highest maximum of the tapered density to the origin.

    F'(h) = F(h) exp(-2 pi i h.x0), x0 the refined position of the highest maximum of the
    Hann-tapered map of these reflections (F(000) does not move a maximum). A rigid shift of
    the structure changes F but not F' (up to the refinement's 1e-9). Ties (symmetry-related
    heavy atoms, broken by the displacements) are settled by the higher refined peak, so the
    rule is exact but not continuous in the structure. Returns (F', x0 (N, 3)).
    """
    f = np.asarray(structure_factors, dtype=np.complex128)
    single = f.ndim == 3
    if single:
        f = f[None]
    g = f.shape[-1]
    x0, _ = _fourier_peaks(f * taper((g - 1) // 2), n)
    hkl = grid_hkl((g - 1) // 2).astype(np.float64)
    shifted = f * np.exp(-2j * np.pi * np.einsum("hklc,nc->nhkl", hkl, x0))
    return (shifted[0], x0[0]) if single else (shifted, x0)


def align_phases(
    pred: np.ndarray, true: np.ndarray, weights: np.ndarray, n: int = 48
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best origin shift t and enantiomorph sign s of predicted against true phases.

    Maximises sum_h w_h cos(phi_pred - s phi_true - 2 pi h.t) over t (FFT over an n^3 grid,
    then Newton) for s = +1 and s = -1; weights are 0 where a reflection does not count.
    Returns (t (N, 3), s (N,), the score normalised by sum w, in [-1, 1]).
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if p.ndim == 3:
        p, t, w = p[None], t[None], w[None]
    total = np.maximum(w.reshape(len(w), -1).sum(axis=1), 1e-300)
    shifts, scores = [], []
    for sign in (1.0, -1.0):
        coef = w * np.exp(1j * (p - sign * t))
        x, val = _fourier_peaks(coef, n, candidates=4)
        shifts.append(x)
        scores.append(val / total)
    use_minus = scores[1] > scores[0]
    shift = np.where(use_minus[:, None], shifts[1], shifts[0])
    sign = np.where(use_minus, -1.0, 1.0)
    return shift, sign, np.maximum(scores[0], scores[1])


def apply_alignment(pred: np.ndarray, shift: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Predicted phases moved into the true structure's frame: s (phi - 2 pi h.t)."""
    p = np.asarray(pred, dtype=np.float64)
    hkl = grid_hkl((p.shape[-1] - 1) // 2).astype(np.float64)
    ht = np.einsum("hklc,nc->nhkl", hkl, np.asarray(shift, dtype=np.float64).reshape(-1, 3))
    out = np.asarray(sign, dtype=np.float64).reshape(-1, 1, 1, 1) * (p - 2 * np.pi * ht)
    return wrap(out)


@dataclass(frozen=True)
class PhaseScores:
    """Per-sample scores of predicted phases against the truth, after alignment.

    loss: 1 - max_{t,s} sum w cos(err) / sum w with w = |F| (the training loss at weight
    power 1); mae_weighted_deg / mae_deg: mean |phase error| weighted by |F| / unweighted,
    over the reflections that count (unweighted: not the extinct ones, whose phase is
    undefined); r_factor: density R-factor of the map from the true
    amplitudes with the aligned predicted phases against the map from the true phases
    (tapered, F(000) left out, 24^3 grid).
    """

    loss: np.ndarray
    mae_weighted_deg: np.ndarray
    mae_deg: np.ndarray
    r_factor: np.ndarray
    shift: np.ndarray
    sign: np.ndarray

    def summary(self) -> dict:
        def stats(v: np.ndarray) -> dict:
            return {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4)}

        return {
            "n": len(self.loss),
            "loss": stats(self.loss),
            "mae_weighted_deg": stats(self.mae_weighted_deg),
            "mae_deg": stats(self.mae_deg),
            "r_factor": stats(self.r_factor),
        }


def score_phases(
    pred: np.ndarray, true: np.ndarray, amplitudes: np.ndarray, mask: np.ndarray
) -> PhaseScores:
    """Scores of predicted phases (n, 13, 13, 13) against true ones on the masked grid
    (F(000) never counts), after the best origin / enantiomorph alignment."""
    a = np.asarray(amplitudes, dtype=np.float64)
    m = np.asarray(mask, dtype=bool).copy()
    if a.ndim == 3:
        pred, true, a, m = pred[None], true[None], a[None], m[None]
    m[:, N_MAX, N_MAX, N_MAX] = False
    w = np.where(m, a, 0.0)
    shift, sign, score = align_phases(pred, true, w)
    aligned = apply_alignment(pred, shift, sign)
    err = np.abs(wrap(aligned - true))
    wsum = np.maximum(w.reshape(len(w), -1).sum(axis=1), 1e-300)
    mae_w = (err * w).reshape(len(w), -1).sum(axis=1) / wsum
    # The unweighted mean skips extinct reflections (|F| < 1e-4 of the rms): no phase.
    rms = np.sqrt((w**2).reshape(len(w), -1).sum(1) / np.maximum(m.reshape(len(m), -1).sum(1), 1))
    defined = m & (a > 1e-4 * rms[:, None, None, None])
    cnt = np.maximum(defined.reshape(len(m), -1).sum(1), 1)
    mae = (err * defined).reshape(len(m), -1).sum(axis=1) / cnt
    rho_t = density(np.where(m, a * np.exp(1j * true), 0))
    rho_p = density(np.where(m, a * np.exp(1j * aligned), 0))
    return PhaseScores(
        loss=1.0 - score,
        mae_weighted_deg=np.rad2deg(mae_w),
        mae_deg=np.rad2deg(mae),
        r_factor=r_factor(rho_p, rho_t),
        shift=shift,
        sign=sign,
    )
