"""The UDP flows' sans-I/O rules (dtp.hostid.udp._engine), driven without any socket:
the control stream's decoder, the relay's answers to control frames, its report
cadence, its drain and end, and the forwarder's answer to a usage report. Both drivers
(relay_udp, relay_udp_async, UdpForwarder, AsyncUdpForwarder) only pump these."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dtp.hostid.udp._engine as engine_module
from dtp.errors import InsufficientFunds, InvalidArgument
from dtp.hostid.udp._engine import (
    LOSSY_FINAL_RECEIPT_WAIT,
    USAGE,
    BadControlFrame,
    ControlDecoder,
    FlowAccount,
    RelayEngine,
    UdpBilling,
    control_frame,
    parse_report,
)
from dtp.hostid.udp._flow_table import FlowTable
from dtp.hostid.udp._stats import UdpStats
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import RECEIPT_ENCODED_SIZE, Receipt, fee
from dtp.payments._ratelimit import ClientBuckets, RateLimiter, TokenBucket, datagram_charge
from dtp.payments.receipts import Meter
from tests.support.scopes import scope_of
from tests.udp.world import CLIENT, CONNECTION_ID

SLA = Sla(1, 1, 0)
DEPOSIT = 10**9
#: The wall clock the forwarder's receipts are signed at (the engine reads none).
NOW_MS = 1_700_000_000_000


def _billing(**kw: object) -> UdpBilling:
    return UdpBilling(scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, DEPOSIT, **kw)  # type: ignore[arg-type]


def _receipt_frame(meter: Meter, datagrams: int, nbytes: int) -> bytes:
    now = int(time.time() * 1000)
    receipt = meter.record(now, nbytes=nbytes, requests=datagrams) or meter.flush(now)
    assert receipt is not None
    return b"R" + receipt.encode()


def _usage(frame: bytes | None) -> tuple[bytes, int, int]:
    assert frame is not None
    decoder = ControlDecoder()
    decoder.receive(frame)
    body = decoder.next_frame()
    assert body is not None and decoder.next_frame() is None
    return (body[:1], *USAGE.unpack(body[1:]))


# -- the control stream's decoder --------------------------------------------------------

bodies = st.lists(st.binary(min_size=1, max_size=1 + RECEIPT_ENCODED_SIZE), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(bodies=bodies, data=st.data())
def test_frames_split_anywhere_come_out_whole_and_in_order(
    bodies: list[bytes], data: st.DataObject
) -> None:
    wire = b"".join(control_frame(body[:1], body[1:]) for body in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = ControlDecoder()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        decoder.receive(wire[start:end])
        while (body := decoder.next_frame()) is not None:
            out.append(body)
    assert out == bodies


@pytest.mark.parametrize("size", [0, 2 + RECEIPT_ENCODED_SIZE, 2**32 - 1])
def test_a_length_out_of_bounds_raises_after_the_frames_before_it(size: int) -> None:
    """The good frames ahead of a bad header are handed over first (a receipt among
    them is kept); the bad one raises on its header, its body never waited for."""
    decoder = ControlDecoder()
    decoder.receive(control_frame(b"F") + size.to_bytes(4, "big"))
    assert decoder.next_frame() == b"F"
    with pytest.raises(BadControlFrame, match="UDP control frame of"):
        decoder.next_frame()


def test_a_partial_frame_waits_for_more() -> None:
    decoder = ControlDecoder()
    decoder.receive(control_frame(b"U", USAGE.pack(1, 2))[:-1])
    assert decoder.next_frame() is None
    decoder.receive(b"\x02")
    assert decoder.next_frame() == b"U" + USAGE.pack(1, 2)


# -- the relay: control frames -------------------------------------------------------------


def test_the_relay_keeps_a_receipt_and_answers_the_final_request_once() -> None:
    billing = _billing()
    relay = RelayEngine(billing, idle_timeout=60, report_every=32)
    billing.forwarded(10)
    assert (
        relay.control_frame(
            _receipt_frame(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT), 1, 10)
        )
        is None
    )
    assert billing.latest is not None and billing.paid_up
    assert _usage(relay.control_frame(b"F")) == (b"Z", 1, 10)
    with pytest.raises(BadControlFrame, match="second request"):
        relay.control_frame(b"F")


def test_a_receipt_counted_when_kept_pays_only_once_kept_through_run_kept() -> None:
    """With ``counts_when_kept`` a receipt accepted extends no credit until ``kept``;
    ``kept`` counts through ``run_kept`` when a relay set one (the blocking relay: its
    engine lock), and an older receipt kept after a newer one changes nothing."""
    queued: list[Receipt] = []
    billing = _billing(credit_datagrams=2, counts_when_kept=True, on_receipt=queued.append)
    relay = RelayEngine(billing, idle_timeout=60, report_every=32)
    meter = Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT)
    for _ in range(2):
        assert billing.may_forward(10)
        billing.forwarded(10)
    assert relay.control_frame(_receipt_frame(meter, 1, 10)) is None
    assert relay.control_frame(_receipt_frame(meter, 1, 10)) is None
    older, newer = queued
    assert billing.checked == newer and billing.latest is None
    assert not billing.may_forward(10)  # accepted, not kept: still all on credit
    runs: list[str] = []

    def run_kept(count: Callable[[], None]) -> None:
        runs.append("in")
        count()

    billing.run_kept = run_kept
    billing.kept(newer)
    assert billing.latest == newer and runs == ["in"]
    billing.kept(older)
    assert billing.latest == newer and runs == ["in", "in"]
    assert billing.may_forward(10)


@pytest.mark.parametrize(
    "body", [b"U" + USAGE.pack(1, 1), b"Z" + USAGE.pack(1, 1), b"F!", b"X"], ids=repr
)
def test_the_relay_refuses_a_frame_it_never_receives(body: bytes) -> None:
    relay = RelayEngine(_billing(), idle_timeout=60, report_every=32)
    with pytest.raises(BadControlFrame, match="unexpected UDP control frame"):
        relay.control_frame(body)


def test_the_relay_ends_a_client_whose_receipts_keep_being_refused() -> None:
    relay = RelayEngine(_billing(), idle_timeout=60, report_every=32)
    stranger = Meter(CLIENT, scope_of("0x" + "ee" * 32), SLA, DEPOSIT)  # another connection's
    for _ in range(8):
        assert relay.control_frame(_receipt_frame(stranger, 1, 1)) is None
    with pytest.raises(BadControlFrame, match="receipts refused"):
        relay.control_frame(_receipt_frame(stranger, 1, 1))


# -- the relay: reports, drain, end ------------------------------------------------------------


def test_reports_are_due_every_report_every_datagrams_and_on_a_pause() -> None:
    billing = _billing()
    relay = RelayEngine(billing, idle_timeout=60, report_every=4)
    for _ in range(3):
        billing.forwarded(5)
        assert relay.report() is None
    billing.forwarded(5)
    assert _usage(relay.report()) == (b"U", 4, 20)
    billing.forwarded(5)
    assert relay.paused(100.0, last=100.0 - relay.wait / 2) is None  # (traffic still flows)
    assert _usage(relay.paused(100.0, last=100.0 - 2 * relay.wait)) == (b"U", 5, 25)
    assert relay.paused(200.0, last=0.0) is None  # nothing new to report
    relay.control_ended = True
    billing.forwarded(5)
    assert relay.report(force=True) is None  # nobody reads reports any more


def test_the_report_interval_is_at_most_half_the_credit() -> None:
    relay = RelayEngine(_billing(credit_datagrams=16), idle_timeout=60, report_every=32)
    assert relay.report_every == 8


def test_an_unbilled_relay_reports_nothing_and_finishes_at_once() -> None:
    relay = RelayEngine(None, idle_timeout=5, report_every=32)
    assert relay.wait == 1.0 and relay.paused(10.0, 0.0) is None
    assert not relay.done(10.0, 9.0)
    assert relay.finish(10.0, reliable=True) is None
    assert relay.done(10.0, 9.0) and not relay.settled


@pytest.mark.parametrize(
    ("reliable", "idle_timeout", "wait"),
    [(True, 60.0, engine_module.FINAL_RECEIPT_WAIT), (False, 60.0, LOSSY_FINAL_RECEIPT_WAIT),
     (False, 3.0, 3.0)],
    ids=["reliable", "lossy", "idle-timeout-first"],
)  # fmt: skip
def test_a_finishing_relay_waits_a_bounded_time_for_a_receipt(
    reliable: bool, idle_timeout: float, wait: float
) -> None:
    billing = _billing()
    relay = RelayEngine(billing, idle_timeout=idle_timeout, report_every=32)
    billing.forwarded(7)
    assert _usage(relay.finish(100.0, reliable=reliable)) == (b"U", 1, 7)
    assert relay.finishing and relay.finish(101.0, reliable=reliable) is None
    assert not relay.done(100.0 + wait - 0.01, last=100.0 + wait - 0.01)
    assert relay.done(100.0 + wait, last=100.0 + wait)
    assert not relay.settled


def test_a_finishing_relay_ends_once_a_receipt_covers_its_final_report() -> None:
    billing = _billing()
    relay = RelayEngine(billing, idle_timeout=60, report_every=32)
    billing.forwarded(7)
    billing.replied(3)
    relay.finish(100.0, reliable=True)
    meter = Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT)
    relay.control_frame(_receipt_frame(meter, 1, 7))  # short of the reply's bytes
    assert not relay.done(100.1, last=100.1)
    relay.control_frame(_receipt_frame(meter, 0, 3))
    assert relay.done(100.1, last=100.1) and relay.settled


def test_a_relay_ends_when_idle_or_when_its_control_stream_ended() -> None:
    relay = RelayEngine(_billing(), idle_timeout=2.0, report_every=32)
    assert not relay.done(11.9, last=10.0)
    assert relay.done(12.0, last=10.0)
    relay.control_ended = True
    assert relay.done(10.0, last=10.0)


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("datagram"), st.integers(0, 3000)),
            # a batch the relay admits whole (RelayEngine.admit), the sends of some
            # failing (not billed)
            st.tuples(
                st.just("batch"),
                st.lists(st.tuples(st.integers(0, 3000), st.booleans()), max_size=8),
            ),
            st.tuples(st.just("reply"), st.integers(0, 3000)),
            # a batch of the backend's replies (RelayEngine.replies), some too large
            # for a datagram; the carrier takes the first so many, or the send raises
            st.tuples(
                st.just("replies"),
                st.tuples(
                    st.lists(st.integers(0, 3000), max_size=6),
                    st.integers(0, 6),
                    st.booleans(),
                ),
            ),
            st.tuples(st.just("receipt"), st.integers(0, 1)),
        ),
        max_size=80,
    ),
    credit=st.integers(1, 6),
    deposit=st.integers(0, 40_000),
)
def test_a_relay_never_serves_beyond_its_credit_or_the_deposit(
    steps: list[tuple[str, Any]], credit: int, deposit: int
) -> None:
    """Whatever the client sends, signs and the backend answers: the datagrams no
    receipt covers stay within the credit, and the fee of all served stays within the
    deposit (no receipt could pay beyond it). An admitted batch's every datagram is
    forwarded or dropped (by rate or as unpaid), and so is a reply batch's (too large,
    unpaid); only those sent are billed, whether a send took part of a batch or
    raised, and nothing stays reserved."""
    sla = Sla(1, 1, 0)
    billing = UdpBilling(
        scope_of(CONNECTION_ID), sla, CLIENT.ed25519_public, deposit, credit_datagrams=credit
    )
    relay = RelayEngine(billing, idle_timeout=60, report_every=credit)
    meter = Meter(CLIENT, scope_of(CONNECTION_ID), sla, deposit)
    signed = (0, 0)
    for kind, value in steps:
        if kind == "datagram":
            if billing.may_forward(value):
                billing.forwarded(value)
        elif kind == "batch":
            batch = [b"d" * size for size, _ in value]
            fails = {id(d) for d, (_, fail) in zip(batch, value, strict=True) if fail}
            admission = relay.admit(batch, 0.0)
            dropped = admission.unpaid + admission.rate_limited
            assert len(admission.forward) + dropped == len(batch)
            before = (billing.datagrams, billing.bytes)
            went = [d for d in admission.forward if id(d) not in fails]
            nbytes = sum(map(len, went))
            relay.delivered(len(admission.forward), admission.nbytes, len(went), nbytes)
            assert (billing.datagrams, billing.bytes) == (before[0] + len(went), before[1] + nbytes)
            assert billing._pending_datagrams == 0 and billing._pending_bytes == 0
        elif kind == "reply":
            if billing.replies_allowed([value]):
                billing.replied(value, value)
        elif kind == "replies":
            sizes, took, raised = value
            batch = [b"r" * size for size in sizes]
            replies = relay.replies(batch, _REPLY_LIMIT)
            assert len(replies.send) + replies.oversized + replies.unpaid == len(batch)
            assert all(len(d) <= _REPLY_LIMIT for d in replies.send)
            before = (billing.datagrams, billing.bytes, billing.reply_bytes)
            sent = 0 if raised else min(took, len(replies.send))
            nbytes = sum(map(len, replies.send[:sent]))
            relay.replied(replies, sent, nbytes, 0.0)
            # replies are bytes, no requests; only those that went are billed
            after = (before[0], before[1] + nbytes, before[2] + nbytes)
            assert (billing.datagrams, billing.bytes, billing.reply_bytes) == after
            assert billing._pending_datagrams == 0 and billing._pending_bytes == 0
        elif value and (billing.datagrams, billing.bytes) != signed:
            # the client signs what the relay served so far
            now = int(time.time() * 1000)
            d, b = billing.datagrams - signed[0], billing.bytes - signed[1]
            receipt = meter.record(now, nbytes=b, requests=d) or meter.flush(now)
            assert receipt is not None
            relay.control_frame(b"R" + receipt.encode())
            signed = (billing.datagrams, billing.bytes)
        paid = 0 if billing.latest is None else billing.latest.total_requests
        assert billing.datagrams - paid <= credit
        assert fee(sla, billing.bytes, billing.datagrams) <= deposit


# -- the relay's admission of the client's datagrams --------------------------------------------


def test_an_ungated_relay_forwards_every_datagram_and_reports_nothing() -> None:
    relay = RelayEngine(None, idle_timeout=60, report_every=4)
    assert not relay.gated
    admission = relay.admit([b"a", b"bb", b""], 1.0)
    assert (admission.forward, admission.nbytes) == ([b"a", b"bb", b""], 3)
    assert (admission.rate_limited, admission.unpaid) == (0, 0)
    assert relay.delivered(3, 3, 2, 2) is None


def test_datagrams_over_the_rate_are_dropped_before_they_are_billed() -> None:
    """The rate limits come first: a datagram over them is dropped, and the billing
    never reserves it (docs/udp.md)."""
    limiter = RateLimiter(requests_per_sec=8)
    buckets = limiter.acquire(CLIENT.sui_address, 0.0)
    billing = _billing(credit_datagrams=100)
    relay = RelayEngine(billing, idle_timeout=60, report_every=1000, limits=buckets)
    assert relay.gated
    admission = relay.admit([b"x" * 10] * 50, 0.0)
    assert 0 < len(admission.forward) < 50
    assert admission.rate_limited == 50 - len(admission.forward)
    assert admission.unpaid == 0
    assert billing.datagrams == 0  # reserved, not yet counted
    sent = len(admission.forward) - 1  # the backend's socket refused the last one
    relay.delivered(len(admission.forward), admission.nbytes, sent, 10 * sent)
    assert (billing.datagrams, billing.bytes) == (sent, 10 * sent)
    # nothing is left reserved: the whole credit but what was billed is there
    assert billing.may_forward(0)
    billing.not_forwarded(0)
    assert billing._pending_datagrams == 0 and billing._pending_bytes == 0


def test_a_datagram_the_billing_refuses_does_not_hold_back_a_smaller_one() -> None:
    """The billing judges each datagram of a batch (here 1 MIST a byte, 100 deposited):
    one beyond the deposit is dropped as unpaid, and a smaller one after it that the
    deposit covers still goes (a batch of one at a time, as the asyncio relay asks,
    decides the same)."""
    billing = UdpBilling(scope_of(CONNECTION_ID), Sla(1024, 0, 0), CLIENT.ed25519_public, 100)
    relay = RelayEngine(billing, idle_timeout=60, report_every=4)
    admission = relay.admit([b"a" * 60, b"b" * 60, b"c" * 30], 0.0)
    assert admission.forward == [b"a" * 60, b"c" * 30]
    assert admission.unpaid == 1
    one_by_one = UdpBilling(scope_of(CONNECTION_ID), Sla(1024, 0, 0), CLIENT.ed25519_public, 100)
    single = RelayEngine(one_by_one, idle_timeout=60, report_every=4)
    forwarded = [d for d in (b"a" * 60, b"b" * 60, b"c" * 30) if single.admit([d], 0.0).forward]
    assert forwarded == admission.forward


# -- the relay's passing of the backend's replies ------------------------------------------------

#: The largest reply the property's relay passes (a connection's max_datagram_size).
_REPLY_LIMIT = 2500


def test_an_ungated_relay_passes_every_reply_that_fits_a_datagram() -> None:
    relay = RelayEngine(None, idle_timeout=60, report_every=4)
    replies = relay.replies([b"a", b"x" * 11, b"", b"bb"], 10)
    assert replies.send == [b"a", b"", b"bb"]
    assert (replies.reserved, replies.oversized, replies.unpaid) == (0, 1, 0)
    # (nothing to count, nor to report: no billing, no limits)
    assert relay.replied(replies, 2, 1, 0.0) is None


def test_replies_the_billing_refuses_are_dropped_and_those_allowed_reserved() -> None:
    """At 1 MIST a byte and 100 deposited, the first replies the deposit covers go
    (their bytes reserved: a datagram admitted meanwhile must leave room for them),
    the rest are unpaid; once sent, only those that went are billed and the whole
    reservation is released."""
    billing = UdpBilling(scope_of(CONNECTION_ID), Sla(1024, 0, 0), CLIENT.ed25519_public, 100)
    relay = RelayEngine(billing, idle_timeout=60, report_every=4)
    replies = relay.replies([b"a" * 40, b"b" * 200, b"c" * 40, b"d" * 40], 100)
    assert replies.send == [b"a" * 40, b"c" * 40]
    assert (replies.reserved, replies.oversized, replies.unpaid) == (80, 1, 1)
    assert billing._pending_bytes == 80
    assert not billing.may_forward(30)  # 80 reserved + 30 > 100
    relay.replied(replies, 1, 40, 0.0)  # the carrier took the first only
    assert (billing.bytes, billing.reply_bytes, billing._pending_bytes) == (40, 40, 0)


def test_a_reply_send_that_raised_releases_the_reservation_and_bills_nothing() -> None:
    billing = _billing(credit_datagrams=4)
    relay = RelayEngine(billing, idle_timeout=60, report_every=4)
    replies = relay.replies([b"x" * 100] * 3, 1000)
    assert billing._pending_bytes == 300
    relay.replied(replies, 0, 0, 0.0)
    assert (billing.bytes, billing._pending_bytes, billing._pending_datagrams) == (0, 0, 0)


def test_replied_returns_the_report_the_replies_made_due() -> None:
    """Replies are bytes and no requests: they make a report due at half the byte
    credit (UdpBilling.report_due), and replied() returns it, as delivered() does for
    the client's datagrams, so that a relay needs one engine call per batch. A batch
    whose send raised counts nothing and returns none."""
    billing = _billing(credit_datagrams=4)
    relay = RelayEngine(billing, idle_timeout=60, report_every=4)
    half = billing.credit_bytes // 2
    size = 1000
    under = half // size  # replies that stay under half the byte credit
    replies = relay.replies([b"x" * size] * under, 2 * size)
    assert relay.replied(replies, under, under * size, 0.0) is None
    assert relay.replied(relay.replies([b"y" * size] * 2, 2 * size), 0, 0, 0.0) is None
    replies = relay.replies([b"z" * size], 2 * size)
    assert _usage(relay.replied(replies, 1, size, 0.0)) == (b"U", 0, (under + 1) * size)
    replies = relay.replies([b"w" * size], 2 * size)
    assert relay.replied(replies, 1, size, 0.0) is None  # (reported just now)
    assert relay.report(force=True) is not None  # (what came since, when forced)


def test_replies_sent_are_charged_to_the_clients_bytes_with_their_frame_headers() -> None:
    """As the client's own datagrams are (ClientBuckets.admit): by payload alone, a
    backend's empty replies would cost the client nothing however many went. Only
    those sent are charged."""
    buckets = ClientBuckets(TokenBucket(1000, 0.0), TokenBucket(0, 0.0))
    full = buckets.bytes.tokens
    relay = RelayEngine(None, idle_timeout=60, report_every=4, limits=buckets)
    replies = relay.replies([b"", b"y" * 10, b"z" * 200], 1000)
    relay.replied(replies, 2, 10, 0.0)
    assert buckets.bytes.tokens == full - datagram_charge(0) - datagram_charge(10)
    relay.replied(relay.replies([b"w"], 1000), 0, 0, 0.0)  # a send that raised
    assert buckets.bytes.tokens == full - datagram_charge(0) - datagram_charge(10)


# -- the forwarder -------------------------------------------------------------------------------


def test_the_forwarder_signs_a_report_capped_by_what_it_sent_and_received() -> None:
    flow = FlowAccount(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT))
    out, _, _ = flow.admit([b"x" * 10, b"y" * 10], 100)
    assert len(out) == 2
    flow.received_bytes = 5
    answer = flow.answer(b"U" + USAGE.pack(9, 999), "here", NOW_MS)
    assert answer.receipt is not None and not answer.final and answer.paid_before == 0
    assert flow.billed == (2, 25)
    final = flow.answer(b"Z" + USAGE.pack(2, 25), "here", NOW_MS)
    assert final == (type(answer)(None, True, flow.paid))


def test_take_is_a_deprecated_alias_of_admit() -> None:
    flow = FlowAccount(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT))
    with pytest.warns(DeprecationWarning, match="removed in 0.3.0"):
        out, oversized, unpaid = flow.take([b"x" * 10, b"y" * 200], 100)
    assert (out, oversized, unpaid) == ([b"x" * 10], 1, 0)
    assert (flow.sent_datagrams, flow.sent_bytes) == (1, 10)


@pytest.mark.parametrize(
    "body", [b"R" + b"\x00" * 16, b"F", b"U" + USAGE.pack(1, 1) + b"!", b"U"], ids=repr
)
def test_the_forwarder_refuses_a_frame_the_relay_never_sends(body: bytes) -> None:
    with pytest.raises(BadControlFrame, match="unexpected UDP control frame"):
        parse_report(body)
    with pytest.raises(BadControlFrame):
        FlowAccount(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT)).answer(
            body, "here", NOW_MS
        )


def test_a_report_the_deposit_cannot_pay_is_not_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = FlowAccount(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT))
    flow.admit([b"x"], 100)

    def refuse(*args: object, **kw: object) -> None:
        raise InsufficientFunds("the deposit is spent")

    monkeypatch.setattr(flow, "sign", refuse)
    answer = flow.answer(b"U" + USAGE.pack(1, 1), "here", NOW_MS)
    assert answer.receipt is None and not answer.final


def test_a_batch_the_connection_took_in_part_is_counted_once_either_way() -> None:
    """What did not leave (the carrier backed up, or the connection ended) is uncounted
    from the flow -- no relay can bill it -- and counted as dropped."""
    flow = FlowAccount(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT))
    stats = UdpStats()
    out, oversized, unpaid = flow.admit([b"a" * 3, b"b" * 300, b"c" * 5, b"d" * 7], 100)
    assert (len(out), oversized, unpaid) == (3, 1, 0)
    stats.add(**flow.count_send(out, 2, oversized, unpaid))
    assert (flow.sent_datagrams, flow.sent_bytes) == (2, 8)
    assert (stats.datagrams_out, stats.bytes_out, stats.dropped_backlog) == (2, 8, 1)
    assert stats.dropped_oversized == 1
    out, oversized, unpaid = flow.admit([b"e" * 11], 100)
    stats.add(**flow.count_send(out, None, oversized, unpaid))
    assert (flow.sent_datagrams, flow.sent_bytes) == (2, 8)
    assert stats.dropped_no_session == 1 and stats.datagrams_out == 2


def test_an_ending_flow_asks_for_the_final_report_only_when_metered() -> None:
    metered = FlowAccount(Meter(CLIENT, scope_of(CONNECTION_ID), SLA, DEPOSIT))
    assert metered.final_request() == control_frame(b"F") and metered.closed
    unmetered = FlowAccount()
    assert unmetered.final_request() is None and unmetered.closed


# -- the forwarders' table of flows ----------------------------------------------------------


def _table(**kw: float) -> FlowTable:
    settings = {
        "idle_timeout": 30.0,
        "max_sessions": 2,
        "final_timeout": 2.0,
        "max_pending": 3,
        "retry_after": 1.0,
    }
    return FlowTable(**{**settings, **kw})  # type: ignore[arg-type]


def test_a_new_source_gets_a_flow_below_max_sessions_and_past_its_retry_wait() -> None:
    table = _table()
    here, there = ("127.0.0.1", 1), ("127.0.0.1", 2)
    assert table.may_open(here, 1, 10.0)
    assert not table.may_open(here, 2, 10.0)  # (connecting flows count)
    table.connect_failed(here, 10.0)
    assert not table.may_open(here, 0, 10.5) and table.may_open(there, 0, 10.5)
    assert table.may_open(here, 0, 11.0)
    table.sweep(11.0)
    assert table._retry_at == {}


def test_at_most_max_pending_datagrams_wait_for_a_connecting_flow() -> None:
    table = _table()
    assert [table.room(0, 2), table.room(2, 5), table.room(3, 1), table.room(0, 0)] == [2, 1, 0, 0]
    assert _table(max_pending=0).room(0, 4) == 0


def test_idle_flows_and_the_sweep_interval() -> None:
    table = _table(idle_timeout=0.5)
    assert not table.idle(10.0, 10.4) and table.idle(10.0, 10.5)
    assert table.sweep_every == 0.5 and _table().sweep_every == 1.0


@pytest.mark.parametrize(
    "kw",
    [{"idle_timeout": 0}, {"final_timeout": -1}, {"retry_after": float("nan")},
     {"max_sessions": 0}, {"max_pending": 1.5}],
    ids=repr,
)  # fmt: skip
def test_the_table_refuses_bad_settings_naming_them(kw: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(kw))):
        _table(**kw)
