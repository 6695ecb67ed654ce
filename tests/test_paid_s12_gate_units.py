"""The receipt gate's judgement of receipts against a spending cap read again while the
connection is open (dtp.metering.ReceiptGate, docs/escrow.md §6.1)."""

from __future__ import annotations

import pytest

from dtp.chain.objects import Sla
from dtp.errors import InvalidReceipt, SpendingCapExceeded
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity
from dtp.metering import GateState, ReceiptGate

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
CID = "0x" + "ab" * 32


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CLIENT = ident(0x68)


def receipt(total_bytes: int, nonce: int) -> bytes:
    amount = fee(SLA, total_bytes, 1)
    return Receipt(CID, total_bytes, 1, amount, nonce).sign(CLIENT).encode()


def gate(spend_limit: int) -> ReceiptGate:
    return ReceiptGate(
        connection_id=CID,
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        deposited=100_000,
        allowance=100,
        pause_timeout_ms=1000,
        spend_limit=spend_limit,
    )


def test_a_regression_below_a_lowered_cap_is_still_a_violation() -> None:
    g = gate(50_000)
    g.kept(g.check(receipt(400 * 1024, 1)))  # 4005 MIST
    g.spend_limit = 2000  # the owner lowered the cap; the server read it again
    # lower than the receipt before, and above the cap: not cumulative comes first
    # (§6's order), a violation that closes the connection (before: merely not counted)
    with pytest.raises(InvalidReceipt) as refused:
        g.check(receipt(300 * 1024, 2))
    assert refused.value.name == "EReceiptNotCumulative"
    assert g.violation is not None
    assert g.verdict(0, 400 * 1024, 1).state is GateState.CLOSE


def test_a_receipt_above_what_the_cap_lets_be_claimed_is_not_counted_and_not_a_violation() -> None:
    g = gate(50_000)
    g.kept(g.check(receipt(100 * 1024, 1)))  # 1005
    g.spend_limit = g.claim_limit = 2000  # a cap the claims are charged against
    with pytest.raises(SpendingCapExceeded):
        g.check(receipt(300 * 1024, 2))  # 3005: the cap would refuse its claim
    assert g.violation is None and g.latest_amount == 1005
    # usage beyond the allowance on what the cap pays: pause, not close
    assert g.verdict(0, 300 * 1024, 1).state is GateState.PAUSE


def test_a_cap_lowered_below_the_receipts_pays_for_what_was_served_and_serves_no_more() -> None:
    """A lowering binds what the server serves on (``spend_limit``), not the claims of a
    connection opened before it (``claim_limit``, the limit at open): a receipt above
    the lowered limit, for usage served before it, counts; and however promptly the
    client pays, usage is held at the lowered limit (receipts above it serve nothing)."""
    g = gate(50_000)
    g.kept(g.check(receipt(100 * 1024, 1)))  # 1005
    g.spend_limit = 2000  # lowered; claims keep 50_000
    g.kept(g.check(receipt(300 * 1024, 2)))  # 3005, served before the lowering
    assert g.latest_amount == 3005 and g.payable() == 3005
    assert g.verdict(0, 300 * 1024, 1).state is GateState.PAUSE  # 3005 > 2000
    assert not g.serving(300 * 1024, 1)
    assert g.credit_bytes(300 * 1024, 1) == 0
    assert g.settled_up(300 * 1024, 1)  # nothing more is owed
    # below the lowered limit (a usage the client had before), it would serve
    assert g.serving(150 * 1024, 1)
