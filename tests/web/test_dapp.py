"""The dApp demo (dtp/cli/dapp_host.py, web/dtp-client/demo/dapp.js) end to end: a
wallet opens an escrow on a LocalLedger through the demo's HTTP bridge (transactions its
own key signed), calls the JSON-RPC backend behind the provider's paid DTP service over
WebSocket, each call paid by a receipt of the JS client; the provider's settlement claims
exactly what the receipts say. A wallet off the allow list is refused by the ledger
(FirewallDenied) and by the DTP server (REFUSED, no connection ID). Run by node, then by
headless Chromium, whose screenshot goes into the test log (build/screenshots/)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from dtp.cli import dapp_host
from tests.support.browser import Chromium, need_chromium
from tests.support.paths import ROOT
from tests.web.browser_client import need_client, node_command

SHOTS = ROOT / "build" / "screenshots"


def _check(report: dict[str, Any], demo: Any) -> None:
    assert "error" not in report, report
    assert report["whoami"] == demo.wallet_address
    assert report["add"] == 42 and report["echo"] == ["gm"]
    assert report["closed"] == 0
    # the three calls: three requests at 25 (stream 0, held for the connection's life
    # and ended empty, carries none)
    price = dapp_host.SLA.price_per_request
    receipts = report["receipts"]
    assert [r["nonce"] for r in receipts] == list(range(1, len(receipts) + 1))
    assert [r["requests"] for r in receipts][:3] == [1, 2, 3]
    assert receipts[-1]["requests"] == 3 and receipts[-1]["amount"] == 3 * price
    # what the page read back from the ledger, and the ledger itself
    assert report["claimed"] == 3 * price
    assert demo.claimed(report["escrow"]["escrow"]) == 3 * price
    # the receipts were the session key's: the escrow's receipt key, not the wallet's
    wallet_key = dapp_host.wallet_public_key()
    assert report["receiptKey"] == report["sessionKey"] != wallet_key.hex()
    denied = report["denied"]
    assert denied["address"] == demo.denied_address
    assert denied["ledger"].startswith("FirewallDenied:"), denied
    assert denied["server"]["name"] == "ConnectionRefused"
    assert denied["server"]["code"] == 11


def test_the_dapp_flow_from_node() -> None:
    need_client()
    with dapp_host.DappDemo() as demo:
        job = {
            "base": demo.base,
            "seed": dapp_host.WALLET_SEED.hex(),
            "deniedSeed": dapp_host.DENIED_SEED.hex(),
        }
        out = subprocess.run(
            node_command("scripts/dapp-client.mjs"),
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        _check(json.loads(out.stdout), demo)


def test_the_dapp_page_in_chromium(capsys: pytest.CaptureFixture[str]) -> None:
    need_chromium()
    need_client()
    with dapp_host.DappDemo() as demo, Chromium() as browser:
        page = browser.new_page()
        page.goto(demo.page_url)
        page.wait_for("document.body.dataset.done", timeout=90)
        report = page.evaluate("window.report")
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(SHOTS / "dtp-dapp.png")
        with capsys.disabled():
            print(f"\n[screenshot] {shot}")
        _check(report, demo)
        denied_text = page.evaluate("document.getElementById('denied').textContent")
        assert "FirewallDenied" in denied_text and "refused" in denied_text
    assert shot.read_bytes().startswith(b"\x89PNG")
