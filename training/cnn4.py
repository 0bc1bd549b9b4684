"""CNN-4: the GrapheneClassifier's small network, trained from scratch.

The seed found this four-block CNN tied with a contrastively pre-trained ResNet-50 on flake
classification at a fraction of the compute, so it is the model flakescan ships: about
0.39 M parameters, fast enough to score every preselected candidate on a CPU.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

__all__ = ["CNN4", "count_parameters"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU + 2x2 max-pool: halves the field, widens the channels."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),  # BN supplies the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNN4(nn.Module):
    """Four conv blocks 3->32->64->128->256, global average pool, dropout, linear head.

    Global average pooling makes the head independent of the input size and of where in the
    crop the flake sits; the output is one logit per class (multi-label: apply a sigmoid).
    """

    def __init__(
        self,
        num_classes: int = 4,
        dropout: float = 0.3,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        widths = (in_channels, *channels)
        self.features = nn.Sequential(*(_block(a, b) for a, b in pairwise(widths)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
