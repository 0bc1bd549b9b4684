"""The live dashboard mid-scan, in headless Chromium: docs/figures/dashboard.png.

    .venv/bin/python docs/figures/make_dashboard_figure.py

Starts a daemon on the simulator (the default chip, with free ports and a temporary state
directory), serves the dashboard beside it, starts a scan, and takes the picture when about
60 % of the tiles are in.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flakescan.daemon.client import ControlClient  # noqa: E402
from flakescan.daemon.config import load_config  # noqa: E402
from flakescan.daemon.dashboard import create_dashboard  # noqa: E402
from flakescan.daemon.uvicorn_thread import UvicornThread  # noqa: E402
from tests.browser import browser_page  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        control, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        cfg_path = Path(tmp) / "d.toml"
        cfg_path.write_text(
            f'state_dir = "{state}"\n[zmq]\ncontrol = "{control}"\nevents = "{events}"\n'
            "[scan]\nregion_um = [0.0, 0.0, 5000.0, 5000.0]\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "flakescan.daemon", "daemon", "--config", str(cfg_path)]
        )
        try:
            client = ControlClient(control, timeout_s=20)
            client.wait_ready(90, alive=lambda: daemon.poll() is None)
            cfg = load_config(cfg_path)
            app, _ = create_dashboard(
                events, control, cfg.database_url(state), state / "thumbnails"
            )
            server = UvicornThread(app, "127.0.0.1", 0)
            url = server.start()
            with browser_page(1400, 900) as page:
                page.goto(url)
                page.wait_for_function("document.body.dataset.ready === '1'")
                planned = client.request("scan_start")["tiles"]
                page.wait_for_function(
                    f"Number(document.body.dataset.tilesDrawn) >= {int(planned * 0.6)}",
                    timeout=300_000,
                )
                time.sleep(0.5)
                page.screenshot(path=str(ROOT / "docs" / "figures" / "dashboard.png"))
            client.request("shutdown")
            server.stop()
        finally:
            daemon.wait(timeout=60)


if __name__ == "__main__":
    main()
