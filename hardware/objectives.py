"""The objectives of a microscope and the turret that changes them.

Objectives are neither co-centred nor parfocal. Each one's offsets against the scanning
objective are calibrated (`ObjectiveConfig.offset_*`); changing objective moves the stage
and the focus by the difference, so the same point of the chip stays centred and in focus,
and every frame reports the chip point at its centre (stage + the objective's offset).
"""

from __future__ import annotations

from collections.abc import Sequence

from pymmcore_plus import CMMCorePlus

from .config import ObjectiveConfig
from .errors import HardwareError

__all__ = ["ObjectiveTurret", "UnknownObjective"]


class UnknownObjective(HardwareError):
    """An objective the configuration does not know."""


class ObjectiveTurret:
    """The configured objectives and, if there is one, the turret's state device."""

    def __init__(
        self,
        core: CMMCorePlus,
        scanning: ObjectiveConfig,
        others: Sequence[ObjectiveConfig] = (),
        device: str | None = None,
    ) -> None:
        self.core = core
        self.scanning = scanning
        self.device = device
        self.objectives: dict[str, ObjectiveConfig] = {scanning.name: scanning}
        for o in others:
            if o.name in self.objectives:
                raise HardwareError(f"objective {o.name!r} is configured twice")
            self.objectives[o.name] = o
        if device is None and others:
            raise HardwareError(
                "[[objectives]] are configured but [hardware] objective_device is not: "
                "flakescan cannot change objective"
            )
        if device is not None:
            labels = set(core.getStateLabels(device))
            missing = [
                o.turret_label for o in self.objectives.values() if o.turret_label not in labels
            ]
            if missing:
                raise HardwareError(
                    f"turret {device!r} has no position labelled {missing}; it has {sorted(labels)}"
                )

    def get(self, name: str) -> ObjectiveConfig:
        try:
            return self.objectives[name]
        except KeyError:
            raise UnknownObjective(
                f"objective {name!r} is not configured; known: {', '.join(self.objectives)}"
            ) from None

    def current(self) -> ObjectiveConfig:
        """The objective in place: read from the turret, or the scanning one if none."""
        if self.device is None:
            return self.scanning
        label = self.core.getStateLabel(self.device)
        for o in self.objectives.values():
            if o.turret_label == label:
                return o
        raise HardwareError(f"turret {self.device!r} is at {label!r}, which no objective is")

    def lowest(self) -> ObjectiveConfig:
        """The lowest magnification configured: for finding the chip."""
        return min(self.objectives.values(), key=lambda o: o.magnification)

    def describe(self) -> dict:
        return {
            "device": self.device,
            "current": self.current().name,
            "objectives": {
                n: {
                    "magnification": o.magnification,
                    "pixel_size_um": o.pixel_size_um,
                    "offset_um": [o.offset_x_um, o.offset_y_um, o.offset_z_um],
                }
                for n, o in self.objectives.items()
            },
        }
