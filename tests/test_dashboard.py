"""The live dashboard in headless Chromium, against a daemon scanning the simulator: the
overview grows tile by tile, every hit appears, the counts and state follow the scan, and
a page that joins late starts from where the scan is."""

from __future__ import annotations

import os
import sqlite3
import urllib.request

import pytest

from flakescan.daemon.config import load_config, resolve_state_dir
from flakescan.daemon.dashboard import create_dashboard
from flakescan.daemon.uvicorn_thread import UvicornThread

from .browser import browser_page, chromium_missing

pytestmark = pytest.mark.slow
HIT_IDS = "els => els.map(e => e.dataset.id)"
# Share of near-black pixels in the middle of the map: tiles not drawn.
DARK_SHARE = """() => {
  const c = document.getElementById('tiles-layer');
  const d = c.getContext('2d').getImageData(c.width / 4, c.height / 4, c.width / 2, c.height / 2);
  let n = 0;
  const p = d.data;
  for (let i = 0; i < p.length; i += 4) if (p[i] + p[i + 1] + p[i + 2] < 30) n++;
  return n / (d.data.length / 4);
}"""


@pytest.fixture
def dashboard(start_daemon):
    d = start_daemon({"scan": {"region_um": [1000.0, 1000.0, 2700.0, 2300.0]}})
    cfg = load_config(d.config_path)
    state = resolve_state_dir(cfg)
    app, relay = create_dashboard(
        cfg.zmq.events, cfg.zmq.control, cfg.database_url(state), state / "thumbnails"
    )
    server = UvicornThread(app, "127.0.0.1", 0, name="dashboard")
    url = server.start()
    yield d, url, relay
    server.stop()


def test_the_dashboard_follows_a_scan_in_headless_chromium(dashboard, tmp_path):
    why = chromium_missing()
    if why:
        if os.environ.get("FLAKESCAN_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    d, url, relay = dashboard
    html = urllib.request.urlopen(url).read().decode()
    assert "http://" not in html.replace(url, "") and "https://" not in html  # no outside assets
    with browser_page(1300, 950) as page:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
        assert page.text_content("#state") == "idle"
        scan_id = d.client.request("scan_start")["scan_id"]
        page.wait_for_function(f"document.body.dataset.finished === '{scan_id}'", timeout=120_000)
        con = sqlite3.connect(d.db_path)
        sql = "SELECT tiles_planned FROM scans WHERE id = ?"
        planned = con.execute(sql, (scan_id,)).fetchone()[0]
        ids = {r[0] for r in con.execute("SELECT id FROM flakes WHERE scan_id = ?", (scan_id,))}
        page.wait_for_function(f"Number(document.body.dataset.tilesDrawn) === {planned}")
        assert page.text_content("#tiles") == f"{planned} / {planned}"
        shown = {
            int(x) for x in page.eval_on_selector_all(".hit", "els => els.map(e => e.dataset.id)")
        }
        assert shown == ids and len(ids) > 0
        assert page.text_content("#hits-count") == str(len(ids))
        assert "completed" in page.text_content("#outcome")
        # The map really shows the tiles: no black left inside the scanned region's centre.
        dark = page.evaluate(DARK_SHARE)
        assert dark < 0.01
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        assert all(r.startswith(url) for r in requests), [
            r for r in requests if not r.startswith(url)
        ]
    # A page that joins after the scan starts from the catalogue: the same hits.
    with browser_page(1300, 950) as late:
        late.goto(url)
        late.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
        late.wait_for_function(f"Number(document.body.dataset.tilesDrawn) === {planned}")
        shown = {
            int(x) for x in late.eval_on_selector_all(".hit", "els => els.map(e => e.dataset.id)")
        }
        assert shown == ids
    assert relay.received > planned  # every tile event came through the relay
