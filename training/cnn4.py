"""CNN-4: the GrapheneClassifier's small network, trained from scratch.

The seed found this four-block CNN tied with a contrastively pre-trained ResNet-50 on flake
classification at a fraction of the compute, so it is the model flakescan ships: about
0.39 M parameters, fast enough to score every preselected candidate on a CPU.

Like the seed's `Classifier`, the network splits into a backbone (conv blocks + global
pool -> a 256-vector) and a head, so SimCLR can pre-train the backbone under a projection
head (`CNN4Backbone` + `resnet.ProjectionHead`) and the classifier can load it back. `CNN4`
keeps its original parameter names (`features.*`, `head.*`); `CNN4.backbone` is a view on
its own modules with the same `features.*` keys.

`ContrastBins` is an optional fixed front-end: the classes are bins of R contrast, and a
plain CNN-4 learnt their edges only to a few percent of contrast (a 21 % flake, class 3,
still scored 0.4 for class 2), so the network is handed, per pixel, a soft step of its R
contrast at each bin edge and only has to learn which pixels are the flake.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

__all__ = ["CNN4", "CNN4Backbone", "ContrastBins", "count_parameters"]

CHANNELS = (32, 64, 128, 256)
# Width of each soft step, in contrast: about the pixel noise of the smoothed contrast crop.
BIN_STEP_WIDTH = 0.005


class ContrastBins(nn.Module):
    """Fixed (not learnt) front-end: the crop plus one channel per bin edge e,
    sigmoid((R - e) / width), R being the crop's first (red) contrast channel.

    Buffers only, so it draws no random numbers and exports to ONNX inside the model: the
    served input stays the 3-channel contrast crop.
    """

    def __init__(
        self, edges: tuple[float, ...], width: float = BIN_STEP_WIDTH, channel: int = 0
    ) -> None:
        super().__init__()
        if not edges or list(edges) != sorted(edges):
            raise ValueError(f"bin edges must be a non-empty ascending list, got {list(edges)}")
        if not width > 0:
            raise ValueError(f"bin step width must be > 0, got {width}")
        self.edges_list = tuple(float(e) for e in edges)
        self.register_buffer("edges", torch.tensor(self.edges_list).view(1, -1, 1, 1))
        self.width = float(width)
        self.channel = int(channel)

    @property
    def channels(self) -> int:
        return len(self.edges_list)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, self.channel : self.channel + 1]
        return torch.cat([x, torch.sigmoid((r - self.edges) / self.width)], dim=1)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU + 2x2 max-pool: halves the field, widens the channels."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),  # BN supplies the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _features(channels: tuple[int, ...], in_channels: int) -> nn.Sequential:
    widths = (in_channels, *channels)
    return nn.Sequential(*(_block(a, b) for a, b in pairwise(widths)))


class CNN4Backbone(nn.Module):
    """Conv blocks + global average pool: (n, 3, s, s) -> (n, channels[-1]) features.

    Pass `features` to wrap existing blocks (no new weights, no random draws): that is how
    `CNN4.backbone` shares its weights.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = CHANNELS,
        in_channels: int = 3,
        *,
        features: nn.Sequential | None = None,
        front: ContrastBins | None = None,
    ) -> None:
        super().__init__()
        self.front = front
        self.features = features if features is not None else _features(channels, in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)][-1]
        self.out_features = int(last.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.front is not None:
            x = self.front(x)
        return self.pool(self.features(x)).flatten(1)


class CNN4(nn.Module):
    """Four conv blocks 3->32->64->128->256, global average pool, dropout, linear head.

    Global average pooling makes the head independent of the input size and of where in the
    crop the flake sits; the output is one logit per class (multi-label: apply a sigmoid).
    """

    def __init__(
        self,
        num_classes: int = 4,
        dropout: float = 0.3,
        channels: tuple[int, ...] = CHANNELS,
        in_channels: int = 3,
        bin_edges: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        # `bin_edges` adds the fixed ContrastBins front-end (no random draws).
        self.front = ContrastBins(bin_edges) if bin_edges else None
        if self.front is not None:
            in_channels += self.front.channels
        # Creation order (features, then head) fixes the random initial weights: keep it.
        self.features = _features(channels, in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], num_classes)

    @property
    def backbone(self) -> CNN4Backbone:
        """The feature extractor as a module of its own, sharing this network's weights."""
        return CNN4Backbone(features=self.features, front=self.front)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.front is not None:
            x = self.front(x)
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
