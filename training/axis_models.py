"""The AxisID networks: five small plain CNNs (Model 3 is the reference) and a small ResNet.

The seed compared five small CNNs "chosen somewhat randomly"; its figure of them is not
available, so these are five plain conv nets of increasing size. Each stage is
`convs` x (conv3x3 - BatchNorm - ReLU) followed by a 2x2 max-pool; then global average
pooling and a linear head to 2 outputs, the (cos k theta, sin k theta) target (the loss
normalises the prediction, so the head is unconstrained).

    Model 1: widths  8/16/32/64,          convs 1/1/1/1      (24,778 parameters)
    Model 2: widths 16/32/64/128,         convs 1/1/1/1      (97,938)
    Model 3: widths 16/32/64/128/128,     convs 1/1/2/2/2    (578,066; the reference)
    Model 4: widths 32/64/128/256/256,    convs 1/1/2/2/2    (2,308,130)
    Model 5: widths 32/64/128/256/512,    convs 1/2/2/2/2    (4,705,954)
    resnet : ResNet-18-style BasicBlocks, widths 32/64/128/256, 2 blocks each, 3x3 stride-2
             stem (2,795,554); written here because torchvision is not in the training venv.

`phase=True` puts a fixed, parameter-free front-end (`PhaseFeatures`) before any of them:
the image plus each pixel's edge direction on the 12-theta circle, where all lattice-aligned
edges of a crystal share one phase (the edge-histogram estimator's representation). Why: a
plain net must learn that 30-deg-periodic map of edge direction itself, which the seed paid
for with 2000 GPU epochs. On CPU, plain Model 3 was still at chance (val MAE 7.5 deg) after
19 epochs of 4,942 simulated crops (96 px, 1cycle to 3e-3), while Model 3 with the
front-end reached val MAE 2.6 deg after one epoch (128 px).

Global pooling makes every model take any input size (the card records the one used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODEL_CHOICES",
    "BasicBlock",
    "ContrastNorm",
    "PhaseFeatures",
    "PlainCNN",
    "SmallResNet",
    "WithPhase",
    "build_model",
    "describe",
]

_PLAIN: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "1": ((8, 16, 32, 64), (1, 1, 1, 1)),
    "2": ((16, 32, 64, 128), (1, 1, 1, 1)),
    "3": ((16, 32, 64, 128, 128), (1, 1, 2, 2, 2)),
    "4": ((32, 64, 128, 256, 256), (1, 1, 2, 2, 2)),
    "5": ((32, 64, 128, 256, 512), (1, 2, 2, 2, 2)),
}
MODEL_CHOICES = (*_PLAIN, "resnet")


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class PlainCNN(nn.Module):
    """Stages of conv-BN-ReLU then max-pool; global average pool; linear to 2 outputs."""

    def __init__(
        self,
        widths: Sequence[int],
        convs: Sequence[int],
        outputs: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != len(convs):
            raise ValueError(f"widths {widths} and convs {convs} differ in length")
        layers: list[nn.Module] = []
        c_in = in_channels
        for width, n in zip(widths, convs, strict=True):
            for _ in range(n):
                layers += _conv_bn_relu(c_in, width)
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, outputs)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-18 layout (2 BasicBlocks per stage, stride 2 between stages), narrower."""

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2, 2),
        outputs: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn_relu(in_channels, widths[0], stride=2)]
        c_in = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, outputs)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def _gaussian_derivative_kernels(sigma: float) -> torch.Tensor:
    """(2, 1, k, k): d/dx (columns) and d/dy (rows) of a Gaussian, unit response to a ramp."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    dg = -t * g / sigma**2
    dg = dg / (t * dg).sum()  # sign and scale: d/dt of the ramp t -> +1
    dx = g[:, None] * dg[None, :]
    return torch.stack([dx, dx.T])[:, None].float()


# Gradient scales `PhaseFeatures` accepts (px); `train axis --phase-sigmas` checks the same.
PHASE_SIGMA_RANGE_PX = (0.3, 8.0)


class PhaseFeatures(nn.Module):
    """Fixed (not learnt) front-end: the image plus, per pixel, its edge direction on the
    (360/modulus)-theta circle, where every lattice-aligned edge lands on the same phase.

    Per channel derivative-of-Gaussian gradients g_c; w = sum_c (g_c as a complex number)^2
    has phase 2 phi whatever the sign of each channel's contrast; (w/|w|)^(180/modulus)
    * |w| has phase (360/modulus) phi and weight |w|. Returned with |w| itself, normalised by
    the image's mean |w|: three channels per gradient scale in `sigmas_px`.

    Why a second, wider scale: on a faint small crystal (a monolayer's 5-7 % contrast, 1 %
    pixel noise) the 1-px gradients are noise-dominated. Read straight off this front-end
    (weighted mean phase), small thick crystals faded to 12 % of their contrast give 2.3 deg
    mean error at sigma 1 px and 1.0 deg at 2 px, the same ~0.95 deg at full contrast; the
    CNN on sigma 1 alone did no better than its front-end (2.4 deg). Convolutions and
    arithmetic only, so it exports to ONNX and the served input stays `axis_input`.
    """

    def __init__(self, modulus: float = 30.0, sigmas_px: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        power = 180.0 / modulus
        if abs(power - round(power)) > 1e-9 or round(power) < 1:
            raise ValueError(f"phase features need 180/modulus to be an integer, got {modulus}")
        lo, hi = PHASE_SIGMA_RANGE_PX
        if not sigmas_px or any(not lo <= s <= hi for s in sigmas_px):
            raise ValueError(f"phase sigmas must be {lo:g}-{hi:g} px each, got {list(sigmas_px)}")
        self.power = round(power)
        self.sigmas_px = tuple(float(s) for s in sigmas_px)
        for i, sigma in enumerate(self.sigmas_px):  # buffers: fixed, exported, not trained
            self.register_buffer(f"kernel{i}", _gaussian_derivative_kernels(sigma))

    @property
    def channels(self) -> int:
        return 3 * len(self.sigmas_px)

    def forward(self, x):
        kernels = [getattr(self, f"kernel{i}") for i in range(len(self.sigmas_px))]
        return torch.cat([x, *(self._phase(x, k) for k in kernels)], dim=1)

    def _phase(self, x, kernel):
        n, c, h, w = x.shape
        pad = int(kernel.shape[-1]) // 2
        # Replicate the border: zero padding would draw a false edge round the frame.
        flat = F.pad(x.reshape(n * c, 1, h, w), [pad] * 4, mode="replicate")
        g = F.conv2d(flat, kernel)
        g = g.reshape(n, c, 2, h, w)
        gx, gy = g[:, :, 0], g[:, :, 1]
        re = (gx * gx - gy * gy).sum(1, keepdim=True)
        im = (2 * gx * gy).sum(1, keepdim=True)
        mag = torch.sqrt(re * re + im * im + 1e-12)
        ur, ui = re / mag, im / mag
        pr, pi = ur, ui
        for _ in range(self.power - 1):
            pr, pi = pr * ur - pi * ui, pr * ui + pi * ur
        weight = mag / (mag.mean(dim=(2, 3), keepdim=True) + 1e-6)
        return torch.cat([pr * weight, pi * weight, weight], dim=1)


class ContrastNorm(nn.Module):
    """Scale each image to unit RMS contrast (over its pixels and channels, floored at
    `floor`), so a faint monolayer and a thick crystal reach the network at one scale.

    `axis_input` leaves the contrast itself: 0.07 for graphene, ~1 for a thick crystal; the
    test set's worst errors were faint, defocused flakes."""

    def __init__(self, floor: float = 0.01) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, x):
        rms = torch.sqrt((x * x).mean(dim=(1, 2, 3), keepdim=True))
        return x / torch.clamp(rms, min=self.floor)


class WithPhase(nn.Module):
    """A model fed the image plus `PhaseFeatures` (3 + 3 per gradient scale channels)."""

    def __init__(self, front: PhaseFeatures, body: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.body = body

    def forward(self, x):
        return self.body(self.front(x))


def build_model(
    name: str,
    phase: bool = False,
    modulus: float = 30.0,
    contrast_norm: bool = False,
    phase_sigmas: Sequence[float] = (1.0,),
) -> nn.Module:
    """Model '1'..'5' or 'resnet'; `phase` adds the fixed edge-phase front-end at the
    gradient scales `phase_sigmas`, `contrast_norm` a `ContrastNorm` in front of everything."""
    name = str(name)
    front = PhaseFeatures(modulus, phase_sigmas) if phase else None
    c_in = 3 + (front.channels if front is not None else 0)
    if name == "resnet":
        body: nn.Module = SmallResNet(in_channels=c_in)
    elif name in _PLAIN:
        widths, convs = _PLAIN[name]
        body = PlainCNN(widths, convs, in_channels=c_in)
    else:
        raise ValueError(f"unknown axis model {name!r}; choose one of {', '.join(MODEL_CHOICES)}")
    model = WithPhase(front, body) if front is not None else body
    return nn.Sequential(ContrastNorm(), model) if contrast_norm else model


def describe(
    name: str,
    phase: bool = False,
    contrast_norm: bool = False,
    phase_sigmas: Sequence[float] = (1.0,),
) -> str:
    """One line for the model card."""
    scales = "/".join(f"{s:g}" for s in phase_sigmas)
    front = f" fed image + fixed edge-phase channels (PhaseFeatures, sigma {scales} px)"
    front = front if phase else ""
    if contrast_norm:
        front += ", input scaled to unit RMS contrast (ContrastNorm)"
    if str(name) == "resnet":
        return "AxisID ResNet (BasicBlocks 32/64/128/256 x2, 3x3 stem, GAP, linear 2)" + front
    widths, convs = _PLAIN[str(name)]
    stages = "/".join(f"{w}x{n}" for w, n in zip(widths, convs, strict=True))
    return f"AxisID Model {name} (conv3x3-BN-ReLU stages {stages} + maxpool, GAP, linear 2)" + front
