"""PaidConnectionEngine (dtp/hostid/paid/engine.py), the receipt path both paid drivers
pump, driven without any I/O: receipt frames in (stored, final, refused), the escrow
read again, and the closes it decides (payment required, firewall, ledger)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.hostid.paid.engine import Close, PaidConnectionEngine, ReceiptStep
from dtp.hostid.paid.policy import CREDIT_MAX, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger.objects import Sla
from dtp.ledger.receipt import Receipt, fee
from dtp.payments.gate import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_LEDGER_CLOSED,
    CLOSE_PAYMENT_REQUIRED,
    GateState,
    ReceiptGate,
)
from dtp.payments.ratelimit import ClientBuckets, TokenBucket

SLA = Sla(price_per_kib=1024, price_per_request=0, min_deposit=1000)  # 1 MIST a byte
CID = "0x" + "ab" * 32
ESCROW = "0x" + "e5" * 32
CLIENT = HostIdentity.from_private_bytes(b"\x51" * 32, b"\x51" * 32)
MALLORY = HostIdentity.from_private_bytes(b"\x53" * 32, b"\x53" * 32)


def engine(
    deposited: int = 10_000, escrow: str | None = ESCROW, buckets: ClientBuckets | None = None
) -> PaidConnectionEngine:
    gate = ReceiptGate(
        connection_id=CID,
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        deposited=deposited,
        pause_timeout_ms=1000,
    )
    gate.escrow_id = escrow
    if buckets is None:
        buckets = ClientBuckets(TokenBucket(0, 0.0), TokenBucket(0, 0.0))  # unlimited
    policy = ServicePolicy(pause_timeout=1.0)
    return PaidConnectionEngine(gate, buckets, policy, CID, "0x" + "c1" * 32)


def receipt(total_bytes: int, nonce: int, signer: HostIdentity = CLIENT) -> bytes:
    return Receipt(CID, total_bytes, 0, fee(SLA, total_bytes, 0), nonce).sign(signer).encode()


def test_a_receipt_is_stored_then_counted() -> None:
    paid = engine()
    assert paid.verdict((1500, 0), 0.0).state is GateState.PAUSE  # beyond the allowance
    step, checked = paid.receipt_frame(receipt(1500, 1), closed=False)
    assert step is ReceiptStep.STORE and checked is not None and checked.nonce == 1
    assert paid.verdict((1500, 0), 0.0).state is GateState.PAUSE  # not stored yet
    paid.kept(checked)
    assert paid.receipts == 1
    assert paid.verdict((1500, 0), 0.0).state is GateState.SERVE
    assert paid.settled_up((1500, 0)) and not paid.settled_up((1600, 0))
    assert paid.final is None


def test_a_receipt_that_comes_with_the_end_is_the_final_one() -> None:
    paid = engine()
    step, checked = paid.receipt_frame(receipt(800, 1), closed=True)
    assert (step, checked) == (ReceiptStep.FINAL, None)
    assert paid.final is not None and paid.final.total_bytes == 800
    assert paid.receipts == 0  # claimed by the settlement, not stored and counted


def test_a_refused_receipt_closes_for_want_of_payment() -> None:
    paid = engine()
    step, checked = paid.receipt_frame(receipt(800, 1, MALLORY), closed=False)
    assert (step, checked) == (ReceiptStep.REFUSED, None)
    verdict = paid.verdict((0, 0), 0.0)
    assert verdict.state is GateState.CLOSE
    close = paid.payment_required(verdict)
    assert close == Close(CLOSE_PAYMENT_REQUIRED, verdict.reason)
    assert "invalid receipt" in close.reason


def test_the_credit_a_read_or_a_write_may_take_at_one_look() -> None:
    paid = engine(deposited=1 << 40)  # (the allowance, min_deposit 1000 MIST: 1000 bytes)
    assert paid.read_credit((0, 0)) == 1000
    assert paid.read_credit((600, 0)) == 400
    assert paid.read_credit((5000, 0)) == 0  # past the allowance: nothing
    # writes count the bytes queued beyond the client's window as used
    assert paid.write_credit((600, 0), 300) == 100
    assert paid.write_credit((600, 0), 900) == 0
    big = PaidConnectionEngine(
        ReceiptGate(
            connection_id=CID,
            client_public_key=CLIENT.ed25519_public,
            sla=SLA,
            deposited=1 << 40,
            allowance=1 << 30,
        ),
        ClientBuckets(TokenBucket(0, 0.0), TokenBucket(0, 0.0)),
        ServicePolicy(),
        CID,
        "0x" + "c1" * 32,
    )
    assert big.read_credit((0, 0)) == CREDIT_MAX  # one look takes a bounded chunk
    assert big.write_credit((0, 0), 0) == 1 << 30  # (the drivers cap writes their way)


def test_the_escrow_is_read_again_when_the_deposit_holds_the_connection() -> None:
    assert engine(escrow=None).escrow_to_read((5000, 0), 0.0) is None  # not known: never
    paid = engine(deposited=500)  # less than the allowance: more deposit, more credit
    assert paid.escrow_to_read((400, 0), 0.0) is None  # within the credit
    assert paid.verdict((800, 0), 10.0).state is GateState.PAUSE
    assert paid.escrow_to_read((800, 0), 10.0) == ESCROW  # the deposit holds it
    assert paid.escrow_to_read((800, 0), 10.1) is None  # at most once an interval
    assert paid.deposit_read(2000) is None  # topped up; no receipt was waiting
    assert paid.verdict((800, 0), 10.2).state is GateState.SERVE
    assert paid.escrow_to_read((800, 0), 20.0) is None  # the credit covers it now


def test_a_receipt_above_the_deposit_waits_for_the_escrow_read() -> None:
    paid = engine(deposited=1000)
    # valid but for the deposit as admission read it: not counted, no violation yet
    step, checked = paid.receipt_frame(receipt(3000, 1), closed=False)
    assert (step, checked) == (ReceiptStep.REFUSED, None)
    assert paid.verdict((0, 0), 0.0).state is GateState.SERVE
    # at the end the read is due whatever the interval: else it goes unclaimed
    assert paid.escrow_to_read((3000, 0), 0.0, ending=True) == ESCROW
    pending = paid.deposit_read(5000)  # the client topped up
    assert pending is not None and pending.total_bytes == 3000
    step, again = paid.receipt_frame(pending.encode(), closed=False)
    assert step is ReceiptStep.STORE and again is not None
    paid.kept(again)
    assert paid.receipts == 1
    assert paid.verdict((3000, 0), 1.0).state is GateState.SERVE


def test_the_closes_name_their_codes() -> None:
    paid = engine()
    denied = "the host's firewall now denies this client"
    assert paid.denied() == Close(CLOSE_FIREWALL_DENIED, denied)
    assert paid.closed_on_ledger() == Close(
        CLOSE_LEDGER_CLOSED, "the connection was closed on the ledger"
    )


@given(
    st.lists(
        st.tuples(st.integers(0, 20_000), st.integers(0, 12), st.booleans()),
        max_size=25,
    )
)
def test_what_counts_never_exceeds_the_deposit_nor_goes_back(
    frames: list[tuple[int, int, bool]],
) -> None:
    """Whatever the client sends (any totals, nonces, forged signatures), the receipts
    counted have strictly rising nonces and amounts within the deposit, and the credit
    the gate serves on never reaches past the deposit."""
    deposited = 10_000
    paid = engine(deposited=deposited)
    counted: list[Receipt] = []
    for total, nonce, forged in frames:
        step, checked = paid.receipt_frame(
            receipt(total, nonce, MALLORY if forged else CLIENT), closed=False
        )
        if step is ReceiptStep.STORE and checked is not None:
            paid.kept(checked)
            counted.append(checked)
    assert paid.receipts == len(counted)
    for before, after in itertools.pairwise(counted):
        assert after.nonce > before.nonce and after.total_amount >= before.total_amount
    assert all(r.total_amount <= deposited for r in counted)
    for used in range(0, 30_000, 997):
        if paid.verdict((used, 0), 0.0).state is GateState.SERVE:
            assert fee(SLA, used, 0) <= deposited


def test_datagram_sends_no_credit_covers_close_after_the_pause_timeout() -> None:
    """One pause rule for datagrams on both drivers (the blocking send waits, the
    asyncio one drops): closed once no credit covered them for pause_timeout, timed
    from the first send no credit covered, across calls, and over once payment covers
    them again."""
    paid = engine(deposited=10_000)
    pausing = paid.verdict((5000, 0), 0.0)
    assert pausing.state is GateState.PAUSE
    assert paid.datagrams_unpaid(1.0) == 1.0
    assert paid.datagrams_unpaid(1.4) == 1.0  # a later send: the clock runs on
    assert paid.unpaid_datagrams_since == 1.0
    assert paid.datagram_verdict(pausing, 1.9, 1000, 1.0) is pausing  # (pause_timeout 1 s)
    closing = paid.datagram_verdict(pausing, 2.0, 1000, 1.0)
    assert closing.state is GateState.CLOSE
    reason = "payment required: no credit covered a datagram of 1000 bytes within 1.0 s"
    assert closing.reason == reason
    assert paid.payment_required(closing).code == CLOSE_PAYMENT_REQUIRED
    paid.datagrams_paid()
    assert paid.unpaid_datagrams_since is None
    assert paid.datagrams_unpaid(9.0) == 9.0  # a new pause later
    assert paid.datagram_verdict(pausing, 9.5, 1000, 9.0) is pausing


def test_rate_limits_charge_after_the_fact_and_pace_a_take_at_a_time() -> None:
    """The client's buckets, asked the same questions by both drivers: a charge's
    wait, the debt left, and how much of a move goes at once, and when."""
    # 1000 B/s (a burst of 250 bytes, takes of 50), 4 requests/s (a burst of 1)
    paid = engine(buckets=ClientBuckets(TokenBucket(1000, 0.0), TokenBucket(4, 0.0)))
    assert paid.charge(250, 1, 0.0) == 0.0  # the bursts
    assert paid.charge(500, 0, 0.0) == 0.5  # 500 bytes of debt at 1000 B/s
    assert paid.charge(0, 1, 0.0) == 0.25  # a request past its burst: its own wait
    assert paid.debt(0.0) == 0.5  # the longer of the two
    assert paid.debt(0.25) == 0.25
    assert paid.debt(0.5) == 0.0
    assert paid.pace_take(10_000) == 50 and paid.pace_take(30) == 30
    assert paid.pace_wait(50, 0.5) == pytest.approx(0.2)  # to within one take of full
    assert paid.pace_wait(50, 0.71) == 0.0
    free = engine()
    assert free.charge(1 << 30, 1000, 0.0) == 0.0 and free.debt(0.0) == 0.0
    assert free.pace_take(1 << 30) == 1 << 30 and free.pace_wait(1 << 30, 0.0) == 0.0


def test_the_final_receipt_is_asked_for_until_the_deadline() -> None:
    paid = engine()  # (ServicePolicy defaults: final_receipt_timeout 1 s)
    deadline = paid.final_receipt_deadline(10.0)
    assert deadline == 10.0 + ServicePolicy().final_receipt_timeout
    interval = ServicePolicy().request_interval
    assert paid.final_receipt_wait(10.0, deadline) == min(deadline - 10.0, interval)
    assert paid.final_receipt_wait(deadline - 0.01, deadline) == pytest.approx(0.01)
    assert paid.final_receipt_wait(deadline, deadline) == 0.0
    assert paid.final_receipt_wait(deadline + 5, deadline) == 0.0


def test_a_pause_asks_for_a_receipt_once_per_request_interval() -> None:
    """docs/escrow.md §6.1: a paused connection asks for a receipt every
    ``request_interval``, however many of its calls are paused: the first call asks at
    once, another one within the interval waits for the rest of it, and the next pause
    (after the usage was served) asks at once again."""
    paid = engine()
    interval = ServicePolicy().request_interval
    assert paid.request_wait(5.0) == 0.0  # no request yet in this pause
    assert paid.request_due(5.0)
    assert paid.request_wait(5.0) == pytest.approx(interval)
    # a second paused call (another stream, a handler trying again) shares the cadence
    assert not paid.request_due(5.0 + interval / 2)
    assert paid.request_wait(5.0 + interval / 2) == pytest.approx(interval / 2)
    assert paid.request_due(5.0 + interval)
    paid.pause_over()
    assert paid.request_due(5.0 + interval + 0.001)  # a new pause: at once
    # a datagram pause that ends ends the cadence too
    paid.datagrams_unpaid(9.0)
    assert paid.request_due(9.0) and not paid.request_due(9.01)
    paid.datagrams_paid()
    assert paid.request_due(9.02)


@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200))
def test_paused_calls_never_ask_more_often_than_the_interval(steps: list[float]) -> None:
    """Whatever the times paused calls look at (each waiting as request_wait says, or
    less), two requests are at least a request interval apart, and none waits longer
    than an interval past the last one (neither a flood nor a stall)."""
    paid = engine()
    interval = ServicePolicy().request_interval
    now, asked = 0.0, []
    for step in steps:
        if paid.request_due(now):
            asked.append(now)
        wait = paid.request_wait(now)
        assert 0.0 <= wait <= interval
        assert wait > 0.0  # a request was just made, or is not due yet
        now += min(step, wait)
    assert all(interval <= b - a <= interval + 1e-9 for a, b in itertools.pairwise(asked))


@given(
    used=st.integers(0, 20_000),
    queued=st.integers(0, 20_000),
    under_way=st.integers(0, 20_000),
    nbytes=st.integers(0, 1 << 23),
)
def test_a_write_never_takes_more_than_the_credit_leaves(
    used: int, queued: int, under_way: int, nbytes: int
) -> None:
    """write_room: what a write may send is never more than it asked, nor than the gate's
    credit less what is queued and under way (at most CREDIT_MAX), but for the one byte
    a serving gate lets go when nothing else is on its way; 0 only while queued or
    under-way bytes hold the credit."""
    paid = engine()  # (1 MIST a byte, allowance 1000, deposit 10,000)
    room = paid.write_room((used, 0), queued, under_way, nbytes)
    credit = paid.write_credit((used, 0), queued) - under_way
    assert 0 <= room <= max(nbytes, 0)
    if room > 1 or (queued or under_way):
        assert room <= max(credit, 0) and room <= CREDIT_MAX
    if room == 0 and nbytes:
        assert credit <= 0 and (queued or under_way)
    if nbytes and credit > 0:
        assert room == min(nbytes, credit, CREDIT_MAX)


@given(
    credit=st.integers(-100, 5000),
    sizes=st.lists(st.integers(0, 1200), max_size=30),
    least=st.sampled_from([0, 64]),
)
def test_datagrams_go_whole_within_the_credit(credit: int, sizes: list[int], least: int) -> None:
    """datagrams_covered: the first datagrams, each whole, whose bytes (each counted as
    ``least`` at least) the credit covers; the next one it does not cover stays."""
    count, taken, left = PaidConnectionEngine.datagrams_covered(credit, sizes, 0, least)
    went = sizes[:count]
    assert taken == sum(went) <= max(credit, 0)
    assert left == credit - sum(max(size, least) for size in went)
    if count < len(sizes):  # the next one is not covered
        assert sizes[count] > left or (least and left <= 0)
