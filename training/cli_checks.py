"""Argument checks shared by the training command lines."""

from __future__ import annotations

import argparse

__all__ = ["require_at_least"]


def require_at_least(
    p: argparse.ArgumentParser, a: argparse.Namespace, minimum: int, *dests: str
) -> None:
    """Exit 2 naming the option and its value if any given option (unset ones skipped) is
    below `minimum`: "--epochs must be >= 1, got 0"."""
    for dest in dests:
        value = getattr(a, dest)
        if value is not None and value < minimum:
            p.error(f"--{dest.replace('_', '-')} must be >= {minimum}, got {value}")
