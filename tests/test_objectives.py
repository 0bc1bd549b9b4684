"""Changing objective through the turret: the chip point stays in view and in focus, the
pixel size follows, and no change may carry the stage or focus beyond its limits."""

from __future__ import annotations

import pytest

from flakescan.hardware.config import TravelLimits
from flakescan.hardware.errors import TravelLimitError
from flakescan.hardware.objectives import UnknownObjective
from tests.sim_helpers import sim_microscope


@pytest.fixture
def mic():
    m = sim_microscope()
    yield m
    m.close()


def test_the_chip_point_in_view_stays_centred_and_in_focus_across_objectives(mic):
    mic.look_at(2500.0, 1800.0)
    for name in ("50x", "20x", "1x", "5x"):
        mic.set_objective(name)
        x, y, dz = mic.world.imaged_point(*mic.position())
        # Within what the calibration got wrong (the simulator's turret: 3-6 um an axis).
        assert abs(x - 2500.0) < 6.5 and abs(y - 1800.0) < 6.5, name
        assert abs(mic.z() - dz - mic.world.surface_z_um(x, y)) < 0.5, name
        assert mic.objective.name == name
        assert mic.pixel_size_um == pytest.approx(mic.objective.pixel_size_um)
        frame = mic.snap()
        assert (frame.x_um, frame.y_um) == pytest.approx((2500.0, 1800.0), abs=1e-6)
        assert frame.pixel_size_um == pytest.approx(mic.objective.pixel_size_um)


def test_an_unknown_objective_is_refused_naming_the_known_ones(mic):
    with pytest.raises(
        UnknownObjective, match=r"'100x' is not configured; known: 5x, 1x, 20x, 50x"
    ):
        mic.set_objective("100x")


def test_a_change_that_would_leave_the_travel_limits_is_refused_before_the_turret_turns():
    # At the edge of travel: the 20x looks 7 um to the right, so the stage would go to -7.
    limits = TravelLimits(x_min_um=0.0)
    mic = sim_microscope(limits)
    try:
        mic.move_xy(0.0, 1000.0)
        with pytest.raises(TravelLimitError, match="outside the travel limits"):
            mic.set_objective("20x")
        assert mic.objective.name == "5x" and mic.position() == pytest.approx((0.0, 1000.0))
    finally:
        mic.close()
