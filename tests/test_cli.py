"""The command line: each command as a function call, output and exit codes."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from flakescan.daemon.cli import main

from .conftest import free_port, write_toml


@pytest.fixture
def local_config(tmp_path):
    return write_toml(
        tmp_path / "svc.toml",
        {
            "instrument": "scope-cli",
            "state_dir": str(tmp_path / "state"),
            "scan": {"region_um": [2000.0, 2000.0, 3000.0, 2800.0]},
            "simulator": {"stage": {"xy_speed_um_s": 100000, "xy_settle_ms": 1}},
            "zmq": {
                "control": f"tcp://127.0.0.1:{free_port()}",
                "events": f"tcp://127.0.0.1:{free_port()}",
            },
        },
    )


def test_local_scan_then_query_in_every_format(local_config, tmp_path, capsys):
    assert main(["scan", "--local", "--config", str(local_config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "scan 1 completed: 4/4 tiles" in out
    db = tmp_path / "state" / "flakescan.db"
    n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM flakes").fetchone()[0]
    assert n > 0

    assert main(["query", "--db", str(db), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == n and {"x_um", "y_um", "area_um2", "axis_angle_deg"} <= set(rows[0])
    # Every row carries the config's instrument and a uuid of its own (schema 6).
    assert {r["instrument"] for r in rows} == {"scope-cli"}
    assert len({r["uuid"] for r in rows}) == n
    assert main(["query", "--config", str(local_config), "--format", "csv", "--class", "1"]) == 0
    csv_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert all(r["flake_class"] == "1" for r in csv_rows)
    assert main(["query", "--db", str(db), "--min-area", "1e9"]) == 0
    assert "0 flakes" in capsys.readouterr().out
    assert main(["query", "--db", str(db), "--limit", "2"]) == 0
    assert "2 flakes" in capsys.readouterr().out
    assert main(["scans", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "completed"


def test_query_of_a_missing_database_is_a_clear_error(tmp_path, capsys):
    assert main(["query", "--db", str(tmp_path / "none.db")]) == 2
    assert "no flake database" in capsys.readouterr().err


def test_control_commands_without_a_daemon_fail_clearly(capsys):
    port = free_port()
    rc = main(["status", "--control", f"tcp://127.0.0.1:{port}", "--timeout", "0.3"])
    assert rc == 1
    assert "no daemon answered" in capsys.readouterr().err


def test_bad_config_exit_code_and_message(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[scan]\noverlap_pct = -1\n")
    assert main(["scan", "--local", "--config", str(bad)]) == 2
    assert "[scan] overlap_pct = -1" in capsys.readouterr().err


def test_scan_region_outside_the_limits_is_refused(local_config, capsys):
    rc = main(
        ["scan", "--local", "--config", str(local_config), "--region", "0", "0", "90000", "10"]
    )
    assert rc == 2
    assert "outside the travel limits" in capsys.readouterr().err


def test_sim_truth_writes_the_ground_truth(tmp_path, capsys):
    out = tmp_path / "truth.json"
    assert main(["sim-truth", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["seed"] == 1 and any(o["kind"] == "flake" for o in data["objects"])


def test_training_and_evaluation_commands_hand_their_options_over_in_order(tmp_path, capsys):
    # The first word after the command is an option: argparse's REMAINDER alone refuses it.
    model = str(tmp_path / "nope.onnx")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "evaluate-model",
                "--classifier",
                model,
                "--classifier-data",
                str(tmp_path),
                "--out",
                str(tmp_path / "report"),
            ]
        )
    assert exc.value.code == 2
    assert f"--classifier: model file not found: {model}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--log-level",
                "WARNING",
                "train",
                "classifier",
                "--epochs",
                "0",
                "--simulate-chips",
                "1",
                "--val-chips",
                "1",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
    assert exc.value.code == 2
    assert "--epochs must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["query", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
