"""service.toml: defaults, the shipped file, and errors that name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from flakescan.daemon.config import ConfigError, load_config, resolve_state_dir

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_service_toml_is_valid_and_uses_the_simulator():
    cfg = load_config(ROOT / "service.toml")
    assert cfg.hardware.backend == "simulator"
    assert cfg.zmq.control.startswith("tcp://127.0.0.1:")
    assert cfg.models.classifier.is_file()


def test_defaults_need_no_file():
    cfg = load_config(None)
    assert cfg.scan.region_um is None  # the simulator's chip, by default
    assert cfg.database.url == ""


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[objective]\npixel_size_um = -1\n", "[objective] pixel_size_um = -1"),
        ('[travel_limits]\nx_min_um = "far"\n', "[travel_limits] x_min_um = 'far'"),
        ("[travel_limits]\nx_min_um = 10\nx_max_um = 0\n", "x_min_um (10.0) must be below"),
        ("[scan]\noverlap_pct = 95\n", "[scan] overlap_pct = 95"),
        ("[scan]\nregion_um = [5, 0, 1, 10]\n", "x0 < x1"),
        ('[hardware]\nbackend = "magic"\n', "[hardware] backend = 'magic'"),
        ("[hardware]\nbakend = 1\n", "unknown key [hardware] bakend"),
        ('[zmq]\ncontrol = "tcp://0.0.0.0:5555"\n', "not a loopback address"),
        ('[zmq]\ncontrol = "http://x"\n', "expected tcp://host:port"),
        ('[models]\nbackend = "tensorrt"\n', "set device = 'cuda'"),
        ('[database]\nurl = "flakes.db"\n', "not a database URL"),
        ('[hardware]\nbackend = "mmconfig"\n', "needs mm_config"),
        ("instrument = 'a b'\n", "instrument = 'a b'"),
        ("[preselection]\ncontrast_min = [0.5, 0.0, 0.0]\n", "contrast_min[R] = 0.5"),
        ("[simulator.chip]\nmaterial = 'MoSe2'\n", "[simulator.chip] material = 'MoSe2'"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key_and_the_value(tmp_path, toml, message):
    path = tmp_path / "service.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "service.toml"
    path.write_text('state_dir = "state"\n[models]\nclassifier = "m/model.onnx"\n')
    cfg = load_config(path)
    assert cfg.state_dir == tmp_path / "conf" / "state"
    assert cfg.models.classifier == tmp_path / "conf" / "m" / "model.onnx"


def test_state_dir_resolution_order(tmp_path, monkeypatch):
    cfg = load_config(None)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert resolve_state_dir(cfg) == tmp_path / "systemd"
    assert resolve_state_dir(cfg, tmp_path / "cli") == tmp_path / "cli"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_state_dir(cfg) == tmp_path / "xdg" / "flakescan"
    assert cfg.database_url(tmp_path) == f"sqlite:///{tmp_path / 'flakescan.db'}"
