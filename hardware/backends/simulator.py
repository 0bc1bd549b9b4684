"""The `simulator` backend: UniMMCore with the Python devices of `flakescan.simulators`."""

from __future__ import annotations

from pathlib import Path

from pymmcore_plus.experimental.unicore import UniMMCore

from flakescan.simulators import devices as devices_module
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.conditions import draw_conditions
from flakescan.simulators.config import SimulatorConfig
from flakescan.simulators.devices import SimCamera, SimFocusStage, SimWorld, SimXYStage

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


def open_simulated_microscope(
    hardware: HardwareConfig,
    objective: ObjectiveConfig,
    limits: TravelLimits,
    simulator: SimulatorConfig | None = None,
) -> SimulatedMicroscope:
    sim = simulator or SimulatorConfig()
    if sim.vary_conditions:
        sim = draw_conditions(sim, sim.seed)
    chip = generate_chip(sim.chip, sim.seed)
    world = SimWorld(
        chip=chip,
        imaging=sim.imaging,
        stage=sim.stage,
        faults=sim.faults,
        pixel_size_um=objective.pixel_size_um,
        numerical_aperture=objective.numerical_aperture,
        seed=sim.seed,
    )
    # Python devices only: point the core at the simulators' folder so it does not go
    # looking for (and complain about) a Micro-Manager installation.
    core = UniMMCore(mm_path=str(Path(devices_module.__file__).parent))
    core.loadPyDevice("XY", SimXYStage(world))
    core.loadPyDevice("Z", SimFocusStage(world))
    core.loadPyDevice("Camera", SimCamera(world))
    core.initializeAllDevices()
    core.setXYStageDevice("XY")
    core.setFocusDevice("Z")
    core.setCameraDevice("Camera")
    core.setTimeoutMs(hardware.timeout_ms)
    core.definePixelSizeConfig(objective.name)
    core.setPixelSizeUm(objective.name, objective.pixel_size_um)
    core.setPixelSizeConfig(objective.name)
    if not limits.contains_z(sim.stage.focus_z_um):
        raise HardwareError(
            f"simulator.stage.focus_z_um = {sim.stage.focus_z_um} lies outside the Z travel limits"
        )
    return SimulatedMicroscope(core, limits, world)
