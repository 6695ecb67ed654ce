"""The status page in a real browser: headless Chromium (Debian's ``chromium``,
installed by scripts/bootstrap.sh) loads ``/`` from a provider daemon's metrics address
while traffic flows through it, and the page shows the service live -- its connection,
its bytes growing, its backend up, the ledger healthy, the charts drawn -- with nothing
loaded from elsewhere. Its screenshots go into the test log (the files' paths, under
build/screenshots/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.metrics_scrape import metered_pair, streaming
from tests.daemon.tunnel_setup import PAID, Setup, service
from tests.support.browser import Chromium, Page, need_chromium
from tests.support.daemon_procs import wait_until
from tests.support.paths import ROOT

SHOTS = ROOT / "build" / "screenshots"
#: the page has loaded and its first fetch of the daemon's figures answered
LIVE = "document.body?.dataset.state === 'live'"


@pytest.fixture
def browser() -> Chromium:
    need_chromium()
    return Chromium()


def _shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = page.screenshot(SHOTS / f"daemon-status-{name}.png")
    assert path.stat().st_size > 1000
    print(f"\n[screenshot] {path}")
    return path


@pytest.mark.parametrize("setup", ["local", "sui"], indirect=True)
def test_the_status_page_shows_a_live_service(setup: Setup, browser: Chromium) -> None:
    backend = setup.backend()
    pair = metered_pair(setup, service([backend.info["port"]], extra=PAID), "deposit = 50000000")
    card = '[data-service="svc7000"]'
    with browser, streaming(pair.address) as stream:
        wait_until(lambda: stream.received > 1 << 20, 60, "traffic through the tunnel")
        page = browser.new_page()
        page.goto(f"http://{pair.provider_metrics}/", ready=LIVE)
        page.wait_for(f"!!document.querySelector('{card}')")
        assert page.evaluate(f"document.querySelector('{card}').dataset.connections") == "1"
        assert page.evaluate(f"document.querySelector('{card}').dataset.backendsUp") == "1"
        seen = int(page.evaluate(f"document.querySelector('{card}').dataset.bytes"))
        assert seen > 0
        # live: the page's next refreshes show the bytes that flowed meanwhile
        page.wait_for(f"Number(document.querySelector('{card}').dataset.bytes) > {seen}")
        page.wait_for("document.getElementById('ledger').textContent === 'ok'")
        # the charts: one line each of connections, throughput and fees, drawn once two
        # samples are in (a sample every 2 s)
        page.wait_for(f"document.querySelectorAll('{card} svg path').length >= 6", timeout=30)
        text = page.evaluate(f"document.querySelector('{card}').innerText")
        for label in ("connections open", "throughput", "fees earned", "owed", "up"):
            assert label in text, text
        assert page.evaluate("document.body.dataset.services") == "1"
        # nothing fetched from elsewhere: every resource the page loaded is its daemon's
        origins = page.evaluate(
            "[...new Set(performance.getEntriesByType('resource')"
            ".map(e => new URL(e.name).origin))]"
        )
        assert origins == [f"http://{pair.provider_metrics}"], origins
        _shot(page, f"provider-{'sui' if setup.node else 'local'}")
        client = browser.new_page()
        client.goto(f"http://{pair.forwarder_metrics}/")
        client.wait_for("!!document.querySelector('[data-forward=\"svc\"]')")
        assert (
            client.evaluate("document.querySelector('[data-forward=\"svc\"]').dataset.state")
            == "ok"
        )
        _shot(client, f"forwarder-{'sui' if setup.node else 'local'}")
    # the daemon gone, the page says so rather than showing stale figures as live
    with Chromium() as again:
        page = again.new_page()
        page.goto(f"http://{pair.provider_metrics}/", ready=LIVE)
        pair.provider.stop()
        page.wait_for("document.body.dataset.state === 'offline'", timeout=30)
