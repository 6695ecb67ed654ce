"""Headless Chromium for the tests that need a real browser (Debian's ``chromium``,
installed by scripts/bootstrap.sh), driven over the DevTools protocol from Python.

The driver is :mod:`dtp.cli.chromium`, which the demo's browser step uses too:

    with Chromium() as browser:
        page = browser.new_page()
        page.goto("http://127.0.0.1:8765/")
        page.wait_for("document.body.dataset.messages === '1'")
        page.screenshot(path)
"""

from __future__ import annotations

from dtp.cli.chromium import FLAGS, BrowserError, Chromium, Page, chromium_path

__all__ = ["FLAGS", "BrowserError", "Chromium", "Page", "chromium_path"]
