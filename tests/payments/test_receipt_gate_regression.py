"""The receipt gate's judgement of a regression (dtp.payments._gate.ReceiptGate, docs/escrow.md
§6.1): a receipt for less than one it checked before is a violation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dtp.errors import InvalidReceipt
from dtp.hostid.paid._engine import PaidConnectionState
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments._gate import GateState, ReceiptGate
from dtp.payments.receipts import Receipt, fee
from tests.support.scopes import scope_of

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
CID = "0x" + "ab" * 32


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CLIENT = ident(0x68)


def receipt(total_bytes: int, nonce: int) -> bytes:
    amount = fee(SLA, total_bytes, 1)
    return Receipt(scope_of(CID), total_bytes, 1, amount, nonce).sign(CLIENT).encode()


def gate() -> ReceiptGate:
    return ReceiptGate(
        scope=scope_of(CID),
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        deposited=100_000,
        allowance=100,
        pause_timeout_ms=1000,
    )


def test_a_regression_is_a_violation() -> None:
    g = gate()
    g.kept(g.check(receipt(400 * 1024, 1)))  # 4005 MIST
    # lower than the receipt before: not cumulative, a violation that closes the
    # connection (not merely left uncounted)
    with pytest.raises(InvalidReceipt) as refused:
        g.check(receipt(300 * 1024, 2))
    assert refused.value.name == "EReceiptNotCumulative"
    assert g.violation is not None
    assert g.verdict(0, 400 * 1024, 1).state is GateState.CLOSE


def test_the_final_receipt_is_the_newest_only_while_no_other_was_checked_after_it() -> None:
    # (a paid server settles from the final receipt alone only then: PaidConnectionState)
    g = gate()
    state = object.__new__(PaidConnectionState)
    state.gate = g
    state.core = SimpleNamespace(final=None)  # type: ignore[assignment]
    assert not state.final_is_newest()  # (no final receipt: the store is read)
    g.kept(g.check(receipt(100 * 1024, 1)))
    state.core.final = g.check(receipt(200 * 1024, 2))
    assert state.final_is_newest()
    g.check(receipt(300 * 1024, 3))  # (checked after the final one: a top-up's)
    assert not state.final_is_newest()
