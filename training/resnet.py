"""ResNet-50 with a width multiplier, and the seed's `Classifier`: backbone + swappable head.

The GrapheneClassifier seed pre-trained a ResNet-50(2X) with SimCLR under a projection head,
then replaced that head by a linear map to the classes. `Classifier` holds any backbone
(this ResNet or `cnn4.CNN4Backbone`) with either head, so the same code serves contrastive
pre-training and fine-tuning. torchvision is not available here, hence this own copy:
bottleneck blocks 3-4-6-3, BatchNorm, every width scaled by `width` (2.0 = the seed's
ResNet-50(2X); 0.25 for quick CPU runs on 64-px crops).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "ARCHS",
    "Bottleneck",
    "Classifier",
    "LinearHead",
    "ProjectionHead",
    "ResNetBackbone",
    "build_backbone",
    "resnet50_backbone",
]

ARCHS = ("cnn4", "resnet50")
Stem = Literal["imagenet", "small"]


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), BN after each, identity/projection skip."""

    expansion = 4

    def __init__(self, c_in: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        c_out = mid * self.expansion
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """Stem, four bottleneck stages, global average pool -> (n, 2048 * width) features.

    `stem="imagenet"` is the standard 7x7/2 conv + 3x3/2 max-pool (a 64-px crop leaves a
    2x2 map after stage 4); `"small"` is SimCLR's CIFAR stem (3x3/1 conv, no pool) for
    small crops, 16x more compute.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: float = 1.0,
        in_channels: int = 3,
        stem: Stem = "imagenet",
    ) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four block counts >= 1, got {list(layers)}")
        self.width = float(width)
        self.stem_kind = stem
        c = _scaled(64, width)
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            )
        stages = []
        c_in = c
        for i, (n_blocks, base) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            mid = _scaled(base, width)
            blocks = []
            for b in range(n_blocks):
                blocks.append(Bottleneck(c_in, mid, stride=2 if (b == 0 and i > 0) else 1))
                c_in = mid * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


def resnet50_backbone(width: float = 1.0, stem: Stem = "imagenet") -> ResNetBackbone:
    """ResNet-50 (blocks 3-4-6-3): 23.5 M parameters at width 1, 94 M at the seed's 2X."""
    return ResNetBackbone((3, 4, 6, 3), width=width, stem=stem)


def build_backbone(arch: str, width: float = 1.0, stem: Stem = "imagenet") -> nn.Module:
    """A backbone by name; every backbone has `.out_features`."""
    if arch == "resnet50":
        return resnet50_backbone(width, stem)
    if arch == "cnn4":
        from .cnn4 import CHANNELS, CNN4Backbone

        return CNN4Backbone(tuple(_scaled(ch, width) for ch in CHANNELS))
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


class ProjectionHead(nn.Sequential):
    """SimCLR's MLP g(h): Linear-BN-ReLU-Linear to the space where NT-Xent compares views."""

    def __init__(self, in_features: int, hidden: int = 512, out_features: int = 128) -> None:
        super().__init__(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )


class LinearHead(nn.Sequential):
    """Dropout + linear map to one logit per class: the fine-tuning / linear-evaluation head."""

    def __init__(self, in_features: int, num_classes: int = 4, dropout: float = 0.0) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


class Classifier(nn.Module):
    """The seed's `Classifier`: `head(backbone(x))`, the head a projection MLP or linear map."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def for_classes(
        cls, backbone: nn.Module, num_classes: int = 4, dropout: float = 0.0
    ) -> Classifier:
        return cls(backbone, LinearHead(backbone.out_features, num_classes, dropout))

    @classmethod
    def for_contrastive(
        cls, backbone: nn.Module, hidden: int = 512, out_features: int = 128
    ) -> Classifier:
        return cls(backbone, ProjectionHead(backbone.out_features, hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------- weight files

BACKBONE_FORMAT = "flakescan-backbone/1"


def save_backbone(
    backbone: nn.Module, path, *, arch: str, width: float, stem: str, extra: dict | None = None
) -> None:
    """Backbone weights plus what is needed to rebuild it; written to a temp name, renamed."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "format": BACKBONE_FORMAT,
            "arch": arch,
            "width": float(width),
            "stem": stem,
            "out_features": int(backbone.out_features),
            "state_dict": backbone.state_dict(),
            "extra": extra or {},
        },
        tmp,
    )
    tmp.replace(path)


def read_backbone(path) -> dict:
    """The dict written by `save_backbone`; ValueError naming the file if it is not one."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: not a torch file
        raise ValueError(f"{path} is not a backbone weight file: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != BACKBONE_FORMAT:
        raise ValueError(
            f"{path} is not a backbone weight file ({BACKBONE_FORMAT}); "
            "use the *_backbone.pt that `flakescan train clr` writes"
        )
    return blob


def load_backbone_into(backbone: nn.Module, blob: dict, *, arch: str, width: float) -> None:
    """Copy saved weights into `backbone`, refusing another architecture or width."""
    if blob["arch"] != arch or abs(blob["width"] - width) > 1e-9:
        raise ValueError(
            f"backbone weights are {blob['arch']} width {blob['width']:g}, but the model is "
            f"{arch} width {width:g}: pass --arch {blob['arch']} --width {blob['width']:g}"
        )
    if getattr(backbone, "stem_kind", blob["stem"]) != blob["stem"]:
        raise ValueError(
            f"backbone weights use stem {blob['stem']!r}, the model {backbone.stem_kind!r}"
        )
    backbone.load_state_dict(blob["state_dict"], strict=True)
