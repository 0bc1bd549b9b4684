"""The seed's four phase-retrieval models, their loss, and the grid's symmetry augmentation.

Input (n, 2, 13, 13, 13): `inference.phase_grid.model_input` (|F| over its rms on the
measured reflections, and the measured mask). Output (n, 2, 13, 13, 13): an unnormalised
vector (cos phi, sin phi) per reflection; the phase is atan2(sin, cos).

Friedel. For normal scattering F(-h) = conj F(h), so phi(-h) = -phi(h). The linear and
fully connected models see and predict only the Friedel half of the grid (h > 0 in C
order: the last 1098 of the 2197 flat indices; -h of flat index j is 2196 - j) and fill
the other half as its mirror, so their output is Friedel-exact by construction; the two
convolutional models see the whole grid and their output is symmetrised as the last layer
(cos(h) <- mean of cos(h), cos(-h); sin(h) <- mean of sin(h), -sin(-h)). Every exported
model thus answers phi(-h) = -phi(h) exactly.

Origin and enantiomorph. The amplitudes do not change if the structure is shifted by t
(phi(h) -> phi(h) + 2 pi h.t) or inverted (phi -> -phi). The loss is the best over both:

    loss = 1 - max_{s = +-1, t} sum_h w_h cos(phi_pred(h) - s phi_true(h) - 2 pi h.t) / sum_h w_h

The best s and t are found without gradient (`best_alignment`: one FFT of the weighted
phase differences per sample and sign over an M^3 grid of t, M = 32, then Newton steps on
the exact sum) and the loss is evaluated there (the gradient of a maximum is that of the
maximised term). The model may thus answer with any origin and either enantiomorph.
`mode="canonical"` keeps only the best over s and trusts the labels' canonical origin
(the highest density maximum at 0): the simpler but discontinuous target.

Weights. w_h = (|F(h)| / rms)^p over the reflections inside the limiting sphere (F(000)
never counts), p = 1 by default. By Parseval the density error is
integral_cell |rho_pred - rho_true|^2 = (2 / V) sum_h |F|^2 (1 - cos dphi): an |F|^2 weight
is exactly the map's mean square error, and unweighted phases of weak reflections barely
change the map (and are the worst measured). p = 1 sits between: strong reflections
dominate, weak ones still count.

Augmentation. Permuting the cell axes or reversing any of them is another valid crystal
(|Q| moves with the indices), and its structure factors are the permuted / flipped grid:
the 48 symmetries of the index cube act on inputs and labels alike and keep the canonical
origin at 0.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flakescan.inference.phase_grid import GRID

__all__ = [
    "CNN3",
    "MODEL_CHOICES",
    "FCPhase",
    "LinearPhase",
    "UNet3D",
    "augment",
    "best_alignment",
    "build_model",
    "describe",
    "friedel_symmetrise",
    "loss_weights",
    "phase_loss",
]

MODEL_CHOICES = ("linear", "fc", "cnn", "unet")
FLAT = GRID**3  # 2197
HALF = FLAT // 2  # 1098 reflections with h > 0
SYMMETRIES = [(p, f) for p in itertools.permutations(range(3)) for f in range(8)]


def friedel_symmetrise(out: torch.Tensor) -> torch.Tensor:
    """(n, 2, G, G, G) (cos, sin) made Friedel-exact: cos even, sin odd under h -> -h."""
    mate = torch.flip(out, dims=(2, 3, 4))
    c = 0.5 * (out[:, 0] + mate[:, 0])
    s = 0.5 * (out[:, 1] - mate[:, 1])
    return torch.stack([c, s], dim=1)


def _half_input(x: torch.Tensor) -> torch.Tensor:
    """(n, 2, G, G, G) -> (n, 2 * HALF): both channels on the Friedel half h > 0."""
    return x.flatten(2)[:, :, HALF + 1 :].flatten(1)


def _full_output(y: torch.Tensor) -> torch.Tensor:
    """(n, 2 * HALF) (cos, sin) on h > 0 -> (n, 2, G, G, G), phi(-h) = -phi(h), phi(0) = 0."""
    n = y.shape[0]
    c, s = y[:, :HALF], y[:, HALF:]
    one, zero = torch.ones_like(c[:, :1]), torch.zeros_like(c[:, :1])
    cf = torch.cat([torch.flip(c, dims=(1,)), one, c], dim=1)
    sf = torch.cat([-torch.flip(s, dims=(1,)), zero, s], dim=1)
    return torch.stack([cf, sf], dim=1).reshape(n, 2, GRID, GRID, GRID)


class LinearPhase(nn.Module):
    """Linear regression from the Friedel half of both input channels to (cos, sin) on
    that half, as a rank-`rank` factorisation (2196 -> rank -> 2196, no nonlinearity):
    still one linear map, 2196 x 2196 / 2 fewer weights. With a few dozen training
    structures the inputs span far fewer than `rank` directions, so nothing learnable is
    lost."""

    def __init__(self, rank: int = 256) -> None:
        super().__init__()
        self.down = nn.Linear(2 * HALF, rank, bias=False)
        self.up = nn.Linear(rank, 2 * HALF)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _full_output(self.up(self.down(_half_input(x))))


class FCPhase(nn.Module):
    """Three fully connected layers (2196 -> width -> width -> 2196, ReLU) on the half grid."""

    def __init__(self, width: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * HALF, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, 2 * HALF),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _full_output(self.net(_half_input(x)))


class CNN3(nn.Module):
    """Three 5x5x5 3D convolutions (2 -> width -> width -> 2), ReLU, zero padding: a
    13-reflection receptive field, so the centre sees the whole grid."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(2, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv3d(width, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv3d(width, 2, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return friedel_symmetrise(self.net(x))


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(),
    ]
    if dropout > 0:
        layers.append(nn.Dropout3d(dropout))
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """A 3D U-net (the seed's: convolution blocks down, transposed convolutions up, skip
    connections), with batch norm and dropout against the seed's overfitting. The grid is
    zero-padded 13 -> 16 (one before, two after), three levels 16 / 8 / 4 with width,
    2 width, 4 width channels, cropped back to 13 and Friedel-symmetrised."""

    def __init__(self, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        w = width
        self.enc1 = _block(2, w, 0.0)
        self.enc2 = _block(w, 2 * w, dropout)
        self.mid = _block(2 * w, 4 * w, dropout)
        self.up2 = nn.ConvTranspose3d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w, dropout)
        self.up1 = nn.ConvTranspose3d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w, 0.0)
        self.head = nn.Conv3d(w, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 2, 1, 2, 1, 2))
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2))
        m = self.mid(F.max_pool3d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        out = self.head(d1)[:, :, 1 : 1 + GRID, 1 : 1 + GRID, 1 : 1 + GRID]
        return friedel_symmetrise(out)


def build_model(name: str, width: int | None = None, dropout: float = 0.1) -> nn.Module:
    """One of MODEL_CHOICES; `width` is the rank (linear), hidden size (fc) or channels."""
    if name == "linear":
        return LinearPhase(rank=width or 256)
    if name == "fc":
        return FCPhase(width=width or 256, dropout=dropout)
    if name == "cnn":
        return CNN3(width=width or 32)
    if name == "unet":
        return UNet3D(width=width or 16, dropout=dropout)
    raise ValueError(f"model must be one of {', '.join(MODEL_CHOICES)}, got {name!r}")


def describe(name: str, width: int | None = None) -> str:
    """The architecture line of a model card."""
    text = {
        "linear": f"linear regression, Friedel half grid, rank {width or 256}",
        "fc": f"3-layer fully connected, Friedel half grid, hidden {width or 256}",
        "cnn": f"3-layer 3D CNN, 5^3 kernels, {width or 32} channels, Friedel-symmetrised",
        "unet": f"3D U-net 16/8/4, {width or 16} base channels, BN, Friedel-symmetrised",
    }
    return text[name]


def loss_weights(x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(n, G, G, G) weights (|F| / rms)^power on the measured reflections, 0 elsewhere
    (the input's mask has F(000) off)."""
    amp, mask = x[:, 0], x[:, 1]
    return amp.clamp_min(0).pow(power) * mask if power else mask


def _on_shift_grid(d: torch.Tensor, m: int) -> torch.Tensor:
    """(..., G, G, G) placed at index h mod m of (..., m, m, m) zeros (a scatter: torch.roll
    of the padded array costs more than the FFT)."""
    g = d.shape[-1]
    r = torch.arange(g) - (g - 1) // 2
    i = torch.remainder(r, m)
    flat = ((i[:, None, None] * m + i[None, :, None]) * m + i[None, None, :]).reshape(-1)
    lead = d.shape[:-3]
    big = torch.zeros((*lead, m**3), dtype=d.dtype)
    big[..., flat] = d.reshape(*lead, -1)
    return big.reshape(*lead, m, m, m)


_HKL = torch.stack(
    torch.meshgrid(
        *[torch.arange(-(GRID // 2), GRID // 2 + 1, dtype=torch.float64)] * 3, indexing="ij"
    ),
    dim=-1,
).reshape(-1, 3)


@torch.no_grad()
def best_alignment(
    zp: torch.Tensor,
    zt: torch.Tensor,
    weights: torch.Tensor,
    shift_grid: int = 32,
    newton_steps: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign s (n,) and shift t (n, 3) maximising sum w cos(phi_p - s phi_t - 2 pi h.t):
    the best point of an FFT over a shift_grid^3 grid, refined by Newton steps (kept only
    where the score is concave and the step stays inside one grid cell)."""
    w = weights.to(torch.complex128)
    d = torch.stack(
        [w * zp.to(torch.complex128) * zt.conj(), w * zp.to(torch.complex128) * zt], dim=1
    )
    grid = _on_shift_grid(d.to(torch.complex64), shift_grid)  # single precision to search
    c = torch.fft.fftn(grid, dim=(-3, -2, -1)).real
    best = c.flatten(1).argmax(dim=1)
    m3 = shift_grid**3
    sign = 1.0 - 2.0 * (best // m3).to(torch.float64)
    cell = best % m3
    t = (
        torch.stack(
            [cell // shift_grid**2, (cell // shift_grid) % shift_grid, cell % shift_grid], dim=1
        ).to(torch.float64)
        / shift_grid
    )
    coef = torch.where(sign[:, None] > 0, d[:, 0].flatten(1), d[:, 1].flatten(1))
    for _ in range(newton_steps):
        e = coef * torch.exp(-2j * torch.pi * (t @ _HKL.T))
        grad = 2 * torch.pi * (e.imag @ _HKL)
        hess = -(4 * torch.pi**2) * ((e.real[:, :, None] * _HKL).transpose(1, 2) @ _HKL)
        ok = torch.linalg.eigvalsh(hess).amax(dim=1) < 0
        step = -torch.linalg.solve(
            torch.where(ok[:, None, None], hess, -torch.eye(3, dtype=hess.dtype)), grad
        )
        ok &= step.abs().amax(dim=1) < 1.0 / shift_grid
        t = torch.where(ok[:, None], t + step, t)
    return sign, t


def phase_loss(
    out: torch.Tensor,
    phases: torch.Tensor,
    weights: torch.Tensor,
    mode: str = "invariant",
    shift_grid: int = 32,
) -> torch.Tensor:
    """Mean over the batch of 1 - (best weighted cosine of the phase error) (see module).

    out (n, 2, G, G, G) raw (cos, sin); phases (n, G, G, G) true, radians; weights
    (n, G, G, G) >= 0. "invariant": best over s = +-1 and t (`best_alignment`, found
    without gradient; the gradient of a maximum is that of the maximised term, so the
    loss is then evaluated at the found s, t); "canonical": best over s only."""
    u = F.normalize(out, dim=1, eps=1e-8)
    zp = torch.complex(u[:, 0], u[:, 1])
    zt = torch.polar(torch.ones_like(phases), phases)
    wsum = weights.sum(dim=(1, 2, 3)).clamp_min(1e-12)
    if mode == "canonical":
        plus = (weights * (zp * zt.conj()).real).sum(dim=(1, 2, 3))
        minus = (weights * (zp * zt).real).sum(dim=(1, 2, 3))
        score = torch.maximum(plus, minus) / wsum
    elif mode == "invariant":
        sign, t = best_alignment(zp.detach(), zt, weights, shift_grid)
        ht = (t @ _HKL.T).reshape(phases.shape).to(phases.dtype)
        target = sign.to(phases.dtype)[:, None, None, None] * phases + 2 * torch.pi * ht
        cos = u[:, 0] * torch.cos(target) + u[:, 1] * torch.sin(target)
        score = (weights * cos).sum(dim=(1, 2, 3)) / wsum
    else:
        raise ValueError(f"loss mode must be 'invariant' or 'canonical', got {mode!r}")
    return (1.0 - score).mean()


def augment(
    x: np.ndarray, phases: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each sample moved by a random one of the 48 symmetries of the index cube (axis
    permutation, then axis reversals), inputs (n, C, G, G, G) and phases (n, G, G, G)
    alike."""
    xo, po = np.empty_like(x), np.empty_like(phases)
    for i, k in enumerate(rng.integers(len(SYMMETRIES), size=len(x))):
        perm, flips = SYMMETRIES[k]
        xi = np.transpose(x[i], (0, *(1 + np.array(perm))))
        pi = np.transpose(phases[i], perm)
        for axis in range(3):
            if flips >> axis & 1:
                xi = np.flip(xi, axis=1 + axis)
                pi = np.flip(pi, axis=axis)
        xo[i], po[i] = xi, pi
    return xo, po
