"""pytest-benchmark suite for bench/web_rows.py (fewer calls than compare.py's): each
side of ``ws_rpc_roundtrip`` runs in headless Chromium against its own servers, which
the test stops. Without chromium the row cannot run: skipped, saying so (CI, where
scripts/bootstrap.sh installs it, fails instead). The page is loaded again where a fetch
failed, and where it does not start it says why: a module it could not fetch, or one
never answered."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench import web_rows
from bench.workload import run_side
from dtp.cli._chromium import BrowserError, Chromium


def _need_row() -> None:
    why = web_rows.missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ws_rpc_roundtrip(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    _need_row()
    run_side(benchmark, web_rows.ws_rpc_roundtrip(20), side)


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ws_rpc_paid_roundtrip(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    _need_row()
    run_side(benchmark, web_rows.ws_rpc_paid_roundtrip(20), side)


def test_a_dtp_call_is_one_message_each_way_and_counted() -> None:
    """bench/web_counts.py on a few calls: a DTP call from the page is one WebSocket
    message each way (the stream's opening, request and FIN in one record; the answer,
    its FIN and the stream credit in one), as a plain call is, and each count is taken."""
    from bench import web_counts

    _need_row()
    w = web_rows.ws_rpc_roundtrip(10)
    try:
        page, loop = w.page, w.loop  # type: ignore[attr-defined]
        w.ours()  # (warm)
        for side, method in web_counts.SIDES:
            assert web_counts.ws_messages(page, method, 10) == {"sent": 10, "received": 10}, side
            calls = web_counts.js_calls(page, method, 10)
            assert sum(calls.values()) >= 10 * 3, (side, calls)  # (the loop, request, check)
            python = web_counts.python_calls(loop, page, method, 10)
            assert python.calls > 0 and python.passes > 0, side
            opcodes = web_counts.python_opcodes(loop, page, method, 10)
            assert sum(opcodes.values()) > python.calls, (side, opcodes.most_common(3))
    finally:
        assert w.close is not None
        w.close()


def test_the_paid_rows_calls_are_claimed_to_the_mist() -> None:
    """The paid row's body: each call a request of 25 MIST, its receipts far fewer than
    its calls (the page's Payment as the docs advise: a quarter of the 2000 MIST credit,
    every 20 calls), and the provider's claim at the end exactly the calls' price."""
    _need_row()
    w = web_rows.ws_rpc_paid_roundtrip(45)
    try:
        for _ in range(3):
            w.ours()
        requests, receipts, claimed = w.finish()  # type: ignore[attr-defined]
    finally:
        assert w.close is not None
        w.close()
    assert requests == 3 * 45
    assert claimed == requests * web_rows.PAID_SLA.price_per_request
    # one receipt per 20 calls at most (sooner where the server asked, its copy of the
    # last one still being written), and the close's
    assert requests // 20 <= receipts <= requests // 5, receipts


@contextmanager
def _serving(handler: type[web_rows._PackageHandler]) -> Iterator[web_rows._PackageServer]:
    server = web_rows._PackageServer(handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _NoRecordModule(web_rows._PackageHandler):
    def do_GET(self) -> None:
        if self.path == "/src/record.js":
            self.send_error(404)
        else:
            super().do_GET()


def test_a_module_not_served_is_named() -> None:
    _need_row()
    with (
        _serving(_NoRecordModule) as server,
        Chromium() as browser,
        pytest.raises(BrowserError) as failed,
    ):
        web_rows.open_page(browser, server)
    message = str(failed.value)
    assert "rpc.html failed: TypeError: Failed to fetch dynamically imported module" in message
    assert f"404 {server.base}/src/record.js" in message  # (the page's own fetch)
    assert "404 /src/record.js" in message  # (the server's answer)
    assert f"(load {web_rows.PAGE_TRIES}) " in message  # (a failed page is loaded again)


class _StreamModuleMissingOnce(web_rows._PackageHandler):
    refused = 0

    def do_GET(self) -> None:
        if self.path == "/src/stream.js" and not _StreamModuleMissingOnce.refused:
            # a fetch that fails once, as the ones Chromium ends when the host's network
            # changes (net::ERR_NETWORK_CHANGED); a 404, which it does not fetch again
            # itself, where a connection closed unanswered it may retry
            _StreamModuleMissingOnce.refused += 1
            self.send_error(404)
            return
        super().do_GET()


def test_a_page_that_lost_a_module_is_loaded_again() -> None:
    _need_row()
    _StreamModuleMissingOnce.refused = 0
    with _serving(_StreamModuleMissingOnce) as server, Chromium() as browser:
        page = web_rows.open_page(browser, server)
        assert page.evaluate("typeof window.rpcBench.dtpCalls") == "function"
    assert _StreamModuleMissingOnce.refused == 1
    asked = [line for line in server.log if line.endswith(" /src/stream.js")]
    assert asked == ["404 /src/stream.js", "200 /src/stream.js"]


_RELEASE = threading.Event()


class _StalledStream(web_rows._PackageHandler):
    def do_GET(self) -> None:
        if self.path == "/src/stream.js":
            _RELEASE.wait(30)
        super().do_GET()


def test_a_module_never_answered_ends_the_wait_with_a_report() -> None:
    _need_row()
    for _ in range(3):
        _RELEASE.clear()
        try:
            with (
                _serving(_StalledStream) as server,
                Chromium() as browser,
                pytest.raises(BrowserError) as failed,
            ):
                web_rows.open_page(browser, server, timeout=3)
        finally:
            _RELEASE.set()
        message = str(failed.value)
        if "Failed to fetch dynamically imported module" not in message:
            break
        # (another module's fetch failed, the page reporting it: a change of the host's
        # network by the suite's other tests ends Chromium's requests in flight. Again)
    assert message.startswith("(load 1) /bench/rpc.html did not start: still false after 3 s")
    assert "(load 2)" not in message  # (a wait that long is not loaded again)
    assert "the page: {" in message and '"state": "complete"' in message
    assert "asked and not answered yet: ['/src/stream.js']" in message
