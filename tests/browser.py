"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) for the form's tests.

`python -m tests.browser URL FILE OUT.png` uploads FILE to the form at URL with the XRD
model and saves a screenshot (how docs/figures/http-form.png was made).
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: without the background-networking ones Chromium keeps
# trying Google's hosts; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (Debian package chromium; `make test` installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the dev extra)"
    return None


@contextmanager
def browser_page(width: int = 1200, height: int = 1400):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def analyse_in_form(page, url: str, model: str, files: list[Path], fields: dict | None = None):
    """Fill the form and press Analyse; (summary text, error text) once the answer is shown."""
    page.goto(url)
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.select_option("#model", model)
    for key, value in (fields or {}).items():
        page.fill(f"#{key}", str(value))
    page.set_input_files("#files", [str(f) for f in files])
    page.click("#submit")
    page.wait_for_function(
        "document.getElementById('error').textContent !== '' || "
        "(document.getElementById('summary').textContent !== '' && "
        "document.getElementById('summary').textContent !== 'analysing...')",
        timeout=60_000,
    )
    return page.text_content("#summary") or "", page.text_content("#error") or ""


if __name__ == "__main__":
    url, file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with browser_page(1100, 900) as page:
        print(analyse_in_form(page, url, "xrd_cnn1d", [file]))
        page.screenshot(path=str(out), full_page=False)
