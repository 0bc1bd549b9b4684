"""Errors the hardware layer raises: every device fault reaches the caller as one of these."""

from __future__ import annotations

__all__ = ["DeviceError", "HardwareError", "TravelLimitError"]


class HardwareError(RuntimeError):
    """Base of all hardware failures."""


class TravelLimitError(HardwareError):
    """A move was asked for outside the configured travel limits; nothing was commanded."""


class DeviceError(HardwareError):
    """A device failed (timeout, lost link, error reply); the message names the device."""
