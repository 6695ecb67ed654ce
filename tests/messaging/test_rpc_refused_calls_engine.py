"""A refused call costs nothing (docs/messaging.md §2.5), driven with no I/O: the
client's fee engine and meter (:class:`ClientFees`, :meth:`Meter.charge` /
:meth:`Meter.settle`) against a server's cover of the same connection
(:class:`RequestCover`), with the servers' own answers -- a refusal before counting
marked ``counted: 0``, a JSON-RPC document's response saying what it was counted as.
Calls one at a time and calls in flight together (answers in any order), methods the
rules refuse, calls metered below and above their price: the client never owes less
than the server served (no call of an honest client refused for good), both end on the
same receipt, and what that receipt pays beyond the requests served is only what calls
in flight together or metered above their price paid ahead."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt
from dtp.messaging import errors as E
from dtp.messaging.rpc import RequestPayments
from dtp.messaging.rpc._cover import RequestCover, counted_of, metered_of, uncounted
from dtp.messaging.rpc._engine import ClientFees, Meta, PayRequest, ServerCallFees
from dtp.payments.receipts import Meter
from tests.support.scopes import scope_of

CONNECTION = "0x" + "cd" * 32
PRICE = 5
SLA = Sla(price_per_kib=0, price_per_request=PRICE, min_deposit=0)
CLIENT = HostIdentity.generate()


def _ok(meta: Meta) -> None:
    pass


@dataclass
class Call:
    """One call: what its method counts as at the server (None: the rules refuse it),
    and what the client metered it as."""

    counts: int | None
    metered: int
    outcome: str = ""


class Pair:
    """A client's fees and meter, and a server's fees on the same connection (its
    :class:`RequestPayments`, whose cover is :class:`RequestCover`); the server takes
    requests in the order they were sent (one stream), answering as both servers do,
    and the client hears the answers when told to."""

    def __init__(self) -> None:
        self.meter = Meter(CLIENT, scope_of(CONNECTION), SLA, 10**9)
        self.fees = ClientFees(self.meter, None)
        self.payments = RequestPayments(scope_of(CONNECTION), SLA, CLIENT.ed25519_public, 10**9)
        self.server = ServerCallFees(self.payments, None, None)
        self.answers: dict[int, tuple[Call, Any]] = {}
        self._next = 1

    @property
    def cover(self) -> RequestCover:
        return self.payments._cover

    def send(self, call: Call) -> int:
        """Meter and send ``call``; the server answers it at once (kept for the client)."""
        paid = self.fees.begin(None, None, _ok, call.metered)
        sent: list[Meta] = []

        def frame(meta: Meta) -> int:
            sent.append(meta)
            request_id = self._next
            self._next += 1
            return request_id

        request_id = paid.send(0, _ok, frame)
        self.answers[request_id] = (call, self._answer(call, sent[0]))
        return request_id

    def _answer(self, call: Call, meta: Meta) -> Any:
        """The server's answer: an error (as both servers make it) or a RESPONSE meta."""
        server = self.server
        if call.counts is None:  # the rules refuse it: its fee is never looked at
            code, message, data = server.refusal(E.MethodNotAllowed("no", data={"method": "m"}))
            return E.remote_error(code, message, data)
        try:
            (step,) = server.admission(meta, None, (call.counts * PRICE,))
            assert isinstance(step, PayRequest)
            step.payments.admit(step.meta, step.requests)
        except E.PaymentRequired as exc:
            return E.remote_error(*server.refusal(exc))
        return server.counted_meta(step.counted)

    def hear(self, request_id: int) -> None:
        """The client reads the answer to ``request_id``."""
        call, answer = self.answers.pop(request_id)
        if isinstance(answer, E.RemoteError):
            call.outcome = type(answer).__name__
            self.fees.unanswered(request_id, answer)
        else:
            call.outcome = "served"
            self.fees.answered(request_id, b"", answer)


def test_a_refused_call_is_taken_back_and_the_next_pays_for_itself() -> None:
    pair = Pair()
    for call in (Call(1, 1), Call(None, 3), Call(2, 1), Call(2, 2)):
        pair.hear(pair.send(call))
    # served: 1 + 2 requests; the refused calls' receipts were never kept
    assert pair.cover.served == pair.meter.total_requests == 3
    latest = pair.cover.latest
    assert latest is not None and latest == pair.meter.latest
    assert latest.total_requests == 3 and latest.total_amount == 3 * PRICE
    # nonces went on past the refused calls' receipts, totals went back below theirs
    assert latest.nonce == 4


def test_a_refused_call_covered_by_a_later_receipt_is_a_credit_spent_next() -> None:
    """Sent before the refusal came back: the receipt of the call after it paid for it
    too. The next call is paid by that receipt, carried again; nothing is signed."""
    pair = Pair()
    refused, after = pair.send(Call(None, 2)), pair.send(Call(1, 1))
    pair.hear(after)
    pair.hear(refused)
    signed = pair.meter.latest
    assert signed is not None and signed.total_requests == 3
    assert pair.meter.total_requests == 1  # (two requests paid ahead)
    pair.hear(pair.send(Call(2, 2)))
    assert pair.meter.latest is signed and pair.cover.latest == signed
    assert pair.cover.served == pair.meter.total_requests == 3


def test_a_call_metered_above_its_count_gives_the_rest_back() -> None:
    """A JSON-RPC document metered at the prices of all its requests, some of which the
    rules refuse: its response says what it was counted as."""
    pair = Pair()
    pair.hear(pair.send(Call(0, 4)))  # (every request of it refused)
    assert pair.meter.total_requests == 0 and pair.meter.latest is None
    assert pair.cover.latest is None  # (a request counted as none keeps no receipt)
    pair.hear(pair.send(Call(1, 3)))  # (two of its requests refused)
    assert pair.meter.total_requests == 1 and pair.cover.served == 1
    signed = pair.meter.latest
    pair.hear(pair.send(Call(2, 2)))  # (paid by the credit: nothing signed)
    assert pair.meter.latest is signed
    assert pair.cover.served == pair.meter.total_requests == 3


def test_a_call_metered_below_its_count_is_refused_whatever_the_receipts_cover() -> None:
    """A receipt paying ahead (a refused call's, covered by the later one) does not
    serve a call metered below its count: the client would owe less than was served."""
    pair = Pair()
    calls = [Call(None, 2), Call(1, 1), Call(3, 1)]
    refused, after, short = (pair.send(call) for call in calls)
    for request_id in (after, refused, short):
        pair.hear(request_id)
    assert [call.outcome for call in calls] == ["MethodNotAllowed", "served", "PaymentRequired"]
    assert pair.cover.served == pair.meter.total_requests == 1


def test_the_answers_say_what_was_counted() -> None:
    assert metered_of({"n": 2, "r": b""}) == 2 and metered_of(None) is None
    assert counted_of({"counted": 0, "method": "m"}) == 0
    assert counted_of({"counted": 3}) == 3
    for found in (None, {}, {"counted": -1}, {"counted": True}, {"counted": 1.0}, "x", [0]):
        assert counted_of(found) is None
    assert uncounted(None) == {"counted": 0}
    assert uncounted({"requests": 5}) == {"requests": 5, "counted": 0}
    assert uncounted("text") == "text"  # (no map: the call stays charged)


CALLS = st.lists(
    st.one_of(
        st.builds(lambda n: Call(n, n), st.integers(0, 3)),  # metered right
        st.builds(lambda n, m: Call(None, m), st.integers(0, 3), st.integers(0, 3)),  # refused
        st.builds(lambda n: Call(n + 1, n), st.integers(0, 2)),  # metered below its price
        st.builds(lambda n, e: Call(n, n + e + 1), st.integers(0, 3), st.integers(0, 2)),  # above
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(calls=CALLS, depth=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_the_client_owes_exactly_what_was_served(calls: list[Call], depth: int, seed: int) -> None:
    """Up to ``depth`` calls in flight, their answers heard in any order."""
    pair, rng = Pair(), random.Random(seed)
    in_flight: list[int] = []
    for call in calls:
        in_flight.append(pair.send(call))
        while len(in_flight) >= depth:
            pair.hear(in_flight.pop(rng.randrange(len(in_flight))))
    rng.shuffle(in_flight)
    for request_id in in_flight:
        pair.hear(request_id)
    for call in calls:
        if call.counts is None:
            assert call.outcome == "MethodNotAllowed"
        elif call.metered >= call.counts:
            assert call.outcome == "served", call  # (an honest call is never refused)
        else:
            assert call.outcome == "PaymentRequired", call
    assert pair.meter.total_requests == pair.cover.served
    latest = pair.cover.latest
    assert latest == pair.meter.latest
    paid_ahead = (0 if latest is None else latest.total_requests) - pair.cover.served
    assert paid_ahead >= 0
    if depth == 1 and not any(c.metered > (c.counts or 0) and c.counts for c in calls):
        # one call at a time, none metered above its price: nothing paid ahead
        assert paid_ahead == 0


@pytest.mark.parametrize("after_first", [True, False])
def test_a_receipt_carried_by_two_calls_is_kept_if_either_is_served(after_first: bool) -> None:
    pair = Pair()
    refused, after = pair.send(Call(None, 2)), pair.send(Call(1, 1))
    pair.hear(refused)
    # the credit: the next call carries the receipt of the call still in flight
    carried = pair.send(Call(2, 2))
    assert isinstance(pair.meter.latest, Receipt)
    order = [after, carried] if after_first else [carried, after]
    for request_id in order:
        pair.hear(request_id)
    assert pair.cover.served == pair.meter.total_requests == 3
    assert pair.meter.latest == pair.cover.latest
