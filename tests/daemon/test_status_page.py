"""The status page in a real browser: headless Chromium (Debian's ``chromium``,
installed by scripts/bootstrap.sh) loads ``/`` from a provider daemon's metrics address
while traffic flows through it, and the page shows the service live -- its connection,
its bytes growing, its backend up, the ledger healthy, the charts drawn -- with nothing
loaded from elsewhere. Once the daemons are gone the pages turn offline with nothing
that looks live: a stopped daemon's page shows the figures it saved as it stopped, a
killed one's its last, marked as such. Its screenshots go into the test log (the
files' paths, under build/screenshots/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.metrics_scrape import metered_pair, streaming
from tests.daemon.tunnel_setup import PAID, Setup, service, svc_row
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
    # the daemons gone, the pages say so: nothing on them looks live, the stopped one's
    # figures are those it saved as it stopped (its drain's settlement claimed what the
    # last poll showed owed), the killed one's its last, marked as such
    with Chromium() as again:
        page = again.new_page()
        page.goto(f"http://{pair.provider_metrics}/", ready=LIVE)
        client = again.new_page()
        client.goto(f"http://{pair.forwarder_metrics}/", ready=LIVE)
        page.wait_for(f"Number(document.querySelector('{card}').dataset.feesOwed) > 0")
        assert page.evaluate(f"document.querySelector('{card}').dataset.feesClaimed") == "0"
        pair.provider.stop()
        page.wait_for("document.body.dataset.figures === 'saved'", timeout=30)
        saved = svc_row(setup, state="daemon-state")
        assert saved["fees_claimed"] > 0
        shown = page.evaluate(f"({{...document.querySelector('{card}').dataset}})")
        assert int(shown["feesClaimed"]) == saved["fees_claimed"]
        assert int(shown["feesEarned"]) == saved["fees_earned"]
        assert nothing_live(page, "Stopped")
        _shot(page, f"provider-stopped-{'sui' if setup.node else 'local'}")
        pair.forwarder.kill()  # (no last word from it)
        client.wait_for("document.body.dataset.figures === 'last-known'", timeout=30)
        assert nothing_live(client, "Offline")
        paid = client.evaluate("document.querySelector('[data-forward=\"svc\"]').innerText")
        assert "offline: last known figures, from" in paid and "paid" in paid, paid


def nothing_live(page: Page, banner: str) -> bool:
    """The page says, in its banner, that it is ``banner`` (stopped, offline), and shows
    nothing that looks live: no coloured badge, no badge that says serving, ok or up,
    no backend up, no figure or chart legend of what is open or flowing now, every card
    marked with the time its figures are from."""
    state = page.evaluate(
        """(() => {
        const badges = [...document.querySelectorAll('.badge')];
        const figures = [...document.querySelectorAll('.fig')].map(f => f.innerText);
        return {
          state: document.body.dataset.state,
          banner: document.getElementById('banner').hidden ? '' :
            document.getElementById('banner').innerText,
          coloured: badges.filter(b => /\b(ok|bad|warn)\b/.test(b.className)).length,
          said: badges.map(b => b.textContent),
          up: document.querySelectorAll('.dot.up, .dot.down, [data-up="up"]').length,
          now: figures.filter(f => /open|throughput|flows/.test(f) && !f.startsWith('\u2013'))
            .concat([...document.querySelectorAll('.chart .t')].map(t => t.innerText)
              .filter(t => /\bnow\b/.test(t))),
          cards: document.querySelectorAll('section.card').length,
          marked: document.querySelectorAll('section.card .asof').length,
        };
        })()"""
    )
    assert state["state"] == "offline" and state["banner"].startswith(banner), state
    assert state["coloured"] == 0 and state["up"] == 0 and state["now"] == [], state
    assert not {"serving", "ok", "target up", "no backend"} & set(state["said"]), state
    assert state["cards"] > 0 and state["marked"] == state["cards"], state
    return True
