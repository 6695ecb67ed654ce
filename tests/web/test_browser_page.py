"""The JavaScript client in a real browser: headless Chromium (Debian's ``chromium``,
installed by scripts/bootstrap.sh) loads web/dtp-client/demo/index.html from a local HTTP
server and runs the same echo as the node interop test against a dtp.aio server on the
WebSocket carrier, which admits the page's origin: IK and XX with the wallet's stand-in
key, echo on two streams, close, and a denied wallet refused. A screenshot of the page
goes into the test log (its path, under build/screenshots/)."""

from __future__ import annotations

import urllib.parse

import pytest

from dtp.cli._chromium import BrowserError
from dtp.identity.keys import HostIdentity
from tests.support.browser import Chromium, need_chromium
from tests.support.paths import ROOT
from tests.web.browser_client import EchoService, ServedEcho, need_client, served_package
from tests.web.test_browser_client import DENIED_SEED, SEED, _address

SHOTS = ROOT / "build" / "screenshots"


def test_the_demo_page_echoes_through_dtp_in_chromium(capsys: pytest.CaptureFixture[str]) -> None:
    need_chromium()
    need_client()
    identity = HostIdentity.generate()
    service = EchoService(denied={_address(DENIED_SEED)})
    with served_package() as base, ServedEcho(service, identity, origins=[base]) as ws_url:
        query = urllib.parse.urlencode(
            {
                "url": ws_url,
                "serverKey": identity.noise_public.hex(),
                "seed": SEED.hex(),
                "deniedSeed": DENIED_SEED.hex(),
                "bigLength": 1024 * 1024 + 5,
            }
        )
        with Chromium() as browser:
            page = browser.new_page()
            page.goto(f"{base}/demo/index.html?{query}")
            try:
                page.wait_for("document.body.dataset.done", timeout=60)
            except BrowserError as exc:
                # what the page got to, for the log: the step it hangs in
                text = page.evaluate("document.body.innerText")
                raise AssertionError(f"{exc}; the page shows:\n{str(text)[:3000]}") from exc
            report = page.evaluate("window.report")
            # the records went through libsodium's AEAD: the page maps the package in
            aead = page.evaluate("import('/src/record.js').then((m) => m.RECORD_AEAD.name)")
            SHOTS.mkdir(parents=True, exist_ok=True)
            shot = page.screenshot(SHOTS / "dtp-client-echo.png")
            with capsys.disabled():
                print(f"\n[screenshot] {shot}")
    assert "error" not in report, report
    assert aead == "libsodium"
    address = _address(SEED)
    for pattern in ("IK", "XX"):
        run = report[pattern.lower()]
        assert run["pattern"] == pattern and run["address"] == address
        assert run["echo"] == f"hello over {pattern}"
        assert run["bigEchoed"] is True and run["bigLength"] == 1024 * 1024 + 5
        assert run["closed"] == 0
    assert service.seen == [address, address]
    assert report["denied"] == {
        "refused": True,
        "code": 11,
        "reason": "this wallet is not on the allow list",
    }
    assert shot.read_bytes().startswith(b"\x89PNG")
