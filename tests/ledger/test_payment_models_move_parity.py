"""Three payment-model rules where LocalLedger must abort as Move does:

- ``tickets::create`` takes its title as a ``vector<u8>`` and calls ``string::utf8`` on it
  after its terms check, so a title that is not UTF-8 aborts in ``std::string`` on Sui;
  LocalLedger refused it before the call as InvalidArgument.
- ``sponsor::ENotSettled`` was a ConnectionStateError only, though docs/escrow.md §17 makes
  the payment models' state errors PaymentModelError.
- A connect with ``subscription=`` refused a withdrawn offer as a nameless
  SubscriptionExpired (the ledger says ``EOfferWithdrawn``), an expired subscription
  without its Move name, and checked the service before the holder (Move: holder first);
  it refuses a sold host's offer (``EProviderChanged``) where Move does, before the expiry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.errors import (
    ChainError,
    ConnectionStateError,
    InvalidArgument,
    PaymentModelError,
    SubscriptionExpired,
    WrongSubscription,
    move_error_from_abort_code,
)
from dtp.hostid._address import HostAddress
from dtp.hostid._connect import prepare_host_connection
from dtp.ledger._objects import MAX_PURE_BYTES
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import _tx as sui_tx
from tests.ledger.move_parity import CLIENT, NOT_UTF8, OTHER, SERVER, SLA, sui_string_abort
from tests.ledger.sui_tx_cases import CTX


@pytest.fixture
def ledger(tmp_path: Path) -> LocalLedger:
    """A fresh ledger where CLIENT, SERVER and OTHER hold 100 000 MIST each."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    for who in (CLIENT, SERVER, OTHER):
        ledger.faucet(who.sui_address, 100_000)
    return ledger


def _host(ledger: LocalLedger, *ports: int) -> str:
    """A host of SERVER's with a service on each of ``ports``."""
    host = ledger.create_host(SERVER, b"\x01" * 32)
    for port in ports:
        ledger.add_service(SERVER, host, port, "raw", SLA)
    return host


# -- tickets::create: a title that is not UTF-8 ----------------------------------------------------


def test_a_title_that_is_not_utf8_aborts_in_std_string_like_sui(ledger: LocalLedger) -> None:
    # Sui sends any bytes as the vector<u8>: the builder takes them
    assert sui_tx.create_ticket_sale(CTX, NOT_UTF8, 10, 1, 0, 1000)  # type: ignore[arg-type]
    before = ledger.dump()
    with pytest.raises(ChainError) as info:
        ledger.create_ticket_sale(SERVER, NOT_UTF8, 10, 1, 0, 1000)  # type: ignore[arg-type]
    local, sui = info.value, sui_string_abort()
    assert type(local) is type(sui) is ChainError
    assert (local.name, local.module, local.code) == (sui.name, sui.module, sui.code)
    assert (local.module, local.code) == ("string", 1)
    assert "UTF-8" in str(local)
    assert ledger.dump() == before


def test_a_title_is_decoded_after_the_terms_check_and_bounded_before_the_call(
    ledger: LocalLedger,
) -> None:
    # Move checks the terms before string::utf8: bad terms win over a bad title
    with pytest.raises(ChainError) as info:
        ledger.create_ticket_sale(SERVER, NOT_UTF8, 0, 1, 0, 1000)  # type: ignore[arg-type]
    assert info.value.qualified_name == "tickets::EInvalidTerms"
    # Sui refuses a pure argument this long before any Move code runs, UTF-8 or not
    with pytest.raises(InvalidArgument):
        ledger.create_ticket_sale(SERVER, NOT_UTF8 * MAX_PURE_BYTES, 10, 1, 0, 1000)  # type: ignore[arg-type]
    # a UTF-8 title given as bytes is the text it encodes
    sale = ledger.create_ticket_sale(SERVER, "café".encode(), 10, 1, 0, 1000)  # type: ignore[arg-type]
    assert ledger.get_ticket_sale(sale).title == "café"
    # the refusal is the Move abort, not a refusal before the call
    with pytest.raises(ChainError) as info:
        ledger.create_ticket_sale(SERVER, NOT_UTF8, 10, 1, 0, 1000)  # type: ignore[arg-type]
    assert not isinstance(info.value, InvalidArgument)


# -- sponsor::ENotSettled is a payment-model state error -------------------------------------------


def test_not_settled_is_a_payment_model_error_and_still_a_connection_state_error(
    ledger: LocalLedger,
) -> None:
    host = _host(ledger, 7)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    pool = ledger.create_sponsor_pool(SERVER, host, 7, 5000, max_pledge=10**9, lanes=1)
    ledger.fund_sponsor_pool(SERVER, pool, 1000)
    opened = ledger.open_sponsored_connection(CLIENT, pool, cap, 1000)
    with pytest.raises(PaymentModelError) as info:
        ledger.reimburse(OTHER, pool, opened.connection_id)
    assert info.value.qualified_name == "sponsor::ENotSettled"
    assert isinstance(info.value, ConnectionStateError)
    # SuiLedger maps the abort code to the same class
    assert type(move_error_from_abort_code(204)) is type(info.value)


# -- connect with subscription= ------------------------------------------------------------------


def test_a_withdrawn_offer_is_refused_as_the_ledger_does_in_moves_order(
    ledger: LocalLedger,
) -> None:
    host = _host(ledger, 7, 8)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    offer = ledger.create_subscription_offer(SERVER, host, 7, 100, 1)
    sub = ledger.subscribe(CLIENT, offer, 1)
    ledger.withdraw_subscription_offer(SERVER, offer)
    ledger.advance_epoch()  # expired too: Move checks the withdrawal first
    before = ledger.dump()
    with pytest.raises(ChainError) as on_ledger:
        ledger.open_subscribed_connection(CLIENT, sub, cap)
    # the port is no Move check (it opens on the offer's), so port 8 gets the same error
    for port in (7, 8):
        with pytest.raises(PaymentModelError) as early:
            prepare_host_connection(
                ledger, HostAddress(host, port), CLIENT, subscription=sub, cap_id=cap
            )
        assert type(early.value) is type(on_ledger.value) is PaymentModelError
        assert early.value.qualified_name == "subscription::EOfferWithdrawn"
        assert "withdrawn" in str(early.value) and sub in str(early.value)
    assert ledger.dump() == before
    # another host: Move checks the host before the withdrawal
    other_host = _host(ledger, 7)
    with pytest.raises(WrongSubscription) as wrong:
        prepare_host_connection(
            ledger, HostAddress(other_host, 7), CLIENT, subscription=sub, cap_id=cap
        )
    assert wrong.value.qualified_name == "subscription::EWrongHost"


def test_an_expired_subscription_is_refused_with_its_move_name(ledger: LocalLedger) -> None:
    host = _host(ledger, 7, 8)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    offer = ledger.create_subscription_offer(SERVER, host, 7, 100, 1)
    sub = ledger.subscribe(CLIENT, offer, 1)
    ledger.advance_epoch()
    with pytest.raises(ChainError) as on_ledger:
        ledger.open_subscribed_connection(CLIENT, sub, cap)
    for port in (7, 8):  # the ledger's error even for the offer's host's other service
        with pytest.raises(SubscriptionExpired) as early:
            prepare_host_connection(
                ledger, HostAddress(host, port), CLIENT, subscription=sub, cap_id=cap
            )
        assert early.value.qualified_name == on_ledger.value.qualified_name
        assert early.value.qualified_name == "subscription::ESubscriptionExpired"
        assert "epoch 1" in str(early.value)


def test_the_holder_is_checked_before_the_service(ledger: LocalLedger) -> None:
    host = _host(ledger, 7, 8)
    offer = ledger.create_subscription_offer(SERVER, host, 7, 100, 1)
    sub = ledger.subscribe(CLIENT, offer, 5)
    other_cap = ledger.create_spending_cap(OTHER, 1000)
    with pytest.raises(ChainError) as on_ledger:
        ledger.open_subscribed_connection(OTHER, sub, other_cap)
    assert on_ledger.value.name == "ENotHolder"
    with pytest.raises(WrongSubscription) as early:
        prepare_host_connection(
            ledger, HostAddress(host, 8), OTHER, subscription=sub, cap_id=other_cap
        )
    assert early.value.qualified_name == "subscription::ENotHolder"
    # the holder, on the offer's host's other service: still refused before anything moves
    cap = ledger.create_spending_cap(CLIENT, 1000)
    before = ledger.dump()
    with pytest.raises(WrongSubscription) as wrong:
        prepare_host_connection(ledger, HostAddress(host, 8), CLIENT, subscription=sub, cap_id=cap)
    assert wrong.value.qualified_name == "subscription::EWrongHost"
    assert ledger.dump() == before


def test_a_sold_hosts_offer_is_refused_before_the_expiry_as_the_ledger_does(
    ledger: LocalLedger,
) -> None:
    host = _host(ledger, 7)
    cap = ledger.create_spending_cap(CLIENT, 1_000_000)
    offer = ledger.create_subscription_offer(SERVER, host, 7, 100, 1)
    sub = ledger.subscribe(CLIENT, offer, 1)
    ledger.set_authority(SERVER, host, OTHER.sui_address)
    ledger.advance_epoch()  # expired too: Move checks the host's authority first
    before = ledger.dump()
    with pytest.raises(PaymentModelError) as on_ledger:
        ledger.open_subscribed_connection(CLIENT, sub, cap)
    with pytest.raises(PaymentModelError) as early:
        prepare_host_connection(ledger, HostAddress(host, 7), CLIENT, subscription=sub, cap_id=cap)
    assert early.value.qualified_name == on_ledger.value.qualified_name
    assert early.value.qualified_name == "subscription::EProviderChanged"
    assert OTHER.sui_address in str(early.value) and sub in str(early.value)
    assert ledger.dump() == before
    # once withdrawn (by anyone, the host being another's), the withdrawal is named first
    ledger.withdraw_subscription_offer(CLIENT, offer)
    with pytest.raises(PaymentModelError) as withdrawn:
        prepare_host_connection(ledger, HostAddress(host, 7), CLIENT, subscription=sub, cap_id=cap)
    assert withdrawn.value.qualified_name == "subscription::EOfferWithdrawn"
