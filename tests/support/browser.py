"""Headless Chromium for the tests that need a real browser (Debian's ``chromium``,
installed by scripts/bootstrap.sh), driven over the DevTools protocol from Python.

The driver is :mod:`dtp.cli._chromium`, which the demo's browser step uses too:

    with Chromium() as browser:
        page = browser.new_page()
        page.goto("http://127.0.0.1:8765/", ready="document.body.dataset.started")
        page.wait_for("document.body.dataset.messages === '1'")
        page.screenshot(path)

``goto`` loads the page again where its load lost a fetch (a network namespace coming or
going beside the test ends Chromium's requests in flight) until ``ready`` holds: give
the page's own sign that it has started, before anything it does that a load again
would repeat.
"""

from __future__ import annotations

import os

import pytest

from dtp.cli._chromium import FLAGS, BrowserError, Chromium, Page, chromium_path

__all__ = ["FLAGS", "BrowserError", "Chromium", "Page", "chromium_path", "need", "need_chromium"]


def need(what: str, present: bool) -> None:
    """Skip the test when ``what`` (a program and how to install it) is not present;
    fail it under CI instead, where scripts/bootstrap.sh installs it."""
    if not present:
        message = f"{what} is needed for this test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def need_chromium() -> None:
    """:func:`need` for headless Chromium."""
    need("chromium (apt-get install -y chromium)", chromium_path() is not None)
