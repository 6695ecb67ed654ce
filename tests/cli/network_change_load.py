"""A page load across a real network change, run by tests/cli/test_chromium_loads.py in
a network namespace of its own (``unshare -n``; root): nothing outside it sees the change.

    python -m tests.cli.network_change_load TRIES

A local server holds the first load's modules while an interface with an address comes
up in the namespace: the modules Chromium has queued behind its 6 connections to the
server meanwhile end with net::ERR_NETWORK_CHANGED. Prints a JSON line: the loads
of the page the server answered, whether the page started, and Page.goto's error.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dtp.cli._chromium import BrowserError, Chromium

MODULES = 24  # (imported side by side: more than the 6 connections a host gets)
CONNECTIONS = 6
RELEASE_AFTER = 3.0


class _Site(http.server.ThreadingHTTPServer):
    def __init__(self, folder: str) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=folder))
        self.lock = threading.Condition()
        self.pages = 0
        self.held = 0
        self.release = threading.Event()


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Site

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            if self.path == "/index.html":
                self.server.pages += 1
            first = self.server.pages == 1
            if first and self.path.startswith("/m") and self.path != "/m0.js":
                self.server.held += 1
                self.server.lock.notify_all()
        if first and self.path.startswith("/m") and self.path != "/m0.js":
            self.server.release.wait(60)
        super().do_GET()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _change_network(site: _Site) -> None:
    """Once the server holds a module on each of Chromium's connections (the others
    queued in the browser), an interface with an address comes up; the modules held
    are answered a while after (Chromium keeps those connections even once the page
    has gone: a load again waits for them)."""
    with site.lock:
        site.lock.wait_for(lambda: site.held >= CONNECTIONS, 60)
    _ip("link", "add", "chg0", "type", "veth", "peer", "name", "chg1")
    _ip("addr", "add", "10.77.0.1/30", "dev", "chg0")
    _ip("link", "set", "chg0", "up")
    _ip("link", "set", "chg1", "up")
    # (Chromium ends the queued requests as it learns of the change, well within this)
    time.sleep(RELEASE_AFTER)
    site.release.set()


def main() -> None:
    tries = int(sys.argv[1])
    _ip("link", "set", "lo", "up")
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder)
        (site / "index.html").write_text(
            '<!doctype html><html><head><link rel="icon" href="data:,"></head>'
            '<body><script type="module" src="./m0.js"></script></body></html>'
        )
        imports = "".join(f"import './m{i}.js';\n" for i in range(1, MODULES + 1))
        (site / "m0.js").write_text(imports + "document.body.dataset.started = 'yes';\n")
        for i in range(1, MODULES + 1):
            (site / f"m{i}.js").write_text(f"export const m{i} = {i};\n")
        server = _Site(folder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        threading.Thread(target=_change_network, args=(server,), daemon=True).start()
        error = None
        with Chromium() as browser:
            page = browser.new_page()
            try:
                page.goto(
                    f"http://127.0.0.1:{server.server_address[1]}/index.html",
                    ready="document.body?.dataset.started",
                    timeout=60,
                    tries=tries,
                )
            except BrowserError as exc:
                error = str(exc)
            started = page.evaluate("document.body?.dataset.started ?? null")
        server.release.set()
        server.shutdown()
        print(json.dumps({"pages": server.pages, "started": started, "error": error}))


if __name__ == "__main__":
    main()
