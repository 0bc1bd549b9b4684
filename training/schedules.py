"""Learning-rate schedules shared by the trainers."""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_schedule"]


def cosine_schedule(
    opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from the optimiser's learning rate to 0 over `total_steps` (then 0)."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
