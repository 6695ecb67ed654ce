"""PaidConnectionEngine (dtp/hostid/paid/_engine.py), the receipt path both paid drivers
pump, driven without any I/O: receipt frames in (stored, final, refused), the escrow
read again, the pause steps of a paused call, the credit cached between looks at the
gate, the rate limits' questions, and the closes it decides (payment required,
firewall, ledger)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dtp.errors import LocalProtocolError
from dtp.hostid.paid._engine import (
    Close,
    Credit,
    PaidConnectionEngine,
    PauseAction,
    PauseStep,
    ReceiptStep,
    RefillStep,
)
from dtp.hostid.paid._policy import CALL_COST, CREDIT_MAX, SEND_SLICE, ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt, fee
from dtp.payments._gate import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_LEDGER_CLOSED,
    CLOSE_PAYMENT_REQUIRED,
    GateState,
    ReceiptGate,
)
from dtp.payments._ratelimit import ClientBuckets, TokenBucket
from tests.support.scopes import any_receipt_bytes, scope_of, v1_receipt_bytes

SLA = Sla(price_per_kib=1024, price_per_request=0, min_deposit=1000)  # 1 MIST a byte
CID = "0x" + "ab" * 32
ESCROW = "0x" + "e5" * 32
CLIENT = HostIdentity.from_private_bytes(b"\x51" * 32, b"\x51" * 32)
MALLORY = HostIdentity.from_private_bytes(b"\x53" * 32, b"\x53" * 32)


def engine(
    deposited: int = 10_000, escrow: str | None = ESCROW, buckets: ClientBuckets | None = None
) -> PaidConnectionEngine:
    gate = ReceiptGate(
        scope=scope_of(CID),
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
    """As the client sends it, whatever the nonce (0 included)."""
    amount = fee(SLA, total_bytes, 0)
    return any_receipt_bytes(scope_of(CID), total_bytes, 0, amount, nonce, signer)


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


@pytest.mark.parametrize("what", ["version 1", "another escrow", "another package"])
def test_a_receipt_of_another_version_or_scope_closes_for_want_of_payment(what: str) -> None:
    """A RECEIPT frame from a client of the release before (format version 1: 129
    bytes, docs/escrow.md §6), or signed for another escrow or package: refused, and the
    connection closes with CLOSE_PAYMENT_REQUIRED saying why."""
    paid = engine()
    if what == "version 1":
        frame = v1_receipt_bytes(CID, 800, 0, fee(SLA, 800, 0), 1, CLIENT)
        said = "Receipt format version 1 is not supported"
    else:
        other = (
            scope_of(CID, escrow_id="0x" + "e1" * 32)
            if what == "another escrow"
            else scope_of(CID, package="0x" + "e2" * 32)
        )
        frame = any_receipt_bytes(other, 800, 0, fee(SLA, 800, 0), 1, CLIENT)
        said = "receipt for connection"
    step, checked = paid.receipt_frame(frame, closed=False)
    assert (step, checked) == (ReceiptStep.REFUSED, None)
    verdict = paid.verdict((0, 0), 0.0)
    assert verdict.state is GateState.CLOSE
    close = paid.payment_required(verdict)
    assert close.code == CLOSE_PAYMENT_REQUIRED and said in close.reason
    assert paid.receipts == 0


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
            scope=scope_of(CID),
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


def test_a_datagram_that_came_after_the_look_at_the_gate_waits_for_payment() -> None:
    """A datagram is in the usage from its arrival: the gate served the usage when the
    receive looked (600 bytes), but the 500-byte datagram that came before the receive
    took it carried the usage past the allowance (1000 bytes): it is not handed out
    until a receipt covers it."""
    paid = engine()
    assert paid.gate.serving(600, 0)  # the look before the take
    arrived = b"d" * 500
    assert paid.datagrams_received((1100, 0), [arrived], []) == 0
    step, checked = paid.receipt_frame(receipt(1100, 1), closed=False)
    assert step is ReceiptStep.STORE and checked is not None
    paid.kept(checked)
    assert paid.datagrams_received((1100, 0), [arrived], []) == 1


def test_each_datagram_is_judged_on_the_usage_as_it_came() -> None:
    """Those queued behind a datagram came after it: it goes when the usage without them
    is served (700 bytes here), the one that took the usage past the allowance does not,
    and a batch hands out the first ones the credit covers, each whole, in order."""
    paid = engine()
    first, second = b"a" * 400, b"b" * 400  # after 300 stream bytes
    assert paid.datagrams_received((1100, 0), [first], [second]) == 1
    assert paid.datagrams_received((1100, 0), [second], []) == 0
    batch = [b"c" * 300] * 4  # 1200 bytes from nothing
    assert paid.datagrams_received((1200, 0), batch, []) == 3
    assert paid.datagrams_received((1300, 0), batch, [b"q" * 100]) == 3
    assert paid.datagrams_received((1000, 0), [b"h" * 500] * 2, []) == 2  # to the byte
    # past the limit nothing goes, an empty datagram neither (counted as a byte)
    assert paid.datagrams_received((1001, 0), [b"h" * 1000, b""], [b"x"]) == 1
    assert paid.datagrams_received((1200, 0), [b"", b"y"], [b"z" * 100]) == 0
    assert paid.gate.verdict(0, 1200, 0).state is GateState.PAUSE  # (pure: still paused)


def test_no_datagram_goes_once_a_receipt_was_refused() -> None:
    paid = engine()
    paid.receipt_frame(receipt(800, 1, MALLORY), closed=False)
    assert paid.datagrams_received((0, 0), [b"", b"x"], []) == 0


@given(
    before=st.integers(0, 1500),
    arrivals=st.lists(st.integers(0, 600), max_size=12),
    batches=st.lists(st.integers(1, 4), min_size=1, max_size=12),
)
@example(before=400, arrivals=[0, 600, 1], batches=[2])  # (an empty one takes a byte)
def test_what_datagram_receives_hand_out_never_passes_the_allowance(
    before: int, arrivals: list[int], batches: list[int]
) -> None:
    """Whatever came after a look (all of ``arrivals`` here, queued), receives taking
    batches of any size hand out only datagrams the usage as they came was served
    with: ``before`` (stream bytes) plus what was handed stays within the allowance,
    and a receive hands out nothing only when the next one is past it."""
    paid = engine()
    queue = [b"d" * size for size in arrivals]
    usage = (before + sum(arrivals), 0)
    handed = charged = 0  # (charged: an empty datagram counts as a byte)
    for size in itertools.cycle(batches):
        if not queue:
            break
        taken, queue = queue[:size], queue[size:]
        count = paid.datagrams_received(usage, taken, queue)
        handed += sum(map(len, taken[:count]))
        charged += sum(max(1, len(data)) for data in taken[:count])
        if count:
            assert fee(SLA, before + handed, 0) <= 1000
        if usage[0] <= 1000:
            assert count == len(taken)  # all of it served: all of them go
        if count < len(taken):
            assert before + charged + max(1, len(taken[count])) > 1000
            break


def test_a_paused_call_asks_waits_and_ends_when_paid() -> None:
    """PausedCall.step, the pause loop of both drivers: the first step asks at once and
    waits a request interval, the next one within it only waits, and a verdict that
    serves ends the pause (the next pause asks at once again)."""
    paid = engine()
    interval = ServicePolicy().request_interval
    pausing = paid.verdict((5000, 0), 0.0)
    call = paid.pause(0.0)
    first = call.step(pausing, 0.0)
    assert first == PauseStep(PauseAction.WAIT, ask=True, wait=pytest.approx(interval))
    second = call.step(pausing, interval / 2)
    assert second.action is PauseAction.WAIT and not second.ask
    assert second.wait == pytest.approx(interval / 2)
    assert call.step(paid.verdict((0, 0), 1.0), 1.0) == PauseStep(PauseAction.OVER)
    assert paid.asked_at is None  # the pause is over
    assert paid.pause(2.0).step(pausing, 2.0).ask


def test_a_paused_call_closes_for_want_of_payment_and_says_why() -> None:
    paid = engine()
    call = paid.pause(0.0)
    assert call.step(paid.verdict((5000, 0), 0.0), 0.0).action is PauseAction.WAIT
    closing = paid.verdict((5000, 0), 1.5)  # (the gate's pause_timeout, 1 s, passed)
    assert closing.state is GateState.CLOSE
    step = call.step(closing, 1.5)
    assert step.action is PauseAction.CLOSE
    assert step.close == Close(CLOSE_PAYMENT_REQUIRED, closing.reason)


def test_a_paused_call_times_out_at_its_deadline_after_asking_once() -> None:
    """A call with a deadline (a socket timeout; 0 for a non-blocking one) asks for a
    receipt once before it gives up -- else a non-blocking handler never got paid --
    waits no longer than its deadline, and then times out."""
    paid = engine()
    pausing = paid.verdict((5000, 0), 0.0)
    nonblocking = paid.pause(0.0, deadline=0.0)
    assert nonblocking.step(pausing, 0.0) == PauseStep(PauseAction.WAIT, ask=True, wait=0.0)
    assert nonblocking.step(pausing, 0.0) == PauseStep(PauseAction.TIMED_OUT)
    timed = engine().pause(0.0, deadline=0.05)
    assert timed.step(pausing, 0.0).wait == pytest.approx(0.05)  # (not the interval)
    assert timed.step(pausing, 0.06).action is PauseAction.TIMED_OUT


def test_a_datagram_pause_is_timed_across_the_calls_its_deadline_ended() -> None:
    """A datagram (``whole``) no credit covers: a call that times out leaves the pause
    clock running for the next call, which closes the connection once the pause
    timeout passed since the first (a non-blocking sender trying again would never
    close it else); a call that finds it covered ends that pause."""
    paid = engine()  # (pause_timeout 1 s)
    pausing = paid.verdict((900, 0), 0.0, whole=500)
    assert pausing.state is GateState.PAUSE
    call = paid.pause(0.0, whole=500, deadline=0.0)
    assert call.step(pausing, 0.0).action is PauseAction.WAIT
    assert call.step(pausing, 0.1).action is PauseAction.TIMED_OUT
    assert paid.unpaid_datagrams_since == 0.0
    later = paid.pause(0.9, whole=500, deadline=0.9)
    assert later.step(pausing, 0.9).action is PauseAction.WAIT
    again = paid.pause(1.2, whole=500)  # (no deadline: waits out the pause)
    step = again.step(pausing, 1.2)
    assert step.action is PauseAction.CLOSE and step.close is not None
    assert "datagram of 500 bytes" in step.close.reason
    served = paid.pause(2.0, whole=10)
    assert served.step(paid.verdict((0, 0), 2.0, whole=10), 2.0).action is PauseAction.OVER
    assert paid.unpaid_datagrams_since is None


def test_payment_ends_a_timed_out_datagram_pause_only_when_it_covers_the_datagram() -> None:
    """The blocking send whose call timed out leaves the size of its datagram with the
    pause, as the asyncio drop does: payment that came then ends the pause only when
    the credit covers that datagram, not any payment at all
    (tests/paid/test_datagram_pause_rule.py)."""
    paid = engine()  # (allowance 1000 bytes at 1 MIST a byte)
    pausing = paid.verdict((900, 0), 0.0, whole=500)
    call = paid.pause(0.0, whole=500, deadline=0.0)
    call.step(pausing, 0.0)
    assert call.step(pausing, 0.1).action is PauseAction.TIMED_OUT
    assert (paid.unpaid_datagrams_since, paid.unpaid_size) == (0.0, 500)
    assert not paid.datagrams_covered_again((900, 0), 0)  # 100 bytes: not the 500
    assert not paid.datagrams_covered_again((400, 0), 200)  # queued bytes hold the credit
    assert paid.unpaid_datagrams_since == 0.0
    assert paid.datagrams_covered_again((400, 0), 0)
    assert paid.unpaid_datagrams_since is None


def test_payment_ends_the_datagram_pause_of_a_call_still_waiting() -> None:
    """A datagram send that waits with no deadline records its pause at each step, so
    that payment covering its datagram ends the pause while it waits; should stream
    bytes spend that credit before it looks again, its next step starts a new pause:
    it closes pause_timeout after the payment, not after its first drop
    (tests/paid/test_datagram_pause_rule.py)."""
    paid = engine()  # (allowance 1000 bytes at 1 MIST a byte, pause_timeout 1 s)
    pausing = paid.verdict((900, 0), 0.0, whole=500)
    call = paid.pause(0.0, whole=500)
    assert call.step(pausing, 0.0).action is PauseAction.WAIT
    assert (paid.unpaid_datagrams_since, paid.unpaid_size) == (0.0, 500)
    assert paid.datagrams_covered_again((400, 0), 0)  # paid at 0.8: covered
    assert paid.unpaid_datagrams_since is None
    spent = paid.verdict((900, 0), 1.2, whole=500)  # stream bytes spent it
    assert call.step(spent, 1.2).action is PauseAction.WAIT  # not closed at 1.0
    assert paid.unpaid_datagrams_since == 1.2
    assert call.step(spent, 2.1).action is PauseAction.WAIT
    step = call.step(spent, 2.2)
    assert step.action is PauseAction.CLOSE and step.close is not None


def test_a_call_that_times_out_after_payment_leaves_the_new_pause_start() -> None:
    """A call that took over an earlier call's pause, then saw payment end it, times
    out leaving the start of the pause that followed, not the one payment ended."""
    paid = engine()
    pausing = paid.verdict((900, 0), 0.0, whole=500)
    first = paid.pause(0.0, whole=500, deadline=0.0)
    first.step(pausing, 0.0)
    assert first.step(pausing, 0.1).action is PauseAction.TIMED_OUT
    second = paid.pause(0.5, whole=500, deadline=2.5)
    assert second.step(pausing, 0.5).action is PauseAction.WAIT
    assert paid.unpaid_datagrams_since == 0.0  # (taken over)
    paid.datagrams_paid()  # payment at 0.7 covered it, then stream bytes spent it
    assert second.step(pausing, 2.0).action is PauseAction.WAIT
    assert second.step(pausing, 2.5).action is PauseAction.TIMED_OUT
    assert paid.unpaid_datagrams_since == 2.0
    third = paid.pause(2.9, whole=500)
    assert third.step(pausing, 2.9).action is PauseAction.WAIT  # 1 s from 2.0: not yet
    assert third.step(pausing, 3.0).action is PauseAction.CLOSE


@given(
    events=st.lists(
        st.tuples(st.sampled_from(["step", "paid", "timed out"]), st.floats(0.0, 0.4)),
        max_size=30,
    )
)
def test_a_waiting_datagram_send_closes_only_a_pause_timeout_after_the_pause_began(
    events: list[tuple[str, float]],
) -> None:
    """Whatever the order of steps, payments ending the pause and calls timing out: a
    datagram send closes only once pause_timeout passed since the pause of datagram
    sends began (its first drop, or the first after the latest payment), and at the
    first step after that."""
    paid = engine()  # (pause_timeout 1 s)
    pausing = paid.verdict((900, 0), 0.0, whole=500)
    now = 0.0
    began: float | None = None
    call = paid.pause(now, whole=500)
    for event, later in events:
        now += later
        if event == "paid":
            paid.datagrams_paid()
            began = None
            continue
        if event == "timed out":
            call = paid.pause(now, whole=500)  # (the next call)
        step = call.step(pausing, now)
        began = now if began is None else began
        if now - began >= 1.0:
            assert step.action is PauseAction.CLOSE
            return
        assert step.action is PauseAction.WAIT
        assert paid.unpaid_datagrams_since == began


def test_a_dropped_datagram_asks_once_an_interval_then_closes() -> None:
    """The asyncio send that never waits: datagrams_dropped is a paused send's step
    without the wait, timed from the first drop; payment that covers the datagram it
    dropped last ends that pause."""
    paid = engine()  # (pause_timeout 1 s)
    assert paid.datagrams_dropped((900, 0), 0.0, 500) == PauseStep(PauseAction.WAIT, ask=True)
    assert paid.datagrams_dropped((900, 0), 0.1, 500) == PauseStep(PauseAction.WAIT)
    assert not paid.datagrams_covered_again((900, 0), 0)  # 100 bytes of credit left
    closing = paid.datagrams_dropped((900, 0), 1.0, 500)
    assert closing.action is PauseAction.CLOSE and closing.close is not None
    assert closing.close.code == CLOSE_PAYMENT_REQUIRED
    fresh = engine()
    fresh.datagrams_dropped((900, 0), 0.0, 500)
    assert fresh.datagrams_covered_again((400, 0), 0)  # 600 bytes cover it now
    assert fresh.unpaid_datagrams_since is None and fresh.asked_at is None


@given(
    credit=st.integers(0, 10 * CALL_COST),
    moves=st.lists(
        st.tuples(st.sampled_from(["read", "write", "datagrams"]), st.integers(0, 3 * CALL_COST)),
        max_size=40,
    ),
)
def test_a_cached_credit_never_lets_more_go_than_the_gate_allowed(
    credit: int, moves: list[tuple[str, int]]
) -> None:
    """Credit, the blocking driver's cache between looks at the gate: however reads,
    writes and datagram sends take from it, the bytes writes take while it lasts never
    exceed the credit the gate allowed, a datagram goes whole or not at all, each move
    counts CALL_COST at least, and what is under way comes back to 0."""
    cache = Credit()
    cache.read = cache.send = credit
    taken = reserved = 0
    for kind, size in moves:
        if cache.send <= 0 and kind != "read":
            continue  # (the driver looks at the gate again first)
        before, send = cache.read, cache.send
        if kind == "read":
            cache.spent(size)
            moved = size
        elif kind == "write":
            moved = cache.reserve(size)
            assert moved == (size if size <= send else send)  # cut to what is left
        else:
            count, moved = cache.reserve_datagrams([size], 0)
            assert (count, moved) == ((1, size) if size <= send else (0, 0))  # whole or not
            if not count:
                assert (cache.read, cache.send) == (before, send)
                continue
        if kind != "read":
            taken += moved
            reserved += moved
            assert cache.send == send - max(moved, CALL_COST)
        assert cache.read == before - max(moved, CALL_COST)
    assert taken <= credit
    assert cache.sending == reserved
    cache.sent(reserved)
    assert cache.sending == 0
    cache.void()
    assert cache.read == cache.send == 0


def test_a_read_takes_what_the_gate_allows_at_one_look() -> None:
    paid = engine(deposited=1 << 40)  # (allowance 1000 bytes)
    assert paid.read_room((0, 0), 10) == (10, 1000)
    assert paid.read_room((600, 0), 1 << 20) == (400, 400)  # cut to the credit
    assert paid.read_room((5000, 0), 10) == (1, 0)  # the caller knows it serves


def test_the_rate_limits_slice_and_hold_what_never_waits() -> None:
    """The asyncio writer's questions of the bytes/s limit (a write and a datagram send
    never wait): how much goes at once, whether the limit holds it back or is in debt,
    and a charge that only counts; a limit's wait is asked again each refresh interval."""
    # 1000 B/s: a burst of 250 bytes, takes of 50
    paid = engine(buckets=ClientBuckets(TokenBucket(1000, 0.0), TokenBucket(0, 0.0)))
    assert paid.send_slice() == paid.write_slice() == 50
    assert not paid.in_debt(0.0) and not paid.held_back(50, 0.0)
    assert paid.charge_sent(750, 0.0)  # 500 bytes of debt, not waited for here
    assert paid.in_debt(0.0) and paid.held_back(50, 0.0)
    assert not paid.in_debt(0.6)
    assert paid.hold_wait(300.0) == ServicePolicy().refresh_interval
    assert paid.hold_wait(0.1) == 0.1
    free = engine()
    assert free.send_slice() == SEND_SLICE and free.write_slice() == CREDIT_MAX
    assert not free.charge_sent(1 << 30, 0.0) and not free.in_debt(0.0)
    assert not free.held_back(1 << 30, 0.0)


def test_a_write_refills_its_credit_unless_bytes_on_their_way_hold_it() -> None:
    """refill_send: the send credit a look at the gate gives; while queued or under-way
    bytes hold all of it the writer waits for them -- for the queue to drop when bytes
    are queued (QUEUE), for a write under way to end when none are (WRITES) --, but a
    connection that ended, or nothing on its way, always lets the write go on (GO: it
    reports or sends)."""
    paid = engine()  # (1 MIST a byte, allowance 1000)
    credit = Credit()
    go, writes, queue = RefillStep.GO, RefillStep.WRITES, RefillStep.QUEUE
    assert paid.refill_send(credit, (0, 0), 0, 0, ended=False) is go and credit.send == 1000
    credit.sending = 1000  # another thread's write took it all
    assert paid.refill_send(credit, (0, 0), 0, 0, ended=False) is writes
    assert paid.refill_send(credit, (0, 0), 0, 0, ended=True) is go and credit.send == 0
    credit.sending = 0
    assert paid.refill_send(credit, (0, 0), 1000, 0, ended=False) is queue  # queued: wait
    credit.sending = 500
    assert paid.refill_send(credit, (0, 0), 500, 0, ended=False) is queue  # (both: the queue)
    # a datagram needs room for all of it, while other bytes are on their way
    credit.sending = 600
    assert paid.refill_send(credit, (0, 0), 0, 500, ended=False) is writes
    assert paid.refill_send(credit, (0, 0), 0, 400, ended=False) is go and credit.send == 400


@given(
    used=st.integers(0, 2000),
    queued=st.integers(0, 1500),
    sending=st.integers(0, 1500),
    whole=st.integers(0, 1200),
    ended=st.booleans(),
)
def test_a_refill_waits_for_what_holds_the_credit(
    used: int, queued: int, sending: int, whole: int, ended: bool
) -> None:
    """refill_send on any usage, queue and writes under way (the gate serving): GO sets
    a send credit that, with what is on its way, never goes past the gate's credit
    (but for the 1 byte a write with nothing on its way may send, or a connection that
    ended); otherwise nothing is set, and the writer waits on the queue when bytes are
    queued, else on the writes under way -- something it waits for is always there."""
    paid = engine()  # (allowance 1000 bytes)
    usage = (used, 0)
    if not paid.gate.serving(*usage):
        return
    credit = Credit()
    credit.sending = sending
    step = paid.refill_send(credit, usage, queued, whole, ended=ended)
    if step is RefillStep.GO:
        room = credit.send
        assert room <= CREDIT_MAX
        if room > 0:
            assert room + sending <= paid.write_credit(usage, queued)
        assert room >= max(whole, 1) or ended or not (queued or sending)
        return
    assert credit.send == 0 and not ended and (queued or sending)
    assert step is (RefillStep.QUEUE if queued else RefillStep.WRITES)


def test_a_call_waits_for_payment_within_its_own_timeout() -> None:
    """call_deadline, a paused call's deadline: its timeout counted from the call's
    start (or from now, the pause's start, when the driver gives none); none without a
    timeout; a timeout of 0 is due at once (a non-blocking call looks once)."""
    assert PaidConnectionEngine.call_deadline(None, 1.0, 5.0) is None
    assert PaidConnectionEngine.call_deadline(2.0, 1.0, 5.0) == 3.0
    assert PaidConnectionEngine.call_deadline(2.0, None, 5.0) == 7.0
    assert PaidConnectionEngine.call_deadline(0.0, None, 5.0) == 5.0
    paid = engine()
    usage = (1500, 0)  # beyond the allowance: paused
    deadline = paid.call_deadline(0.5, 9.8, 10.0)
    call = paid.pause(10.0, deadline=deadline)
    assert call.step(paid.verdict(usage, 10.0), 10.0).action is PauseAction.WAIT
    assert call.step(paid.verdict(usage, 10.3), 10.3).action is PauseAction.TIMED_OUT


def test_a_datagram_send_that_never_waits_takes_what_is_covered() -> None:
    """datagrams_now, the asyncio send: the datagrams the credit covers go; the rest are
    dropped, a pause (whose step datagrams_dropped gives: asking for a receipt, closing
    at its timeout); none go while the bytes/s limit is in debt, which is no pause; a
    batch that goes whole ends the pause, an empty one does not
    (tests/paid/test_datagram_pause.py). Without a bytes/s limit no ``now`` is needed."""
    paid = engine()  # (allowance 1000 bytes, pause_timeout 1 s)
    assert not paid.buckets.bytes.rate
    assert paid.datagrams_now((0, 0), 0, [400, 400], None) == (2, False)
    assert paid.datagrams_now((800, 0), 0, [100, 200], None) == (1, True)
    step = paid.datagrams_dropped((800, 0), 0.0, 200)
    assert step == PauseStep(PauseAction.WAIT, ask=True)
    assert paid.unpaid_datagrams_since == 0.0 and paid.unpaid_size == 200
    assert paid.datagrams_now((800, 0), 0, [], None) == (0, False)  # empty: still paused
    assert paid.unpaid_datagrams_since == 0.0
    assert paid.datagrams_now((900, 0), 0, [200], None) == (0, True)
    step = paid.datagrams_dropped((900, 0), 1.0, 200)
    assert step.action is PauseAction.CLOSE
    assert paid.datagrams_now((0, 0), 0, [10], None) == (1, False)
    assert paid.unpaid_datagrams_since is None  # went whole: that pause is over
    limited = engine(buckets=ClientBuckets(TokenBucket(1000, 0.0), TokenBucket(0, 0.0)))
    assert limited.buckets.bytes.rate
    assert limited.datagrams_now((0, 0), 0, [10], 0.0) == (1, False)
    limited.charge_sent(750, 0.0)  # in debt
    assert limited.datagrams_now((0, 0), 0, [10], 0.0) == (0, False)  # dropped, no pause
    assert limited.unpaid_datagrams_since is None
    assert limited.datagrams_now((0, 0), 0, [10], 1.0) == (1, False)  # paid off by then


def test_a_write_that_never_waits_lets_out_a_slice_of_what_is_covered() -> None:
    """write_now, the asyncio write: what the gate's credit covers (less what is
    queued), a slice of the bytes/s limit's take at most, and nothing while the gate
    does not serve or the limit's bucket has not refilled for a piece. Without a
    bytes/s limit no ``now`` is needed."""
    paid = engine()  # (allowance 1000 bytes)
    assert paid.write_now((0, 0), 0, 600, None) == 600
    assert paid.write_now((0, 0), 700, 600, None) == 300  # queued bytes hold the rest
    assert paid.write_now((5000, 0), 0, 600, None) == 0  # paused
    # 1000 B/s: takes of 50
    limited = engine(buckets=ClientBuckets(TokenBucket(1000, 0.0), TokenBucket(0, 0.0)))
    assert limited.write_now((0, 0), 0, 600, 0.0) == 50
    limited.charge_sent(750, 0.0)
    assert limited.write_now((0, 0), 0, 600, 0.0) == 0  # held back until it refills
    assert limited.write_now((0, 0), 0, 600, 1.0) == 50


def test_no_clock_under_a_bytes_rate_limit_is_refused() -> None:
    """``now`` None means "no bytes/s limit" to write_now and datagrams_now: under a
    limit it is refused with a clear error, and nothing is decided (no charge, no
    pause), rather than the limit silently skipped."""
    limited = engine(buckets=ClientBuckets(TokenBucket(1000, 0.0), TokenBucket(0, 0.0)))
    limited.charge_sent(750, 0.0)  # in debt: with a clock, nothing would go
    owed = limited.debt(0.0)
    assert owed > 0
    with pytest.raises(LocalProtocolError, match=r"write_now: now is required .* bytes/s"):
        limited.write_now((0, 0), 0, 600, None)
    with pytest.raises(LocalProtocolError, match=r"datagrams_now: now is required"):
        limited.datagrams_now((0, 0), 0, [10], None)
    with pytest.raises(LocalProtocolError):
        limited.datagrams_now((900, 0), 0, [200], None)  # (uncovered: no pause begins)
    assert limited.unpaid_datagrams_since is None and limited.asked_at is None
    assert limited.debt(0.0) == owed
    assert limited.write_now((0, 0), 0, 600, 0.0) == 0  # the debt as it was
    assert limited.datagrams_now((0, 0), 0, [10], 0.0) == (0, False)


def test_the_final_receipt_wait_ends_once_paid_or_ended() -> None:
    """final_receipt_step, both drivers' loop before the server closes: ask and wait
    while the receipts do not cover the usage, until the deadline; over at once when
    they do, or when the connection ended."""
    paid = engine()
    deadline = paid.final_receipt_deadline(10.0)
    interval = ServicePolicy().request_interval
    assert paid.final_receipt_step((500, 0), 10.0, deadline, ended=False) == interval
    assert paid.final_receipt_step((500, 0), 10.0, deadline, ended=True) == 0.0
    assert paid.final_receipt_step((500, 0), deadline, deadline, ended=False) == 0.0
    assert paid.final_receipt_step((0, 0), 10.0, deadline, ended=False) == 0.0  # settled
    step, checked = paid.receipt_frame(receipt(500, 1), closed=False)
    assert step is ReceiptStep.STORE and checked is not None
    paid.kept(checked)
    assert paid.final_receipt_step((500, 0), 10.0, deadline, ended=False) == 0.0


@given(
    used=st.integers(0, 3000),
    queued=st.integers(0, 1500),
    nbytes=st.integers(1, 4 * CREDIT_MAX),
    sizes=st.lists(st.integers(1, 600), max_size=6),
)
def test_nothing_moves_while_the_gate_does_not_serve(
    used: int, queued: int, nbytes: int, sizes: list[int]
) -> None:
    """read_room, write_now and datagram_room, what a driver asks before a read, a write
    that never waits and a datagram send: nothing is written and no datagram goes
    whenever the gate does not serve the usage (a read then takes the 1 byte that
    reports how the connection ended); serving, a read takes 1 byte at least, and
    neither a write nor the datagrams go past the gate's credit (a write of 1 byte when
    nothing is queued: the gate said serve)."""
    paid = engine()  # (allowance 1000 bytes)
    usage = (used, 0)
    room = paid.read_room(usage, nbytes)[0]
    send = paid.write_now(usage, queued, nbytes, None)
    count = paid.datagram_room(usage, queued, sizes)
    assert 1 <= room <= nbytes
    if not paid.gate.serving(*usage):
        assert room == 1 and send == count == 0
        return
    credit = paid.write_credit(usage, queued)
    assert send <= nbytes and (send <= credit or (send == 1 and not queued))
    assert sum(sizes[:count]) <= credit
    assert count == len(sizes) or sum(sizes[: count + 1]) > credit


def test_the_final_receipt_wait_is_over_as_its_step_says() -> None:
    """final_receipt_over, what both drivers wait on between two final receipt steps:
    over exactly when final_receipt_step ends the wait before its deadline."""
    paid = engine()
    deadline = paid.final_receipt_deadline(10.0)
    for usage, ended in itertools.product([(0, 0), (500, 0)], [False, True]):
        over = paid.final_receipt_over(usage, ended=ended)
        assert over == (paid.final_receipt_step(usage, 10.0, deadline, ended=ended) == 0.0)
    assert not paid.final_receipt_over((500, 0), ended=False)
    assert paid.final_receipt_over((500, 0), ended=True)
