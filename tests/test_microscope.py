"""The Microscope facade on both backends: moves, limits, faults, frames."""

from __future__ import annotations

import mm_test_adapters
import numpy as np
import pytest
import useq
from scipy import ndimage

from flakescan.hardware.backends import open_microscope
from flakescan.hardware.backends.simulator import open_simulated_microscope
from flakescan.hardware.config import HardwareConfig, ObjectiveConfig, TravelLimits
from flakescan.hardware.engine import StrictMDAEngine
from flakescan.hardware.errors import DeviceError, HardwareError, TravelLimitError
from flakescan.simulators.config import SimulatorConfig


def test_moves_and_snaps_on_the_simulator(microscope):
    microscope.move_xy(1200.0, 1300.0)
    assert microscope.position() == pytest.approx((1200.0, 1300.0))
    microscope.move_z(12.5)
    assert microscope.z() == pytest.approx(12.5)
    frame = microscope.snap(index=3)
    assert frame.image.shape == (768, 1024, 3) and frame.image.dtype == np.uint8
    assert (frame.x_um, frame.y_um, frame.index) == (1200.0, 1300.0, 3)
    assert frame.linear and frame.pixel_size_um == pytest.approx(0.57)
    assert frame.fov_um == pytest.approx(microscope.fov_um)
    # Pixel <-> stage mapping round-trips.
    assert frame.stage_to_pixel(*frame.pixel_to_stage(10.0, 20.0)) == pytest.approx((10.0, 20.0))


def test_stage_is_busy_while_it_travels():
    sim = SimulatorConfig.model_validate({"stage": {"xy_speed_um_s": 10000, "xy_settle_ms": 50}})
    mic = open_simulated_microscope(HardwareConfig(), ObjectiveConfig(), TravelLimits(), sim)
    try:
        mic.move_xy(2000.0, 0.0, wait=False)  # 2 mm at 10 mm/s, then 50 ms settling
        assert mic.core.deviceBusy(mic.xy_label)
        assert mic.position() != (2000.0, 0.0)  # on its way
        mic.wait(mic.xy_label)
        assert not mic.core.deviceBusy(mic.xy_label)
        assert mic.position() == (2000.0, 0.0)
    finally:
        mic.close()


@pytest.mark.parametrize("target", [(-5000.0, 0.0), (0.0, 1e6), (float("nan"), 0.0)])
def test_moves_outside_the_limits_are_refused_before_commanding(microscope, target):
    moves_before = microscope.world.xy_moves
    with pytest.raises(TravelLimitError, match="outside the travel limits"):
        microscope.move_xy(*target)
    assert microscope.world.xy_moves == moves_before  # nothing reached the stage
    with pytest.raises(TravelLimitError):
        microscope.move_z(10_000.0)


def test_device_faults_are_raised_naming_the_device():
    sim = SimulatorConfig.model_validate(
        {"faults": {"xy_fail_on_move": 2, "snap_fail_on_frame": 1}}
    )
    mic = open_simulated_microscope(HardwareConfig(), ObjectiveConfig(), TravelLimits(), sim)
    try:
        mic.move_xy(100.0, 100.0)
        with pytest.raises(DeviceError, match=r"XY: move to .* failed: XY stage timeout"):
            mic.move_xy(200.0, 100.0)
        with pytest.raises(DeviceError, match="Camera: snap failed: camera timeout"):
            mic.snap()
    finally:
        mic.close()


def test_strict_engine_raises_where_the_default_engine_logs_and_continues():
    sim = SimulatorConfig.model_validate(
        {"faults": {"snap_fail_on_frame": 3}, "stage": {"xy_speed_um_s": 1e5}}
    )
    mic = open_simulated_microscope(HardwareConfig(), ObjectiveConfig(), TravelLimits(), sim)
    try:
        seq = useq.MDASequence(stage_positions=[(100.0 * i, 100.0, None) for i in range(5)])
        mic.core.mda.set_engine(StrictMDAEngine(mic))
        frames = []
        mic.core.mda.events.frameReady.connect(lambda img, ev, meta: frames.append(ev.index["p"]))
        with pytest.raises(DeviceError, match="camera timeout"):
            mic.core.mda.run(seq)
        assert frames == [0, 1]
    finally:
        mic.close()


def test_strict_engine_refuses_a_plan_outside_the_limits(microscope):
    microscope.core.mda.set_engine(StrictMDAEngine(microscope))
    seq = useq.MDASequence(stage_positions=[(100.0, 100.0, None), (90000.0, 100.0, None)])
    moves_before = microscope.world.xy_moves
    with pytest.raises(TravelLimitError):
        microscope.core.mda.run(seq)
    assert microscope.world.xy_moves == moves_before


def test_mmconfig_backend_with_the_micromanager_demo_devices(tmp_path):
    adapters = mm_test_adapters.device_adapter_path()
    cfg = HardwareConfig(
        backend="mmconfig",
        mm_config=f"{adapters}/MMConfig_demo.cfg",
        adapter_paths=[adapters],
        pixels_linear=True,
    )
    limits = TravelLimits(x_min_um=-5000, x_max_um=5000, y_min_um=-5000, y_max_um=5000)
    mic = open_microscope(cfg, ObjectiveConfig(), limits)
    try:
        assert mic.pixel_size_um > 0
        mic.move_xy(120.0, -80.0)
        assert mic.position() == pytest.approx((120.0, -80.0), abs=0.1)
        mic.move_z(5.0)
        frame = mic.snap()
        assert frame.image.ndim == 2 and frame.image.size > 0  # the demo camera is mono
        with pytest.raises(TravelLimitError):
            mic.move_xy(6000.0, 0.0)
        assert mic.position() == pytest.approx((120.0, -80.0), abs=0.1)
    finally:
        mic.close()


def test_mmconfig_backend_reports_a_missing_file(tmp_path):
    cfg = HardwareConfig(backend="mmconfig", mm_config=tmp_path / "nope.cfg")
    with pytest.raises(HardwareError, match="no such file"):
        open_microscope(cfg, ObjectiveConfig(), TravelLimits())


def test_travel_limits_must_be_ordered():
    with pytest.raises(ValueError, match="x_min_um"):
        TravelLimits(x_min_um=10, x_max_um=5)


def test_focus_drive_defocuses_the_camera_image(microscope):
    flake = max(microscope.world.chip.flakes(1, 3), key=lambda o: o.area_um2)
    microscope.move_xy(*flake.centroid_um)

    def edge_strength() -> float:
        # Steepest edges of the frame (smoothed first, so that noise does not count).
        img = ndimage.gaussian_filter(microscope.snap().image[..., 0].astype(float), 2.0)
        return float(np.percentile(np.hypot(*np.gradient(img)), 99.5))

    microscope.move_z(0.0)
    sharp = edge_strength()
    microscope.move_z(60.0)  # 60 um out of focus at NA 0.14: about 7 px of blur
    blurred = edge_strength()
    assert blurred < 0.5 * sharp


def test_mmconfig_pixel_size_disagreeing_with_the_config_is_an_error():
    adapters = mm_test_adapters.device_adapter_path()
    cfg = HardwareConfig(
        backend="mmconfig", mm_config=f"{adapters}/MMConfig_demo.cfg", adapter_paths=[adapters]
    )
    with pytest.raises(HardwareError, match=r"calibrates 1\.0 um/px"):
        open_microscope(cfg, ObjectiveConfig(pixel_size_um=0.57), TravelLimits())


@pytest.mark.parametrize("backend", ["simulator", "mmconfig"])
def test_a_field_of_view_that_does_not_match_the_camera_is_an_error(backend):
    adapters = mm_test_adapters.device_adapter_path()
    hw = (
        HardwareConfig()
        if backend == "simulator"
        else HardwareConfig(
            backend="mmconfig",
            mm_config=f"{adapters}/MMConfig_demo.cfg",
            adapter_paths=[adapters],
        )
    )
    with pytest.raises(HardwareError, match="does not match the camera"):
        open_microscope(hw, ObjectiveConfig(field_of_view_um=(100.0, 100.0)), TravelLimits())
    # The right one passes: 1024 x 768 px at 0.57 um/px (simulator), 512 x 512 at 1.0 (demo).
    good = (583.7, 437.8) if backend == "simulator" else (512.0, 512.0)
    open_microscope(hw, ObjectiveConfig(field_of_view_um=good), TravelLimits()).close()
