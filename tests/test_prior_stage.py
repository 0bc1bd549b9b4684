"""The Prior ProScan driver against the ProScan simulator on a real pseudo-terminal.

Nothing is mocked: the driver opens the pty with pyserial, the simulator answers from its
thread, and the end-to-end tests load the device into pymmcore-plus UniMMCore from a .cfg file
next to Micro-Manager's C++ demo camera.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mm_test_adapters
import pytest

from flakescan.hardware.backends import open_microscope
from flakescan.hardware.config import HardwareConfig, ObjectiveConfig, TravelLimits
from flakescan.hardware.errors import DeviceError, HardwareError, TravelLimitError
from flakescan.hardware.microscope import Microscope
from flakescan.hardware.prior import (
    ProScanError,
    ProScanErrorReply,
    ProScanLinkLost,
    ProScanReplyError,
    ProScanStage,
    ProScanTimeout,
    XYLimits,
)
from flakescan.simulators.prior_pty import ProScanSimulator

LIMITS = XYLimits(x_min_um=-1000, x_max_um=30000, y_min_um=-1000, y_max_um=30000)
SLOW = 1  # percent of the simulator's 20 mm/s top speed: 200 um/s


@pytest.fixture
def sim() -> Iterator[ProScanSimulator]:
    with ProScanSimulator(top_speed_um_s=20000.0, speed_percent=100) as s:
        yield s


@pytest.fixture
def stage(sim: ProScanSimulator) -> Iterator[ProScanStage]:
    with ProScanStage(sim.port, timeout_s=0.25, limits=LIMITS) as st:
        yield st


def wait_until(condition, timeout_s: float = 10.0) -> None:
    """Poll a state until it holds (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def sent_moves(sim: ProScanSimulator) -> list[str]:
    return [c for c in sim.received if c.startswith(("G", "I", "K"))]


# -- connection ------------------------------------------------------------------------
def test_connect_sets_standard_mode_and_reads_version_and_resolution(sim, stage):
    assert sim.received[:3] == ["COMP,0", "VERSION", "RES,s"]
    assert stage.version == "100"
    assert stage.step_size_um == pytest.approx(0.1)


def test_a_configured_step_size_is_set_on_the_controller_and_used(sim):
    with ProScanStage(sim.port, step_size_um=0.5) as st:
        assert "RES,s,0.5" in sim.received
        st.move_to(100.0, 50.0)
        st.wait_idle(10)
        assert "G,200,100" in sim.received  # the move went out in 0.5 um units
        assert st.position_um() == pytest.approx((100.0, 50.0))


def test_connecting_to_a_silent_line_fails_naming_the_first_command(sim):
    sim.inject("silent")
    st = ProScanStage(sim.port, timeout_s=0.2)
    with pytest.raises(ProScanTimeout, match=r"no reply to 'COMP,0' within 0\.2 s"):
        st.connect()
    assert not st.connected


def test_a_port_that_does_not_exist_fails_to_open():
    with pytest.raises(ProScanLinkLost, match="cannot open the port"):
        ProScanStage("/dev/no-such-proscan").connect()


def test_a_controller_answering_nonsense_to_version_is_refused():
    with ProScanSimulator(version="v1.2a") as odd:
        st = ProScanStage(odd.port, timeout_s=0.25)
        with pytest.raises(ProScanReplyError, match=r"reply to 'VERSION': 'v1\.2a'"):
            st.connect()
        assert not st.connected


# -- motion ----------------------------------------------------------------------------
@pytest.mark.parametrize("target", [(1000.0, 2000.0), (-500.5, 12345.6), (0.0, 0.0)])
def test_absolute_moves_round_trip_in_um(sim, stage, target):
    stage.move_to(*target)
    stage.wait_idle(10)
    assert stage.position_um() == pytest.approx(target, abs=0.05)
    assert sim.position_um == pytest.approx(target, abs=0.05)
    steps = tuple(round(v / 0.1) for v in target)
    assert f"G,{steps[0]},{steps[1]}" in sim.received


def test_stage_is_busy_while_it_travels_and_idle_once_there(sim, stage):
    stage.set_max_speed(SLOW)
    stage.move_to(200.0, 0.0)  # 200 um at 200 um/s
    assert stage.busy()
    assert stage.position_um()[0] < 200.0  # on its way
    stage.wait_idle(10)
    assert not stage.busy()
    assert stage.position_um() == pytest.approx((200.0, 0.0))


def test_relative_moves_go_from_where_the_stage_is(sim, stage):
    stage.move_to(1000.0, 1000.0)
    stage.wait_idle(10)
    stage.move_by(250.0, -100.0)
    stage.wait_idle(10)
    assert "GR,2500,-1000" in sim.received
    assert stage.position_um() == pytest.approx((1250.0, 900.0))


def test_a_relative_move_is_refused_while_the_stage_moves(sim, stage):
    stage.set_max_speed(SLOW)
    stage.move_to(5000.0, 0.0)
    with pytest.raises(ProScanError, match="refused while the stage is moving"):
        stage.move_by(10.0, 0.0)
    assert not any(c.startswith("GR") for c in sim.received)
    stage.stop()


def test_stop_halts_a_move_midway(sim, stage):
    stage.set_max_speed(SLOW)
    stage.move_to(20000.0, 0.0)  # 100 s at this speed
    wait_until(lambda: stage.position_um()[0] > 0.0)
    assert stage.busy()
    stage.stop()
    assert not stage.busy()
    x, y = stage.position_um()
    assert 0.0 < x < 20000.0 and y == 0.0
    assert stage.position_um() == (x, y)  # and it stays there
    assert sim.received[-4] == "I"


def test_wait_idle_raises_when_the_stage_keeps_moving(stage):
    stage.set_max_speed(SLOW)
    stage.move_to(20000.0, 0.0)
    with pytest.raises(ProScanTimeout, match=r"still moving after 0\.1 s"):
        stage.wait_idle(0.1)
    stage.stop()


def test_speed_and_acceleration_round_trip(sim, stage):
    stage.set_max_speed(37)
    stage.set_acceleration(12)
    assert (stage.max_speed(), stage.acceleration()) == (37, 12)
    assert {"SMS,37", "SAS,12"} <= set(sim.received)


def test_set_origin_zeroes_the_counters_where_the_stage_stands(sim):
    with ProScanStage(sim.port, timeout_s=0.25) as unlimited:
        unlimited.move_to(1000.0, 2000.0)
        unlimited.wait_idle(10)
        unlimited.set_origin()
        assert unlimited.position_um() == (0.0, 0.0)
        assert sim.received[-2] == "PS,0,0"
        unlimited.move_to(-500.0, 0.0)  # back towards where it started
        unlimited.wait_idle(10)
        assert unlimited.position_um() == pytest.approx((-500.0, 0.0))
        assert sim.position_um == pytest.approx((-500.0, 0.0))


def test_set_origin_is_refused_under_software_limits(sim, stage):
    before = list(sim.received)
    for zero in (stage.set_origin, stage.set_origin_x, stage.set_origin_y):
        with pytest.raises(HardwareError, match="would move the software travel limits"):
            zero()
    assert sim.received == before


def test_a_second_program_cannot_open_the_port_in_use(sim, stage):
    with pytest.raises(ProScanLinkLost, match="cannot open the port"):
        ProScanStage(sim.port).connect()


# -- limits and bad input --------------------------------------------------------------
@pytest.mark.parametrize("target", [(30000.1, 0.0), (0.0, -1000.5), (-5000.0, 40000.0)])
def test_moves_outside_the_software_limits_are_refused_before_sending(sim, stage, target):
    before = list(sim.received)
    with pytest.raises(TravelLimitError, match="outside the stage limits"):
        stage.move_to(*target)
    assert sim.received == before  # the controller saw nothing at all


def test_a_relative_move_past_the_limits_is_refused_before_moving(sim, stage):
    stage.move_to(29900.0, 0.0)
    stage.wait_idle(10)
    moves = sent_moves(sim)
    with pytest.raises(TravelLimitError, match=r"target \(30100\.000, 0\.000\) um"):
        stage.move_by(200.0, 0.0)
    assert sent_moves(sim) == moves


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((float("nan"), 0.0), "x_um must be finite, got nan"),
        ((0.0, float("inf")), "y_um must be finite, got inf"),
        (("100", 0.0), "x_um must be a number, got '100'"),
        ((True, 0.0), "x_um must be a number, got True"),
    ],
)
def test_bad_targets_name_the_field_and_value(sim, stage, args, message):
    before = list(sim.received)
    with pytest.raises(ValueError, match=message):
        stage.move_to(*args)
    assert sim.received == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": ""}, "port must name a serial device, got ''"),
        ({"baudrate": 9601}, "baudrate must be one of .* got 9601"),
        ({"timeout_s": 0}, "timeout_s must be positive, got 0"),
        ({"step_size_um": -0.1}, r"step_size_um must be positive, got -0\.1"),
    ],
)
def test_bad_settings_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProScanStage(**{"port": "/dev/ttyUSB0", **kwargs})


def test_limits_must_be_ordered_and_speed_a_percentage(stage):
    with pytest.raises(ValueError, match=r"x_min_um \(5\) must be below x_max_um \(1\)"):
        XYLimits(5, 1, 0, 1)
    with pytest.raises(ValueError, match="percent must be an integer from 1 to 100, got 0"):
        stage.set_max_speed(0)


# -- faults ----------------------------------------------------------------------------
def test_moving_past_the_controllers_travel_surfaces_its_error_reply(sim):
    with ProScanStage(sim.port, timeout_s=0.25) as unlimited:  # no software limits
        with pytest.raises(ProScanErrorReply, match=r"'G,1000000,0' refused .*E,8: VALUE OUT"):
            unlimited.move_to(100000.0, 0.0)
        assert sim.position_um == (0.0, 0.0)


@pytest.mark.parametrize(
    ("code", "meaning"), [(18, "QUEUE FULL"), (2, "NOT IDLE"), (42, "unknown error code")]
)
def test_error_replies_surface_with_the_manuals_meaning(sim, stage, code, meaning):
    sim.reply_error(code, on="G")
    with pytest.raises(ProScanErrorReply, match=f"E,{code}: {meaning}") as err:
        stage.move_to(10.0, 10.0)
    assert (err.value.code, err.value.command) == (code, "G,100,100")
    assert isinstance(err.value, DeviceError)


@pytest.mark.parametrize(
    ("call", "command"),
    [
        (lambda st: st.position_um(), "PS"),
        (lambda st: st.busy(), r"\$"),
        (lambda st: st.move_to(5.0, 5.0), "G,50,50"),
        (lambda st: st.stop(), "I"),
    ],
)
def test_timeouts_surface_naming_the_command(sim, stage, call, command):
    sim.inject("silent")
    with pytest.raises(ProScanTimeout, match=f"no reply to '{command}' within 0.25 s"):
        call(stage)
    sim.recover()
    assert stage.position_um() == (0.0, 0.0)  # the line works again


def test_a_reply_that_comes_after_the_timeout_is_not_taken_for_the_next_one(sim, stage):
    stage.move_to(1000.0, 2000.0)
    stage.wait_idle(10)
    sim.inject("late", delay_s=0.5)
    with pytest.raises(ProScanTimeout, match="no reply to 'PS'"):
        stage.position_um()
    wait_until(lambda: sim.late_replies_sent == 1)  # "10000,20000" now sits unread
    sim.recover()
    assert stage.busy() is False  # the reply to '$', not the stale position
    assert stage.position_um() == pytest.approx((1000.0, 2000.0))


def test_garbled_replies_surface(sim, stage):
    sim.inject("garble")
    with pytest.raises(ProScanReplyError, match=r"garbled reply to 'PS': b'\\x8f"):
        stage.position_um()
    with pytest.raises(ProScanReplyError, match=r"garbled reply to '\$'"):
        stage.busy()


def test_a_lost_link_surfaces_and_stays_lost(sim, stage):
    sim.inject("drop")
    for _ in range(2):
        with pytest.raises(ProScanLinkLost, match="serial link lost during 'PS'"):
            stage.position_um()


def test_a_link_lost_mid_move_surfaces_at_the_next_status_query(sim, stage):
    stage.set_max_speed(SLOW)
    sim.inject("drop", after="G")
    stage.move_to(3000.0, 0.0)  # accepted, then the line goes dead
    with pytest.raises(ProScanLinkLost, match=r"during '\$'"):
        stage.wait_idle(10)


def test_two_threads_get_their_own_replies(sim, stage):
    stage.move_to(1000.0, 2000.0)
    stage.wait_idle(10)
    results: dict[str, list] = {"pos": [], "speed": [], "errors": []}

    def run(key: str, call) -> None:
        try:
            for _ in range(150):
                results[key].append(call())
        except Exception as exc:
            results["errors"].append(exc)

    threads = [
        threading.Thread(target=run, args=("pos", stage.position_um)),
        threading.Thread(target=run, args=("speed", stage.max_speed)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results["errors"] == []
    assert results["pos"] == [pytest.approx((1000.0, 2000.0))] * 150
    assert results["speed"] == [100] * 150


# -- end to end: a .cfg with the Micro-Manager demo camera, through the Microscope -----
def write_cfg(tmp_path: Path, port: str, *extra: str) -> Path:
    path = tmp_path / "prior.cfg"
    lines = [
        "Property,Core,Initialize,0",
        "Device,Camera,DemoCamera,DCam",
        "Device,Z,DemoCamera,DStage",
        "#py pyDevice,XY,flakescan.hardware.prior_device,PriorXYStage",
        f"#py Property,XY,Port,{port}",
        "#py Property,XY,TimeoutMs,250",
        *extra,
        "Property,Core,Initialize,1",
        "Property,Core,Camera,Camera",
        "Property,Core,Focus,Z",
        "#py Property,Core,XYStage,XY",
        "ConfigPixelSize,Res1x,Camera,Binning,1",
        "PixelSize_um,Res1x,1.0",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def open_with(cfg: Path) -> Microscope:
    adapters = mm_test_adapters.device_adapter_path()
    hardware = HardwareConfig(backend="mmconfig", mm_config=cfg, adapter_paths=[adapters])
    limits = TravelLimits(x_min_um=-100, x_max_um=5000, y_min_um=-100, y_max_um=5000)
    return open_microscope(hardware, ObjectiveConfig(), limits)


@pytest.fixture
def mic(sim: ProScanSimulator, tmp_path: Path) -> Iterator[Microscope]:
    m = open_with(write_cfg(tmp_path, sim.port))
    yield m
    m.close()


def test_microscope_moves_the_prior_stage_from_a_cfg(sim, mic):
    assert (mic.xy_label, mic.camera_label, mic.z_label) == ("XY", "Camera", "Z")
    mic.move_xy(1200.0, 3400.0)
    assert mic.position() == pytest.approx((1200.0, 3400.0))
    assert sim.position_um == pytest.approx((1200.0, 3400.0))
    assert "G,12000,34000" in sim.received
    assert mic.snap().image.size > 0  # the C++ camera works beside the Python stage
    assert mic.core.getProperty("XY", "StepSizeUm") == pytest.approx(0.1)


def test_microscope_refuses_a_move_outside_its_limits_before_the_serial_line(sim, mic):
    before = list(sim.received)
    with pytest.raises(TravelLimitError, match="outside the travel limits"):
        mic.move_xy(6000.0, 0.0)
    assert sim.received == before


def test_a_fault_mid_move_surfaces_from_move_xy(sim, mic):
    mic.core.setProperty("XY", "MaxSpeedPercent", 5)  # 1 mm/s: a 3 s move
    sim.inject("silent", after="G")
    with pytest.raises(DeviceError, match=r"XY on /dev/pts/\d+: no reply to '\$'"):
        mic.move_xy(3000.0, 0.0)
    assert sim.moving  # the error came while the stage was still on its way


def test_the_devices_own_limits_guard_direct_core_calls(sim, tmp_path):
    limits = [
        f"#py Property,XY,Limit{k},{v}"
        for k, v in (("XMinUm", 0), ("XMaxUm", 1000), ("YMinUm", 0), ("YMaxUm", 1000))
    ]
    m = open_with(write_cfg(tmp_path, sim.port, *limits))
    try:
        before = list(sim.received)
        with pytest.raises(TravelLimitError, match="outside the stage limits"):
            m.move_xy(2000.0, 10.0)  # inside the Microscope's limits, outside the stage's
        with pytest.raises(TravelLimitError):
            m.core.setXYPosition(-10.0, 10.0)
        assert sim.received == before
        with pytest.raises(HardwareError, match="would move the software travel limits"):
            m.core.setOriginXY("XY")
        with pytest.raises(NotImplementedError, match="SIS"):
            m.core.home("XY")
    finally:
        m.close()


def test_a_cfg_with_a_silent_controller_fails_to_load_naming_the_cause(sim, tmp_path):
    sim.inject("silent")
    with pytest.raises(HardwareError, match=r"XY: initialization failed: .*'COMP,0'"):
        open_with(write_cfg(tmp_path, sim.port))


def test_a_bad_property_in_the_cfg_names_it_and_its_value(sim, tmp_path):
    cfg = write_cfg(tmp_path, sim.port, "#py Property,XY,BaudRate,fast")
    with pytest.raises(HardwareError, match="BaudRate must be a number, got 'fast'"):
        open_with(cfg)
