"""``transport_control::open_with_session_key`` (docs/escrow.md §6.2) on LocalLedger and on
SuiLedger over the Sui node stand-in alike: the sender opens and pays, the escrow's
receipt key is the session key it named; receipts signed by that key are claimed and
settled, receipts signed by the sender's own key are not (EBadSignature), the key must
be 32 bytes, and the firewall, the cap and the minimum deposit still apply to the
sender."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtp.errors import FirewallDenied, InvalidReceipt
from dtp.ledger._objects import Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.ledger_server import identity_from_seed

SERVER = identity_from_seed(0x61)
WALLET = identity_from_seed(0x62)
OUTSIDER = identity_from_seed(0x63)
#: the session key: an identity only for its Ed25519 key (a page's ephemeral key)
SESSION = identity_from_seed(0x64)
SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
FUNDS = 10_000_000
GAS = 1_000_000_000


@pytest.fixture(params=["local", "sui"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "local":
        local = LocalLedger(":memory:", clock_ms=0)
        for who in (SERVER, WALLET, OUTSIDER):
            local.faucet(who.sui_address, FUNDS)
        yield local
        local.close()
        return
    with SuiNodeStandIn(clock_ms=0) as node:
        for who in (SERVER, WALLET, OUTSIDER):
            node.faucet(who.sui_address, FUNDS + GAS)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            yield sui
        finally:
            sui.close()
        node.state.check()


def _host(ledger: Ledger) -> str:
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 8, "jsonrpc", SLA)
    ledger.set_firewall_mode(SERVER, host, 1)
    ledger.allow(SERVER, host, WALLET.sui_address)
    return host


def test_receipts_of_the_session_key_are_claimed(ledger: Ledger) -> None:
    host = _host(ledger)
    cap = ledger.create_spending_cap(WALLET, 10_000)
    opened = ledger.open_session_connection(WALLET, host, 8, cap, 1_000, SESSION.ed25519_public)
    connection = ledger.get_connection(opened.connection_id)
    assert connection.client == WALLET.sui_address  # the wallet, not the session key
    escrow = ledger.get_escrow(opened.escrow_id)
    assert escrow.client_public_key == SESSION.ed25519_public
    scope = ledger.receipt_scope(opened.connection_id)
    # the wallet's own key does not sign for this escrow
    with pytest.raises(InvalidReceipt) as err:
        ledger.claim(SERVER, opened.escrow_id, Receipt(scope, 0, 2, 50, 1).sign(WALLET))
    assert err.value.name == "EBadSignature"
    assert ledger.claim(SERVER, opened.escrow_id, Receipt(scope, 0, 2, 50, 1).sign(SESSION)) == 50
    ledger.close_connection(WALLET, opened.connection_id)
    final = Receipt(scope, 300, 4, 100, 2).sign(SESSION)
    settled = ledger.settle_with_receipt(SERVER, opened.connection_id, final)
    assert (settled.claimed, settled.refunded) == (100, 900)


def test_the_key_and_the_sender_are_checked_as_for_open(ledger: Ledger) -> None:
    host = _host(ledger)
    cap = ledger.create_spending_cap(WALLET, 10_000)
    with pytest.raises(InvalidReceipt) as err:
        ledger.open_session_connection(WALLET, host, 8, cap, 1_000, b"\x01" * 31)
    assert err.value.name == "EInvalidPublicKey"
    outsider_cap = ledger.create_spending_cap(OUTSIDER, 10_000)
    # the firewall judges the sender: a session key of an allowed wallet's does not help
    with pytest.raises(FirewallDenied):
        ledger.open_session_connection(
            OUTSIDER, host, 8, outsider_cap, 1_000, WALLET.ed25519_public
        )
    assert ledger.get_cap(outsider_cap).outstanding == 0  # nothing was reserved
    # open itself still takes only the sender's key
    with pytest.raises(InvalidReceipt) as err:
        ledger.open_connection(WALLET, host, 8, cap, 1_000, SESSION.ed25519_public)
    assert err.value.name == "EKeyMismatch"
