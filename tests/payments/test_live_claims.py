"""Claims while a connection lives (dtp.payments._live_claims, docs/escrow.md §7.1):
when a paid server claims the receipts of a connection it still serves -- by amount,
by age (a fraction of the connection's half-close timeout), never two of one
connection within the interval, never for less than the claim's gas where it is
weighed -- on a virtual clock (the engine takes ``now``); then the claims made on a
real LocalLedger, conservation checked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import InvalidArgument
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._gas import EndGas
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, OpenedConnection, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import U64_MAX, Receipt, ReceiptScope, fee
from dtp.payments._live_claims import (
    CLAIM_RETRY,
    CLAIM_RETRY_MAX,
    ClaimDue,
    ClaimReason,
    ClaimRule,
    LiveClaims,
    claim_live,
)
from dtp.payments._settlement import claim_and_settle
from tests.support.paid_twins import ident

#: The stand-in's figures at its gas price of 1000 (tests/payments/test_end_gas.py); a
#: claim alone, not given apart, weighed as a settlement that claims nothing.
SUI = EndGas(3_328_000, 2_264_000, 2_328_000, 1_200_000)
FREE = EndGas.free()
CID = "0x" + "c1" * 32
ESCROW = "0x" + "e5" * 32
SCOPE = ReceiptScope("0x" + "0a" * 32, ESCROW, CID)
T = HALF_CLOSE_TIMEOUT_MS  # (600 s)


def _receipt(nonce: int, amount: int, cid: str = CID) -> Receipt:
    scope = SCOPE if cid == CID else ReceiptScope(SCOPE.package, ESCROW, cid)
    return Receipt(scope, 1024 * nonce, 1, amount, nonce, b"\x00" * 64)


def _claims(rule: ClaimRule | None = None, at: float = 0.0, **watch: int) -> LiveClaims:
    claims = LiveClaims(rule or ClaimRule())
    claims.watch(CID, ESCROW, T, at, **watch)
    return claims


# -- the rule --------------------------------------------------------------------------------


def test_on_a_ledger_without_gas_any_amount_is_claimed_after_the_interval() -> None:
    claims = _claims()
    assert claims.kept(_receipt(1, 5), 1.0)  # (the first unclaimed: the driver looks)
    assert claims.due(9.99, FREE) == []  # (no claim within the interval of the start)
    (due,) = claims.due(10.0, FREE)
    assert (due.receipt.nonce, due.unclaimed, due.reason) == (1, 5, ClaimReason.AMOUNT)
    assert claims.due(10.0, FREE) == []  # (under way: asked once)
    claims.claimed(due, 10.5)
    assert claims.unclaimed(CID) == 0
    claims.kept(_receipt(2, 9), 11.0)
    assert claims.unclaimed(CID) == 4
    assert claims.due(20.49, FREE) == []
    (due,) = claims.due(20.5, FREE)
    assert (due.receipt.nonce, due.unclaimed) == (2, 4)


def test_on_sui_the_amount_must_pay_for_the_claims_gas() -> None:
    claims = _claims(ClaimRule(age=None))
    claims.kept(_receipt(1, SUI.claim - 1), 1.0)
    assert claims.due(100.0, SUI) == []  # (one MIST short of its gas)
    assert not claims.kept(_receipt(2, SUI.claim - 1), 2.0)  # (the same amount)
    assert claims.kept(_receipt(3, SUI.claim), 3.0)  # (reaches it: the driver looks)
    (due,) = claims.due(100.0, SUI)
    assert (due.receipt.nonce, due.unclaimed, due.reason) == (3, SUI.claim, ClaimReason.AMOUNT)


def test_a_threshold_above_the_gas_waits_for_it() -> None:
    claims = _claims(ClaimRule(above=10_000_000, age=None))
    claims.kept(_receipt(1, 9_999_999), 0.0)
    assert claims.due(50.0, SUI) == []
    claims.kept(_receipt(2, 10_000_000), 1.0)
    assert [d.receipt.nonce for d in claims.due(50.0, SUI)] == [2]


def test_a_threshold_below_the_gas_is_raised_to_it_unless_gas_is_not_weighed() -> None:
    weighed = _claims(ClaimRule(above=1, age=None))
    weighed.kept(_receipt(1, 1_000), 0.0)
    assert weighed.due(50.0, SUI) == []
    unweighed = _claims(ClaimRule(above=1, age=None, weigh_gas=False))
    unweighed.kept(_receipt(1, 1_000), 0.0)
    assert [d.unclaimed for d in unweighed.due(50.0, SUI)] == [1_000]


def test_a_receipt_is_claimed_once_it_waited_its_part_of_the_half_close_timeout() -> None:
    # never by amount: the age alone decides, at half of the 600 s timeout
    claims = _claims(ClaimRule(above=U64_MAX, age=0.5))
    claims.kept(_receipt(1, 100), 5.0)
    claims.kept(_receipt(2, 200), 200.0)  # (the oldest unclaimed is still the first)
    assert claims.next_due(6.0) == pytest.approx(305.0)
    assert claims.due(304.9, FREE) == []
    (due,) = claims.due(305.0, FREE)
    assert (due.receipt.nonce, due.unclaimed, due.reason) == (2, 200, ClaimReason.AGE)


def test_the_age_counts_from_the_first_receipt_after_the_one_claimed() -> None:
    claims = _claims(ClaimRule(above=U64_MAX, age=0.5))
    claims.kept(_receipt(1, 100), 0.0)
    (due,) = claims.due(300.0, FREE)
    claims.kept(_receipt(2, 150), 301.0)  # (kept while the claim is under way)
    claims.kept(_receipt(3, 180), 302.0)
    claims.claimed(due, 303.0)
    assert claims.unclaimed(CID) == 80
    assert claims.next_due(303.0) == pytest.approx(601.0)  # (301 + 300)
    assert claims.due(600.9, FREE) == []
    assert [d.receipt.nonce for d in claims.due(601.0, FREE)] == [3]


def test_by_age_a_receipt_below_the_claims_gas_is_not_claimed_where_gas_is_weighed() -> None:
    weighed = _claims(ClaimRule(above=U64_MAX, age=0.1))
    weighed.kept(_receipt(1, SUI.claim - 1), 0.0)
    assert weighed.due(1_000.0, SUI) == []
    assert weighed.next_due(1_000.0) is None  # (nothing will be: no wake)
    unweighed = _claims(ClaimRule(above=U64_MAX, age=0.1, weigh_gas=False))
    unweighed.kept(_receipt(1, 5), 0.0)
    assert [d.reason for d in unweighed.due(60.0, SUI)] == [ClaimReason.AGE]


def test_nothing_is_claimed_when_neither_rule_is_on() -> None:
    rule = ClaimRule(above=U64_MAX, age=None)
    assert not rule.enabled
    claims = _claims(rule)
    assert CID not in claims  # (not even followed)
    assert not claims.kept(_receipt(1, 10**9), 0.0)
    assert claims.due(10**6, FREE) == []


def test_a_receipt_the_escrow_has_claimed_is_not_claimed_again() -> None:
    # the escrow as admission read it: claimed 500 up to nonce 4 (another run's claim)
    claims = _claims(claimed=500, latest_nonce=4)
    assert not claims.kept(_receipt(4, 500), 0.0)
    assert claims.due(100.0, FREE) == []
    claims.kept(_receipt(5, 700), 1.0)
    assert [d.unclaimed for d in claims.due(100.0, FREE)] == [200]


def test_a_claim_refused_as_replayed_learns_what_the_escrow_claimed() -> None:
    claims = _claims()
    claims.kept(_receipt(1, 100), 0.0)
    (due,) = claims.due(10.0, FREE)
    claims.known(due, 100, 1, 11.0)  # (its settlement, or another server, came first)
    assert claims.unclaimed(CID) == 0
    assert claims.next_due(11.0) is None


def test_a_failed_claim_backs_off() -> None:
    claims = _claims(ClaimRule(interval=0))
    claims.kept(_receipt(1, 100), 0.0)
    waits = []
    now = 0.0
    for _ in range(6):
        (due,) = claims.due(now, FREE)
        claims.failed(due, now)
        at = claims.next_due(now)
        assert at is not None
        waits.append(at - now)
        assert claims.due(at - 0.01, FREE) == []
        now = at
    assert waits == [CLAIM_RETRY * 2**n for n in range(4)] + [CLAIM_RETRY_MAX] * 2
    (due,) = claims.due(now, FREE)
    claims.claimed(due, now)  # (a success forgets the failures)
    claims.kept(_receipt(2, 101), now)
    (due,) = claims.due(now, FREE)
    claims.failed(due, now)
    assert claims.next_due(now) == pytest.approx(now + CLAIM_RETRY)


def test_an_end_waits_for_the_claim_under_way_and_says_whether_one_landed() -> None:
    claims = _claims()
    assert claims.end("0x" + "99" * 32) is False  # (never followed)
    claims.kept(_receipt(1, 100), 0.0)
    (due,) = claims.due(10.0, FREE)
    assert claims.end(CID) is None  # (under way: the end waits)
    assert claims.due(100.0, FREE) == []  # (no new claim once the end began)
    assert not claims.kept(_receipt(2, 200), 11.0)
    claims.claimed(due, 12.0)
    assert claims.end(CID) is True  # (the escrow moved since admission read it)
    assert CID not in claims
    quiet = _claims()
    quiet.kept(_receipt(1, 100), 0.0)
    assert quiet.end(CID) is False  # (nothing claimed: the admission's escrow holds)


def test_a_claim_not_started_when_the_end_begins_is_released() -> None:
    claims = _claims()
    claims.kept(_receipt(1, 100), 0.0)
    (due,) = claims.due(10.0, FREE)
    assert claims.end(CID) is None  # (asked for: under way as far as the end knows)
    assert not claims.still_due(due)  # (the driver, before making it: released)
    assert claims.end(CID) is False  # (nothing landed)


def test_an_end_that_waited_long_enough_forgets_the_claim_under_way() -> None:
    claims = _claims()
    claims.kept(_receipt(1, 100), 0.0)
    (due,) = claims.due(10.0, FREE)
    assert claims.still_due(due)
    assert claims.end(CID) is None
    assert claims.end(CID, abandon=True) is True  # (the escrow may move: read it again)
    assert CID not in claims
    claims.claimed(due, 11.0)  # (its report, late, finds nothing to update)
    assert CID not in claims


def test_a_settled_escrow_is_claimed_no_more() -> None:
    claims = _claims()
    claims.kept(_receipt(1, 100), 0.0)
    (due,) = claims.due(10.0, FREE)
    claims.gone(due)
    claims.kept(_receipt(2, 200), 11.0)
    assert claims.due(1_000.0, FREE) == []
    assert claims.end(CID) is False


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=300.0), min_size=1, max_size=12),
    amounts=st.lists(st.integers(min_value=1, max_value=10**7), min_size=12, max_size=12),
    age=st.sampled_from([0.1, 0.25, 0.5, 0.9]),
    above=st.sampled_from([None, 10**8, U64_MAX]),
    gas=st.sampled_from([FREE, SUI]),
)
def test_a_live_server_never_holds_a_receipt_past_its_age_when_it_pays(
    gaps: list[float], amounts: list[int], age: float, above: int | None, gas: EndGas
) -> None:
    """A driver looking every second: whatever receipts come when, the oldest one
    unclaimed that pays for its claim never waits longer than its age (plus the
    interval and the look's second) -- a server down from then on still has the rest
    of the timeout. Whatever the amount rule (never, above the receipts' sums, or at
    the gas)."""
    rule = ClaimRule(above=above, age=age)
    claims = _claims(rule)
    arrivals = []
    at, total = 0.0, 0
    for nonce, (gap, amount) in enumerate(zip(gaps, amounts, strict=False), start=1):
        at += gap
        total += amount
        arrivals.append((at, _receipt(nonce, total)))
    oldest: float | None = None  # when the oldest unclaimed receipt came
    claimed = 0
    now = 0.0
    while now <= at + age * T / 1000 + 2 * rule.interval + 2:
        while arrivals and arrivals[0][0] <= now:
            came, receipt = arrivals.pop(0)
            if receipt.total_amount > claimed and oldest is None:
                oldest = came
            claims.kept(receipt, came)
        for due in claims.due(now, gas):
            claimed = due.receipt.total_amount
            claims.claimed(due, now)
            oldest = None if claims.unclaimed(CID) == 0 else oldest
        if oldest is not None and claims.unclaimed(CID) >= rule.floor(gas):
            assert now - oldest <= age * T / 1000 + rule.interval + 1.0
        now += 1.0
    # (in the end, all that pays for its claim was claimed)
    assert claims.unclaimed(CID) < max(rule.floor(gas), 1)


# -- its settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("claim_above", -1),
        ("claim_above", 2**64),
        ("claim_above", 1.5),
        ("claim_above", True),
        ("claim_age", 0),
        ("claim_age", 1),
        ("claim_age", float("nan")),
        ("claim_age", "0.5"),
        ("claim_interval", -1.0),
        ("claim_interval", float("inf")),
    ],
)
def test_a_bad_claim_setting_is_refused_naming_it(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=f"ServicePolicy.{field}"):
        ServicePolicy(**{field: value})  # type: ignore[arg-type]


def test_the_policys_claim_rule() -> None:
    policy = ServicePolicy(claim_above=7, claim_age=None, claim_interval=0, gas_aware_ends=False)
    assert policy.claim_rule == ClaimRule(7, None, 0, weigh_gas=False)
    assert ServicePolicy().claim_rule == ClaimRule()


# -- the claims made on a ledger -------------------------------------------------------------

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1_000)
SERVER, CLIENT = ident(0x91), ident(0x92)
DEPOSIT = 10_000


@pytest.fixture
def opened() -> Iterator[tuple[LocalLedger, OpenedConnection]]:
    """A LocalLedger with SERVER's service and CLIENT's connection to it, opened with
    DEPOSIT; the claims of the tests below are made on it."""
    ledger = LocalLedger(":memory:", clock_ms=1_000_000)
    try:
        ledger.faucet(CLIENT.sui_address, 10**9)
        host = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host, 7, "svc", SLA)
        cap = ledger.create_spending_cap(CLIENT, 10**9)
        yield ledger, ledger.open_connection(CLIENT, host, 7, cap, DEPOSIT)
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()


def _signed(ledger: LocalLedger, cid: str, nbytes: int, nonce: int) -> Receipt:
    receipt = Receipt(ledger.receipt_scope(cid), nbytes, 1, fee(SLA, nbytes, 1), nonce)
    return receipt.sign(CLIENT)


def test_claims_while_a_connection_lives_pay_the_server_then_its_end_settles(
    opened: tuple[LocalLedger, OpenedConnection],
) -> None:
    ledger, connection = opened
    cid, escrow_id = connection.connection_id, connection.escrow_id
    claims = LiveClaims(ClaimRule(interval=0))
    claims.watch(cid, escrow_id, T, 0.0)
    before = ledger.balance(SERVER.sui_address)
    claims.kept(_signed(ledger, cid, 10 * 1024, 1), 1.0)
    (due,) = claims.due(1.0, ledger.end_gas())
    made = claim_live(ledger, SERVER, claims, due, lambda: 1.0)
    assert made is not None and (made.paid, made.total_amount) == (105, 105)
    # a claim the ledger has seen already (the settlement came first) teaches it
    claims.kept(_signed(ledger, cid, 20 * 1024, 2), 2.0)
    (due,) = claims.due(2.0, ledger.end_gas())
    ledger.claim(SERVER, escrow_id, due.receipt)
    assert claim_live(ledger, SERVER, claims, due, lambda: 2.0) is None
    assert claims.unclaimed(cid) == 0
    # the end claims the rest (no store: its final receipt)
    final = _signed(ledger, cid, 50 * 1024, 3)
    claims.kept(final, 3.0)
    assert claims.end(cid) is True
    settlement = claim_and_settle(ledger, SERVER, cid, None, final=final)
    assert settlement is not None
    assert (settlement.paid, settlement.claimed) == (505 - 205, 505)
    escrow = ledger.get_escrow(escrow_id)
    assert (escrow.claimed, escrow.refunded, escrow.balance) == (505, DEPOSIT - 505, 0)
    assert ledger.balance(SERVER.sui_address) - before == 505


def test_a_claim_of_a_settled_escrow_stops_the_claims(
    opened: tuple[LocalLedger, OpenedConnection],
) -> None:
    ledger, connection = opened
    cid = connection.connection_id
    claims = LiveClaims(ClaimRule(interval=0))
    claims.watch(cid, connection.escrow_id, T, 0.0)
    claims.kept(_signed(ledger, cid, 1024, 1), 0.0)
    (due,) = claims.due(0.0, ledger.end_gas())
    # the client settled alone after the timeout (the server was away)
    ledger.close_connection(CLIENT, cid)
    ledger.advance_clock(T + 1)
    ledger.settle(CLIENT, cid)
    assert claim_live(ledger, SERVER, claims, due, lambda: 0.0) is None
    assert claims.due(10**6, ledger.end_gas()) == []
    escrow = ledger.get_escrow(connection.escrow_id)
    assert (escrow.claimed, escrow.refunded) == (0, DEPOSIT)


def test_claim_due_names_what_it_claims() -> None:
    due = ClaimDue(CID, ESCROW, _receipt(1, 5), 5, ClaimReason.AGE)
    assert (due.connection_id, due.escrow_id, due.reason.value) == (CID, ESCROW, "age")
