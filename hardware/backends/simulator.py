"""The `simulator` backend: UniMMCore with the Python devices of `flakescan.simulators`."""

from __future__ import annotations

from pathlib import Path

from pymmcore_plus.experimental.unicore import UniMMCore

from flakescan.simulators import devices as devices_module
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.conditions import draw_conditions
from flakescan.simulators.config import SimulatorConfig
from flakescan.simulators.devices import SimCamera, SimFocusStage, SimWorld, SimXYStage
from flakescan.simulators.turret import SimObjective, SimTurret, calibrated, default_turret

from ..config import HardwareConfig, ObjectiveConfig, TravelLimits
from ..errors import HardwareError
from ..microscope import Microscope

__all__ = ["SimulatedMicroscope", "open_simulated_microscope"]


class SimulatedMicroscope(Microscope):
    """A Microscope whose devices are simulated; `world` holds the chip's ground truth."""

    def __init__(self, core: UniMMCore, limits: TravelLimits, world: SimWorld) -> None:
        # The simulated camera says itself whether its pixels are linear.
        super().__init__(core, limits, pixels_linear=world.imaging.linear)
        self.world = world
        spec = world.chip.spec
        self.default_region_um = (0.0, 0.0, spec.width_um, spec.height_um)


TURRET = "Objective"
PIXEL_PRESET = "turret"


def open_simulated_microscope(
    hardware: HardwareConfig,
    objective: ObjectiveConfig,
    limits: TravelLimits,
    simulator: SimulatorConfig | None = None,
    objectives: list[ObjectiveConfig] | None = None,
) -> SimulatedMicroscope:
    """The simulated microscope; `objectives` are the calibrated others (default: the
    simulated turret's own, as a calibration would have measured them)."""
    sim = simulator or SimulatorConfig()
    if sim.vary_conditions:
        sim = draw_conditions(sim, sim.seed)
    chip = generate_chip(sim.chip, sim.seed)
    scanning = SimObjective(
        name=objective.name,
        magnification=objective.magnification,
        numerical_aperture=objective.numerical_aperture,
        pixel_size_um=objective.pixel_size_um,
    )
    turret = list(sim.turret) or default_turret(scanning)
    if not any(o.name == objective.name for o in turret):
        raise HardwareError(
            f"the simulated turret has no objective {objective.name!r} (the scanning one); "
            f"it has {[o.name for o in turret]}"
        )
    world = SimWorld(
        chip=chip,
        imaging=sim.imaging,
        stage=sim.stage,
        faults=sim.faults,
        pixel_size_um=objective.pixel_size_um,
        numerical_aperture=objective.numerical_aperture,
        seed=sim.seed,
        objectives=turret,
    )
    # Python devices only: point the core at the simulators' folder so it does not go
    # looking for (and complain about) a Micro-Manager installation.
    core = UniMMCore(mm_path=str(Path(devices_module.__file__).parent))
    core.loadPyDevice("XY", SimXYStage(world))
    core.loadPyDevice("Z", SimFocusStage(world))
    core.loadPyDevice("Camera", SimCamera(world))
    start = next(i for i, o in enumerate(turret) if o.name == objective.name)

    def turned(o: SimObjective) -> None:
        world.select_objective(o)
        core.setPixelSizeUm(PIXEL_PRESET, o.pixel_size_um)

    core.loadPyDevice(TURRET, SimTurret(turret, turned, start))
    core.initializeAllDevices()
    core.setXYStageDevice("XY")
    core.setFocusDevice("Z")
    core.setCameraDevice("Camera")
    core.setTimeoutMs(hardware.timeout_ms)
    if objectives is None:
        objectives = [ObjectiveConfig(**c) for c in calibrated(turret, objective.name)]
    # A Micro-Manager config links one pixel size preset to each turret position; the
    # core cannot link presets to Python devices, so the turret itself keeps the one
    # preset at the true pixel size of the objective in place.
    core.definePixelSizeConfig(PIXEL_PRESET)
    core.setPixelSizeUm(PIXEL_PRESET, objective.pixel_size_um)
    core.setPixelSizeConfig(PIXEL_PRESET)
    if not limits.contains_z(sim.stage.focus_z_um):
        raise HardwareError(
            f"simulator.stage.focus_z_um = {sim.stage.focus_z_um} lies outside the Z travel limits"
        )
    mic = SimulatedMicroscope(core, limits, world)
    try:
        mic.configure(hardware)
    except HardwareError:
        mic.close()
        raise
    mic.set_objectives(objective, objectives, TURRET)
    return mic
