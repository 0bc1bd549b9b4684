"""The PACBED network: rotation-invariant polar features, a 1-D CNN along the radius, and
three heads (scale, thickness curve, mistilt curve).

The seed trained three Xception networks (scale, thickness, mistilt) from ImageNet weights.
There are no pretrained weights here and training runs on one CPU core. Measured on the
SrTiO3 library (see the report): 2-D CNNs of 0.2-0.5 M parameters on the 96 x 96 pattern
(plain, CoordConv, polar-resampled) did not leave the uniform prior within a few thousand
patterns, while a small MLP on the ring-averaged profile reached 3 nm at once. The reason is
the physics: the detector rotation is arbitrary, thickness lives in the radial positions of
faint fringes riding on the bright disc, and mistilt in how the pattern departs from its
zone-axis symmetry. So the graph computes those quantities first, as fixed layers:

1. intensity: divide by the pattern's mean (the max of a noisy pattern is itself noisy),
   sqrt (variance-stabilising for counts);
2. polar resampling about the centre (`grid_sample`, bilinear): n_radii rings out to the
   crop edge x n_angles angles;
3. per ring, the mean and the magnitudes of the angular Fourier harmonics 1..K: invariant to
   any detector rotation and to mirrors, exactly. At zone axis a 4mm pattern has only
   harmonics 4 and 8; a mistilt brings in 1, 2, 3 with a strength that grows with it;
4. standardisation of every (harmonic, ring) feature by its mean and spread over training
   patterns (buffers set once by `fit_normalisation`): without it the fringes that carry the
   thickness are a few % of the disc and nothing learns.

Then a 1-D CNN along the radius (channels: ring mean + K harmonics) and, beside it, the
standardised features themselves (a wide path), concatenated with the convergence angle
(the seed's second input) into an MLP with three heads:

* scale: log of the residual scale of the preprocessed pattern, log(radius used by the
  preprocessing / true disc radius). Preprocessing (inference/pacbed_preprocess.py)
  normalises the camera length by the measured disc radius; this head is the seed's scale
  CNN reduced to what is left (about 1 %), and the analyzer re-preprocesses with the
  corrected radius before it reads thickness and mistilt (the seed's scale-then-thickness
  scheme, in two passes of one network);
* thickness and mistilt magnitude: logits over fixed bins (the seed's probability curves);
  the served values are the expectations over the softmax.

One input array, because `InferenceBackend.run` takes one: (n, 2, S, S) float32, channel 0
the preprocessed pattern (max 1), channel 1 the convergence angle in mrad in every pixel;
the graph reads the angle back as the mean of channel 1. One output array (n, 1 + Nt + Nm):
[log residual scale, thickness logits, mistilt logits]; `split_outputs` names the columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PacbedLayout",
    "PacbedNet",
    "gaussian_targets",
    "pacbed_loss",
    "split_outputs",
]


@dataclass(frozen=True)
class PacbedLayout:
    """Bin centres of the two classification heads; the output is [scale, t..., m...]."""

    thickness_nm: tuple[float, ...]
    mistilt_mrad: tuple[float, ...]

    @property
    def n_outputs(self) -> int:
        return 1 + len(self.thickness_nm) + len(self.mistilt_mrad)

    @classmethod
    def uniform(
        cls,
        max_thickness_nm: float,
        thickness_step_nm: float,
        max_mistilt_mrad: float,
        mistilt_step_mrad: float,
    ) -> PacbedLayout:
        """Bins 0, step, ... up to and including the maximum (rounded up to a whole step)."""
        nt = int(np.ceil(max_thickness_nm / thickness_step_nm - 1e-9)) + 1
        nm = int(np.ceil(max_mistilt_mrad / mistilt_step_mrad - 1e-9)) + 1
        return cls(
            tuple(round(float(i * thickness_step_nm), 6) for i in range(nt)),
            tuple(round(float(i * mistilt_step_mrad), 6) for i in range(nm)),
        )


def split_outputs(out, layout: PacbedLayout):
    """(log_scale (n,), thickness logits (n, Nt), mistilt logits (n, Nm)) of an output array
    (torch or numpy)."""
    nt = len(layout.thickness_nm)
    return out[:, 0], out[:, 1 : 1 + nt], out[:, 1 + nt :]


def _conv1d(c_in: int, c_out: int, k: int = 5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class PacbedNet(nn.Module):
    """(n, 2, S, S) -> (n, 1 + Nt + Nm). Call `fit_normalisation` on training inputs once
    before training (the feature standardisation is part of the exported graph)."""

    def __init__(
        self,
        layout: PacbedLayout,
        size: int = 96,
        n_radii: int = 64,
        n_angles: int = 256,
        harmonics: int = 8,
        width: int = 32,
        conv_ref_mrad: float = 20.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if conv_ref_mrad <= 0:
            raise ValueError(f"conv_ref_mrad must be positive, got {conv_ref_mrad}")
        if n_radii % 4:
            raise ValueError(f"n_radii must be a multiple of 4, got {n_radii}")
        if not 1 <= harmonics < n_angles // 2:
            raise ValueError(f"harmonics must be in 1..{n_angles // 2 - 1}, got {harmonics}")
        self.layout = layout
        self.size, self.n_radii, self.n_angles, self.harmonics = size, n_radii, n_angles, harmonics
        self.width = width
        self.conv_ref_mrad = float(conv_ref_mrad)
        c = (size - 1) / 2
        radius = torch.linspace(0.0, 1.0, n_radii) * (size / 2)  # px, to the crop edge
        theta = torch.arange(n_angles, dtype=torch.float32) * (2 * math.pi / n_angles)
        rr, tt = torch.meshgrid(radius, theta, indexing="ij")
        # grid_sample's grid: [..., 0] along the last axis (axis 1), [..., 1] along axis 0
        g1 = (c + rr * torch.sin(tt)) / (size - 1) * 2 - 1
        g0 = (c + rr * torch.cos(tt)) / (size - 1) * 2 - 1
        self.register_buffer("grid", torch.stack([g1, g0], dim=-1)[None])
        k = torch.arange(1, harmonics + 1, dtype=torch.float32)
        self.register_buffer("cos", torch.cos(theta[:, None] * k[None]) / n_angles)
        self.register_buffer("sin", torch.sin(theta[:, None] * k[None]) / n_angles)
        channels = 1 + harmonics
        self.register_buffer("feat_mean", torch.zeros(channels, n_radii))
        self.register_buffer("feat_std", torch.ones(channels, n_radii))
        w = width
        self.conv = nn.Sequential(
            _conv1d(channels, w),
            _conv1d(w, w),
            nn.MaxPool1d(2),
            _conv1d(w, 2 * w),
            _conv1d(2 * w, 2 * w),
            nn.MaxPool1d(2),
        )
        feat = 2 * w * (n_radii // 4) + channels * n_radii + 1
        self.neck = nn.Sequential(
            nn.Linear(feat, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
        )
        self.scale_head = nn.Linear(128, 1)
        nn.init.zeros_(self.scale_head.weight)  # start at "no correction": a random start
        nn.init.zeros_(self.scale_head.bias)  # is ~30 % off and its loss drowns the rest
        self.thickness_head = nn.Linear(128, len(layout.thickness_nm))
        self.mistilt_head = nn.Linear(128, len(layout.mistilt_mrad))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1 + K, n_radii): ring means and angular-harmonic magnitudes, unstandardised."""
        image = torch.clamp(x[:, 0:1], min=0.0)
        image = torch.sqrt(image / (image.mean(dim=(2, 3), keepdim=True) + 1e-6))
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        polar = F.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[:, 0]
        ring = polar.mean(dim=-1)
        re, im = polar @ self.cos, polar @ self.sin
        mag = torch.sqrt(re * re + im * im + 1e-10)
        return torch.cat([ring[:, None], mag.transpose(1, 2)], dim=1)

    @torch.no_grad()
    def fit_normalisation(self, x: torch.Tensor) -> None:
        """Set the feature standardisation from a batch of training inputs."""
        f = self.features(x)
        self.feat_mean.copy_(f.mean(dim=0))
        self.feat_std.copy_(f.std(dim=0) + 1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.features(x) - self.feat_mean) / self.feat_std
        alpha = x[:, 1].mean(dim=(1, 2)).unsqueeze(1) / self.conv_ref_mrad - 1.0
        h = self.neck(torch.cat([self.conv(f).flatten(1), f.flatten(1), alpha], dim=1))
        return torch.cat([self.scale_head(h), self.thickness_head(h), self.mistilt_head(h)], dim=1)


def gaussian_targets(values: torch.Tensor, centres: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soft labels: a Gaussian of width sigma around each value over the bin centres,
    normalised. Neighbouring bins share the label, so the softmax learns a smooth curve
    whose expectation is unbiased between bins."""
    d = (values[:, None] - centres[None, :]) / sigma
    w = torch.exp(-0.5 * d * d)
    return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)


def pacbed_loss(
    out: torch.Tensor,
    layout: PacbedLayout,
    thickness_nm: torch.Tensor,
    mistilt_mrad: torch.Tensor,
    log_scale: torch.Tensor,
    sigma_thickness_nm: float,
    sigma_mistilt_mrad: float,
    scale_weight: float = 1.0,
    expectation_weight: float = 1.0,
    scale_unit: float = 0.01,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft-label cross-entropy of the two curves, plus expectation_weight x the absolute
    error of their expectations (thickness in 10 nm, mistilt in 1 mrad: it sharpens the
    served values; measured 3 nm instead of 5-10 nm after the same steps), plus
    scale_weight x the squared scale error in units of scale_unit (1 %)."""
    s, t, m = split_outputs(out, layout)
    tc = torch.tensor(layout.thickness_nm, dtype=out.dtype)
    mc = torch.tensor(layout.mistilt_mrad, dtype=out.dtype)
    lt_log, lm_log = torch.log_softmax(t, 1), torch.log_softmax(m, 1)
    lt = -(gaussian_targets(thickness_nm, tc, sigma_thickness_nm) * lt_log).sum(1).mean()
    lm = -(gaussian_targets(mistilt_mrad, mc, sigma_mistilt_mrad) * lm_log).sum(1).mean()
    le = (lt_log.exp() @ tc - thickness_nm).abs().mean() / 10.0
    le = le + (lm_log.exp() @ mc - mistilt_mrad).abs().mean()
    ls = (((s - log_scale) / scale_unit) ** 2).mean()
    total = lt + lm + expectation_weight * le + scale_weight * ls
    parts = {
        "thickness": float(lt.detach()),
        "mistilt": float(lm.detach()),
        "expectation": float(le.detach()),
        "scale": float(ls.detach()),
    }
    return total, parts
