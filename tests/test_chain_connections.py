"""dtp.chain.connections: what a receipt can still claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.chain.connections import claimable_with
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Escrow, Sla
from dtp.errors import InvalidReceipt
from dtp.escrow import Receipt
from dtp.keys import HostIdentity

SUI = 1_000_000_000
SLA = Sla(0, 100, 1_000)
DEPOSIT = 10_000


# -- claimable_with ------------------------------------------------------------------------


def _escrow(deposited: int, claimed: int = 0, latest_nonce: int = 0) -> Escrow:
    return Escrow(
        id="0x" + "e1" * 32,
        version=3,
        connection="0x" + "c1" * 32,
        client="0x" + "0c" * 32,
        client_public_key=bytes(32),
        server="0x" + "05" * 32,
        spending_cap="0x" + "ca" * 32,
        sla=SLA,
        balance=deposited - claimed,
        deposited=deposited,
        claimed=claimed,
        refunded=0,
        latest_nonce=latest_nonce,
        settled=False,
    )


def _receipt(amount: int, nonce: int) -> Receipt:
    return Receipt("0x" + "c1" * 32, 0, amount // 100, amount, nonce)


def test_a_receipt_claims_what_it_adds_to_the_claims() -> None:
    escrow = _escrow(1_000, claimed=300, latest_nonce=2)
    assert claimable_with(_receipt(700, 3), escrow) == 400
    assert claimable_with(_receipt(1_000, 3), escrow) == 700  # the whole deposit
    assert claimable_with(_receipt(200, 3), escrow) == 0  # less than claimed: nothing more
    assert claimable_with(_receipt(700, 2), escrow) == 0  # a nonce the escrow has seen
    assert claimable_with(None, escrow) == 0


def test_a_receipt_beyond_the_deposit_claims_nothing() -> None:
    """The ledger refuses it whole (EReceiptExceedsDeposit): it is not capped at the
    deposit."""
    escrow = _escrow(1_000, claimed=300, latest_nonce=2)
    assert claimable_with(_receipt(1_001, 3), escrow) == 0


def test_a_receipt_beyond_the_deposit_is_refused_on_the_ledger(tmp_path: Path) -> None:
    """What the rule above follows: the chain pays nothing for such a receipt."""
    ledger = LocalLedger(tmp_path / "l.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    ledger.faucet(client.sui_address, SUI)
    cap = ledger.create_spending_cap(client, SUI)
    opened = ledger.open_connection(client, host, 7, cap, DEPOSIT)
    receipt = Receipt(opened.connection_id, 0, 101, 10_100, 1).sign(client)  # 100 MIST a request
    escrow = ledger.get_escrow(opened.escrow_id)
    assert claimable_with(receipt, escrow) == 0
    with pytest.raises(InvalidReceipt) as info:
        ledger.claim(server, opened.escrow_id, receipt)
    assert info.value.name == "EReceiptExceedsDeposit"
    ledger.close()
