"""Back to a flake at a higher magnification: drive there, change objective, focus,
re-centre by image registration, and keep the image with the flake.

Calibrated objective offsets are good to a micrometre or so, and a 50x field is only
~60 um wide, so the flake is found again by registration, one magnification at a time:
each objective's view is located (phase correlation) in the view of the one below it, and
the stage is moved by the difference before the next objective turns in. A field with
nothing to register on (the inside of a flake larger than the field) keeps the calibrated
position and says so; the focus is found by autofocus with sweeps scaled to the
objective's depth of field, or, when there is nothing to focus on, taken from the
calibration, and the image records which.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from flakescan.hardware.config import ObjectiveConfig
from flakescan.hardware.focus import FocusConfig, FocusError, autofocus
from flakescan.hardware.frame import Frame
from flakescan.hardware.microscope import Microscope
from flakescan.inference.registration import locate
from flakescan.simulators.tone import srgb_encode

from .export import highmag_folder

__all__ = ["RevisitResult", "focus_config_for", "revisit_flake"]

log = logging.getLogger(__name__)
_WAVELENGTH_UM = 0.55
# A registration is trusted when the aligned views correlate at least this well and the
# correction is no larger than a calibration can plausibly be off.
_MIN_CORRELATION = 0.3  # unrelated views give |r| < 0.05 on the simulator
_MAX_SHIFT_UM = 25.0


@dataclass(frozen=True)
class RevisitResult:
    flake_id: int
    objective: str
    image_path: str
    x_um: float  # the chip point at the image centre after re-centring
    y_um: float
    z_um: float
    pixel_size_um: float
    focus: str  # "autofocus" | "calibrated"
    registered: bool  # whether the last step's registration found the flake
    shift_um: tuple[float, float]  # the total correction registration applied
    steps: tuple[dict, ...]  # per objective: registration and focus

    def as_dict(self) -> dict:
        return {**asdict(self), "shift_um": [round(v, 3) for v in self.shift_um]}


def focus_config_for(objective: ObjectiveConfig) -> FocusConfig:
    """Sweeps scaled to the objective's depth of field (lambda / NA^2)."""
    dof = _WAVELENGTH_UM / objective.numerical_aperture**2
    return FocusConfig(
        coarse_range_um=max(16 * dof, 6.0),
        coarse_step_um=max(1.5 * dof, 0.2),
        fine_range_um=max(3 * dof, 0.8),
        fine_step_um=max(dof / 3, 0.05),
    )


def _chain(mic: Microscope, target: str) -> list[ObjectiveConfig]:
    """The scanning objective, then every configured one above it up to the target."""
    assert mic.turret is not None
    goal = mic.turret.get(target)
    start = mic.turret.scanning
    steps = sorted(
        (
            o
            for o in mic.turret.objectives.values()
            if start.magnification < o.magnification <= goal.magnification
        ),
        key=lambda o: o.magnification,
    )
    return [start, *steps]


def _save(frame: Frame, folder: Path, stem: str) -> Path:
    image = frame.linear_image()
    white = max(float(np.percentile(image[::4, ::4], 99.5)), 1e-6)
    encoded = (255 * srgb_encode(np.clip(image / white, 0, 1))).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.png"
    Image.fromarray(encoded[..., :3]).save(path)
    return path


def revisit_flake(mic: Microscope, flake: dict, objective: str, images_root: Path) -> RevisitResult:
    """Image one catalogue flake at `objective`, centred on it; the image and a JSON
    sidecar go to the flake's high-magnification folder. The scanning objective is back
    in place afterwards, whatever happens."""
    if mic.turret is None:
        raise ValueError("revisiting at another objective needs [[objectives]] configured")
    chain = _chain(mic, objective)
    x, y = float(flake["x_um"]), float(flake["y_um"])
    steps: list[dict] = []
    total = np.zeros(2)
    try:
        mic.set_objective(chain[0].name)
        mic.look_at(x, y)
        previous = mic.snap()
        frame, focus, registered = previous, "calibrated", False
        for obj in chain[1:]:
            # The turn keeps the point in view centred, to the calibration's accuracy;
            # registration against the view below measures what it missed.
            mic.set_objective(obj.name)
            try:  # the calibrated focus is close: a fine sweep (walking on if need be)
                autofocus(mic, focus_config_for(obj), fine_only=True)
                focus = "autofocus"
            except FocusError as exc:
                focus = "calibrated"
                log.info("revisit of flake %s at %s: %s", flake["id"], obj.name, exc)
            frame = mic.snap()
            reg = locate(frame, previous)
            step = {"objective": obj.name, "focus": focus, "registration": reg.as_dict()}
            shift = float(np.hypot(reg.dx_um, reg.dy_um))
            registered = reg.correlation >= _MIN_CORRELATION and shift <= _MAX_SHIFT_UM
            if registered:
                total += (reg.dx_um, reg.dy_um)
                sx, sy = mic.position()
                mic.move_xy(sx - reg.dx_um, sy - reg.dy_um)
                frame = mic.snap()
            step["registered"] = bool(registered)
            steps.append(step)
            previous = frame
        taken = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        folder = highmag_folder(images_root, int(flake["scan_id"]), int(flake["id"]))
        path = _save(frame, folder, f"{objective}-{taken}")
        result = RevisitResult(
            flake_id=int(flake["id"]),
            objective=objective,
            image_path=str(path),
            x_um=x,
            y_um=y,
            z_um=mic.z(),
            pixel_size_um=frame.pixel_size_um,
            focus=focus,
            registered=bool(registered),
            shift_um=(float(total[0]), float(total[1])),
            steps=tuple(steps),
        )
        path.with_suffix(".json").write_text(json.dumps(result.as_dict(), indent=1))
        return result
    finally:
        mic.set_objective(chain[0].name)
