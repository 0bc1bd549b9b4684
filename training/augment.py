"""Augmentations of contrast crops (n, 3, s, s), drawn from one torch.Generator.

What is allowed follows from the representation (contrast 1 - I/background): a flake has
no preferred orientation (rotations, flips), flare lowers all contrasts of a frame together
(scale jitter), a slightly wrong background shifts them (offset), focus and noise vary
(blur, noise). Colour, however, *is* the label here -- the classes are R-contrast bins -- so
colour changes stay small: the strong colour distortion of SimCLR on natural images would
teach invariance to exactly what separates a monolayer from a bilayer.

`augment(x, AugmentConfig(), gen)` with the defaults draws exactly what the shipped CNN-4
was trained with (dihedral + 3 % scale jitter); every other transform is opt-in and draws
random numbers only when enabled, so the default random stream never changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment", "clr_config"]


@dataclass(frozen=True)
class AugmentConfig:
    """Which transforms to apply and how strongly; the defaults are the shipped model's."""

    dihedral: bool = True  # random 90-degree rotation and horizontal flip
    jitter: float = 0.03  # one contrast scale per crop, 1 +- jitter
    channel_jitter: float = 0.0  # an extra scale per channel, 1 +- channel_jitter
    offset_jitter: float = 0.0  # additive contrast offset per channel, +- offset_jitter
    rotate_deg: float = 0.0  # small rotation, uniform in +- rotate_deg
    crop_scale: float = 1.0  # random crop of side in [crop_scale, 1] x s, resized back to s
    blur_sigma: float = 0.0  # Gaussian blur with sigma uniform in [0, blur_sigma] px ...
    blur_prob: float = 0.5  # ... applied to this share of crops
    noise_std: float = 0.0  # additive Gaussian noise on the contrast

    def __post_init__(self) -> None:
        checks = {
            "jitter": 0 <= self.jitter < 0.5,
            "channel_jitter": 0 <= self.channel_jitter < 0.5,
            "offset_jitter": 0 <= self.offset_jitter <= 0.2,
            "rotate_deg": 0 <= self.rotate_deg <= 45,
            "crop_scale": 0.2 <= self.crop_scale <= 1.0,
            "blur_sigma": 0 <= self.blur_sigma <= 5,
            "blur_prob": 0 <= self.blur_prob <= 1,
            "noise_std": 0 <= self.noise_std <= 0.2,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"augmentation {bad[0]} out of range: {getattr(self, bad[0])}")

    @property
    def geometric(self) -> bool:
        return self.rotate_deg > 0 or self.crop_scale < 1.0


def clr_config() -> AugmentConfig:
    """SimCLR's two-view transform for contrast crops: strong crops, mild colour."""
    return AugmentConfig(
        dihedral=True,
        jitter=0.1,
        channel_jitter=0.1,
        offset_jitter=0.01,
        rotate_deg=0.0,
        crop_scale=0.4,
        blur_sigma=1.5,
        blur_prob=0.5,
        noise_std=0.01,
    )


def _dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).bool()
    out = x.clone()
    for r in range(1, 4):
        idx = k == r
        if idx.any():
            out[idx] = torch.rot90(out[idx], r, dims=(2, 3))
    if flip.any():
        out[flip] = out[flip].flip(3)
    return out


def _affine(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Small rotation and random crop-and-resize in one bilinear resampling; outside is 0
    (bare wafer in contrast)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
    scale = cfg.crop_scale + torch.rand(n, generator=gen) * (1.0 - cfg.crop_scale)
    # The crop window stays inside the image: centre offset at most (1 - scale).
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1.0 - scale)[:, None]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    n, c = x.shape[:2]
    sigma = torch.rand(n, generator=gen) * cfg.blur_sigma
    apply = torch.rand(n, generator=gen) < cfg.blur_prob
    radius = max(1, math.ceil(3 * cfg.blur_sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    out = x.clone()
    for i in torch.nonzero(apply & (sigma > 0.1)).flatten().tolist():
        k = torch.exp(-0.5 * (t / sigma[i]) ** 2)
        k = (k / k.sum()).to(x.dtype)
        img = x[i : i + 1]
        img = F.conv2d(
            F.pad(img, (radius, radius, 0, 0), mode="replicate"),
            k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
            groups=c,
        )
        img = F.conv2d(
            F.pad(img, (0, 0, radius, radius), mode="replicate"),
            k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
            groups=c,
        )
        out[i] = img[0]
    return out


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of the batch `x` (labels unchanged)."""
    n, c = x.shape[:2]
    out = _dihedral(x, gen) if cfg.dihedral else x.clone()
    if cfg.jitter > 0:
        out = out * (1.0 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.jitter)
    # ---- opt-in transforms below; nothing above may change (the shipped model's stream).
    if cfg.geometric:
        out = _affine(out, cfg, gen)
    if cfg.channel_jitter > 0:
        out = out * (1.0 + (torch.rand(n, c, 1, 1, generator=gen) * 2 - 1) * cfg.channel_jitter)
    if cfg.offset_jitter > 0:
        out = out + (torch.rand(n, c, 1, 1, generator=gen) * 2 - 1) * cfg.offset_jitter
    if cfg.blur_sigma > 0 and cfg.blur_prob > 0:
        out = _blur(out, cfg, gen)
    if cfg.noise_std > 0:
        out = out + torch.randn(out.shape, generator=gen) * cfg.noise_std
    return out
