"""Page.goto in headless Chromium against a local HTTP server that drops fetches: a load
that lost a module (as Chromium ends every request in flight, net::ERR_NETWORK_CHANGED,
when the host's network changes) is loaded again; one that never gets its module says
which; a fetch that fails once the page is ready is left to the page."""

from __future__ import annotations

import collections
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dtp.cli._chromium import LOAD_TRIES, LoadFailed
from tests.support.browser import Chromium, need, need_chromium
from tests.support.paths import ROOT

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body><script type="module" src="./start.js"></script></body></html>
"""
# (a module that imports another: the lost fetch can be one the page never names)
START = "import { word } from './word.js';\ndocument.body.dataset.started = word;\n"
WORD = "export const word = 'yes';\n"
# a page whose own call to its server fails as it starts (as a demo's first POST may),
# and one that loads a module it lacks the moment it says it is ready
OWN_CALL = """
const status = await fetch('./missing.json', { method: 'POST' }).then((r) => r.status);
document.body.dataset.started = String(status);
"""
LATE_MODULE = """
document.body.dataset.started = 'yes';
import('./missing.js').catch(() => { window.late = 'failed'; });
"""
# a page whose own WebSocket fails, and a fetch elsewhere, as it starts: neither is its load
OTHERS = """
new WebSocket(`ws://${location.host}/socket`).onclose = () => { window.socket = 'closed'; };
fetch('http://127.0.0.1:9/elsewhere').catch(() => { window.elsewhere = 'failed'; });
document.body.dataset.started = 'yes';
"""


class _Site(http.server.ThreadingHTTPServer):
    """The page's folder over HTTP; ``refuse`` says how many times each path is answered
    404 first (or, where ``stall``, never answered), and ``log`` what it answered."""

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
        self.refuse: collections.Counter[str] = collections.Counter()
        self.stall: set[str] = set()
        self.release = threading.Event()
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/index.html"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Site

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path in self.server.stall:
            self.server.release.wait(30)
        if self.server.refuse[self.path] > 0:
            self.server.refuse[self.path] -= 1
            self.send_error(404)
        else:
            super().do_GET()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.log.append(f"{code} {self.path}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[_Site]:
    need_chromium()
    (tmp_path / "index.html").write_text(PAGE)
    (tmp_path / "start.js").write_text(START)
    (tmp_path / "word.js").write_text(WORD)
    (tmp_path / "others.html").write_text(PAGE.replace("start.js", "others.js"))
    (tmp_path / "others.js").write_text(OTHERS)
    for name, script in (("own", OWN_CALL), ("late", LATE_MODULE)):
        (tmp_path / f"{name}.html").write_text(PAGE.replace("start.js", f"{name}.js"))
        (tmp_path / f"{name}.js").write_text(script)
    server = _Site(tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _asked(site: _Site, path: str) -> int:
    """How many times ``path`` was answered (a load again can get a 304)."""
    return sum(line.endswith(f" {path}") for line in site.log)


@contextmanager
def _page() -> Iterator[Any]:
    with Chromium() as browser:
        yield browser.new_page()


def test_a_page_that_lost_a_module_is_loaded_again(site: _Site) -> None:
    site.refuse["/word.js"] = 1
    with _page() as page:
        page.goto(site.url, ready="document.body?.dataset.started")
        assert page.evaluate("document.body.dataset.started") == "yes"
    assert [line for line in site.log if line.endswith("/word.js")] == [
        "404 /word.js",
        "200 /word.js",
    ]
    assert _asked(site, "/index.html") == 2


def test_a_page_loaded_by_default_is_one_whose_scripts_ran(site: _Site) -> None:
    # (the document completes even where its module failed: that load is not taken)
    site.refuse["/start.js"] = 2
    with _page() as page:
        page.goto(site.url)
        assert page.evaluate("document.body.dataset.started") == "yes"
    # each load whose module was refused was loaded again, and only those: Chromium may
    # ask for a module twice in one load (a speculative fetch first), so loads are told
    # apart by the document's requests, not counted as one refusal each
    loads = " ".join(line for line in site.log if line.endswith(("/index.html", "/start.js")))
    per_load = [part.split() for part in loads.split("/index.html")[1:]]
    assert len(per_load) >= 2 and site.refuse["/start.js"] == 0
    assert all("404" in load for load in per_load[:-1])
    # the load taken ran the module it was answered last (its speculative fetch may
    # have been refused first, within that same load)
    assert per_load[-1][-2:] == ["200", "/start.js"]


def test_a_module_never_served_is_named_after_every_load(site: _Site) -> None:
    site.refuse["/word.js"] = LOAD_TRIES
    with _page() as page, pytest.raises(LoadFailed) as failed:
        page.goto(site.url, ready="document.body?.dataset.started")
    message = str(failed.value)
    for load in range(1, LOAD_TRIES + 1):
        assert f"(load {load}) /index.html lost a fetch" in message
    assert f"(load {LOAD_TRIES + 1})" not in message
    assert f"lost: ['404 Script {site.url.removesuffix('index.html')}word.js']" in message
    assert site.log.count("404 /word.js") == LOAD_TRIES


def test_a_page_that_never_gets_ready_is_not_loaded_again(site: _Site) -> None:
    site.stall.add("/word.js")
    with _page() as page, pytest.raises(LoadFailed) as failed:
        page.goto(site.url, ready="document.body?.dataset.started", timeout=2)
    message = str(failed.value)
    assert message.startswith("(load 1) /index.html did not start: still false after 2 s")
    assert "(load 2)" not in message
    assert "not answered yet: ['http://127.0.0.1:" in message and "/word.js']" in message


def test_a_ready_expression_that_throws_says_what_it_threw(site: _Site) -> None:
    with _page() as page, pytest.raises(LoadFailed) as failed:
        page.goto(site.url, ready="document.body.dataset.nothing.here", timeout=1)
    assert "(it threw TypeError: Cannot read properties of undefined" in str(failed.value)
    assert _asked(site, "/index.html") == 1


def test_a_fetch_failing_once_the_page_is_ready_is_the_page_s_own(site: _Site) -> None:
    with _page() as page:
        page.goto(site.url, ready="document.body?.dataset.started")
        assert page.evaluate("fetch('./later.json').then((r) => r.status)") == 404
    assert _asked(site, "/index.html") == 1
    assert "404 /later.json" in site.log


def test_a_module_lost_as_the_page_says_it_is_ready_is_the_page_s_own(site: _Site) -> None:
    # (ready and the lost module come within one poll: ready wins)
    with _page() as page:
        page.goto(
            site.url.replace("index.html", "late.html"), ready="document.body?.dataset.started"
        )
        page.wait_for("window.late === 'failed'")
    assert _asked(site, "/late.html") == 1
    assert "404 /missing.js" in site.log


def test_the_page_s_own_call_failing_as_it_starts_is_not_made_again(site: _Site) -> None:
    # (a new load would repeat the call: a demo's POST to its bridge, say)
    with _page() as page:
        page.goto(
            site.url.replace("index.html", "own.html"), ready="document.body?.dataset.started"
        )
        assert page.evaluate("document.body.dataset.started") == "501"
    assert _asked(site, "/own.html") == 1
    assert _asked(site, "/missing.json") == 1


def test_a_websocket_or_a_fetch_elsewhere_failing_is_no_lost_load(site: _Site) -> None:
    with _page() as page:
        page.goto(
            site.url.replace("index.html", "others.html"),
            ready="document.body?.dataset.started && window.socket && window.elsewhere",
        )
    assert _asked(site, "/others.html") == 1
    assert "404 /socket" in site.log  # (its handshake, answered: the socket closed)


def test_a_page_s_own_word_that_it_failed_loads_it_again(site: _Site) -> None:
    # (with a failed expression the page reports its lost fetch itself)
    site.refuse["/word.js"] = 1
    with _page() as page:
        page.goto(
            site.url,
            ready="document.body?.dataset.started",
            failed="document.body && performance.getEntriesByType('resource')"
            ".some((e) => e.responseStatus === 404 && e.name.endsWith('/word.js'))",
        )
    assert _asked(site, "/index.html") == 2


def _network_change_load(tries: int) -> dict[str, Any]:
    """tests/cli/network_change_load.py's outcome, in a network namespace of its own."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        need("root, unshare and ip (a network namespace of its own)", False)
    ran = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.cli.network_change_load", str(tries)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(ran.stdout.splitlines()[-1])
    return outcome


@pytest.mark.parametrize("tries", [1, LOAD_TRIES])
def test_a_load_across_a_network_change(tries: int) -> None:
    need_chromium()
    outcome = _network_change_load(tries)
    if tries == 1:
        # (the modules queued for a connection ended with the change: the page never ran)
        assert outcome["pages"] == 1 and outcome["started"] is None
        assert "net::ERR_NETWORK_CHANGED Script http://127.0.0.1:" in outcome["error"]
    else:
        assert outcome == {"pages": 2, "started": "yes", "error": None}
