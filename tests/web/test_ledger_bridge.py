"""The ledger bridge a page uses on a LocalLedger (``dtp.ledger.local.bridge``,
docs/web-frontend.md "On the embedded ledger") over real HTTP: it builds the calls a
page's wallet opens and ends a paid connection with, runs only what the sender signed
(another key's signature is refused and changes nothing), reads escrows and connections
back, gives test SUI only where its faucet is on, and refuses what it does not take --
an unknown call, a body too large, a malformed argument -- with the error's kind.
(tests/web/test_paid_calls.py runs it under the JavaScript client's LocalLedgerBridge.)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.local.bridge import (
    BUILDS,
    MAX_BODY,
    LocalLedgerBridge,
    LocalLedgerBridgeServer,
    serve_bridge,
)

PROVIDER = HostIdentity.from_private_bytes(bytes([0x31] * 32), bytes([0x31] * 32))
WALLET = HostIdentity.from_private_bytes(bytes([0x32] * 32), bytes([0x32] * 32))
MALLORY = HostIdentity.from_private_bytes(bytes([0x33] * 32), bytes([0x33] * 32))
SESSION = HostIdentity.from_private_bytes(bytes([0x34] * 32), bytes([0x34] * 32))
SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with LocalLedger(tmp_path / "ledger.db") as opened:
        opened.faucet(PROVIDER.sui_address, 10**6)
        yield opened


def _serve(ledger: LocalLedger, **options: Any) -> LocalLedgerBridgeServer:
    static = options.pop("static", None)
    return serve_bridge(LocalLedgerBridge(ledger, {"host": "0x1"}, **options), static=static)


def _post(base: str, name: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/ledger/{name}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:  # (its socket closed: not left to the collector)
            return exc.code, json.loads(exc.read())


def _transact(
    base: str, signer: HostIdentity, call: dict[str, Any], by: HostIdentity | None = None
) -> tuple[int, dict[str, Any]]:
    status, built = _post(base, "build", {"sender": signer.sui_address, **call})
    assert status == 200, built
    tx = bytes.fromhex(built["tx"])
    signature = (by or signer).sign_transaction(tx)
    return _post(base, "execute", {"tx": tx.hex(), "signature": signature.hex()})


def test_a_wallet_opens_and_closes_a_paid_connection_through_it(ledger: LocalLedger) -> None:
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, 8, "jsonrpc", SLA)
    with _serve(ledger, faucet=5000) as bridge:
        with urllib.request.urlopen(f"{bridge.url}/ledger/info", timeout=30) as answer:
            info = json.loads(answer.read())
        assert info == {"package": ledger.package_id, "host": "0x1"}
        assert _post(bridge.url, "faucet", {"address": WALLET.sui_address}) == (
            200,
            {"balance": 5000},
        )
        status, cap = _transact(
            bridge.url, WALLET, {"call": "spending_cap::create", "max_per_epoch": "4000"}
        )
        assert status == 200, cap
        status, opened = _transact(
            bridge.url,
            WALLET,
            {
                "call": "transport_control::open_with_session_key",
                "host": host,
                "port": 8,
                "cap": cap["value"],
                "public_key": SESSION.ed25519_public.hex(),
                "deposit": 1000,
            },
        )
        assert status == 200, opened
        event = next(e for e in opened["events"] if e["name"] == "ConnectionOpened")
        connection, escrow = opened["value"], event["fields"]["escrow"]
        assert _post(bridge.url, "escrow", {"id": escrow}) == (
            200,
            {
                "deposited": 1000,
                "claimed": 0,
                "refunded": 0,
                "receiptKey": SESSION.ed25519_public.hex(),
            },
        )
        status, state = _post(bridge.url, "connection", {"id": connection})
        assert (status, state["state"], state["client"], state["escrow"]) == (
            200,
            "OPEN",
            WALLET.sui_address,
            escrow,
        )
        status, closed = _transact(
            bridge.url, WALLET, {"call": "transport_control::close", "connection": connection}
        )
        assert status == 200, closed
        assert _post(bridge.url, "connection", {"id": connection})[1]["state"] == "HALF_CLOSED"
    assert ledger.balance(WALLET.sui_address) == 4000


def test_only_the_senders_own_signature_runs(ledger: LocalLedger) -> None:
    ledger.faucet(WALLET.sui_address, 10_000)
    with _serve(ledger) as bridge:
        status, refused = _transact(
            bridge.url, WALLET, {"call": "spending_cap::create", "max_per_epoch": 10}, by=MALLORY
        )
        assert status == 400 and refused["error"] == "WrongSigner", refused
        assert (
            MALLORY.sui_address in refused["message"] and WALLET.sui_address in refused["message"]
        )
        # a signature that is no signature at all
        status, built = _post(
            bridge.url,
            "build",
            {"sender": WALLET.sui_address, "call": "spending_cap::create", "max_per_epoch": 10},
        )
        status, refused = _post(bridge.url, "execute", {"tx": built["tx"], "signature": "00" * 97})
        assert status == 400 and refused["error"] == "WrongSigner", refused
    assert ledger.balance(WALLET.sui_address) == 10_000
    assert ledger.audit()["minted"] == 10**6 + 10_000


def test_what_it_does_not_take_is_refused_by_kind(ledger: LocalLedger, tmp_path: Path) -> None:
    with _serve(ledger) as bridge:
        # no faucet unless it was given one
        status, answer = _post(bridge.url, "faucet", {"address": WALLET.sui_address})
        assert (status, answer["error"]) == (404, "NotFound")
        status, answer = _post(
            bridge.url, "build", {"sender": WALLET.sui_address, "call": "host::create"}
        )
        assert (status, answer["error"]) == (400, "ValueError")
        assert all(call in answer["message"] for call in BUILDS)
        status, answer = _post(
            bridge.url, "build", {"sender": WALLET.sui_address, "call": "spending_cap::create"}
        )
        assert (status, answer["message"]) == (400, "the call needs 'max_per_epoch'")
        status, answer = _post(
            bridge.url,
            "build",
            {"sender": WALLET.sui_address, "call": "spending_cap::create", "max_per_epoch": True},
        )
        assert status == 400 and "'max_per_epoch' is an integer" in answer["message"]
        status, answer = _post(bridge.url, "execute", {"tx": "zz", "signature": "00"})
        assert (status, answer["error"]) == (400, "ValueError")
        status, answer = _post(bridge.url, "escrow", ["not", "an", "object"])
        assert (status, answer["message"]) == (400, "the request body is a JSON object")
        status, answer = _post(bridge.url, "nothing", {})
        assert (status, answer["error"]) == (404, "NotFound")
        status, answer = _post(bridge.url, "info", b"x" * (MAX_BODY + 1))
        assert (status, answer["error"]) == (413, "TooLarge")
        # no static folder: nothing else is served
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{bridge.url}/index.html", timeout=30)
        with missing.value:
            assert missing.value.code == 404
    (tmp_path / "page.html").write_text("<p>a page</p>")
    with (
        _serve(ledger, static=tmp_path) as bridge,
        urllib.request.urlopen(f"{bridge.url}/page.html", timeout=30) as answer,
    ):
        assert answer.read() == b"<p>a page</p>"
    with pytest.raises(ValueError, match="faucet is MIST"):
        LocalLedgerBridge(ledger, faucet=-1)
