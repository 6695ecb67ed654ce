"""The RPC fee engine (dtp.messaging.rpc._engine) driven with no I/O. Client: the order
of a paid call's steps (checked → deposited → checked again, metered, sent), and that a
prepaid fee is never lost and a request never metered unsent, whatever step fails.
Server: the order of a request's admission (refused outright, escrow, receipt), how a
failing check is answered, and that an escrow is kept only for an answered request,
until its one ACK."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import InsufficientFunds
from dtp.identity._ed25519 import verify_memoized
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.interface import response_ack_message
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt
from dtp.messaging import errors as E
from dtp.messaging.rpc import (
    RequestPayments,
    ResponseFeePolicy,
    ResponsePrepay,
    response_hash,
)
from dtp.messaging.rpc._cover import DEPOSIT_REREAD, Refusal, RequestCover, Reread
from dtp.messaging.rpc._engine import (
    UNTIMED_DEPOSIT,
    ClientFees,
    KeepResponse,
    Meta,
    PaidCall,
    PayRequest,
    ReleaseEscrow,
    ServerCallFees,
    TakeEscrow,
)
from dtp.messaging.rpc._server_base import end_request
from dtp.payments.receipts import Meter
from tests.support.scopes import scope_of, v1_receipt_bytes

CONNECTION = "0x" + "ab" * 32
PRICE = 7
CLIENT = HostIdentity.generate()
SERVER = HostIdentity.generate()
LEDGER = LocalLedger(":memory:")  # (never called: the engine makes no deposit itself)


def _meter(deposit: int = 1_000) -> Meter:
    sla = Sla(price_per_kib=0, price_per_request=PRICE, min_deposit=0)
    return Meter(CLIENT, scope_of(CONNECTION), sla, deposit, every_requests=1)


def _prepay() -> ResponsePrepay:
    return ResponsePrepay(LEDGER, CLIENT, SERVER.sui_address, 10)


class Refused(Exception):
    """What a driver's check or send raises in these tests."""


def _ok(meta: Meta) -> None:
    pass


def test_a_call_that_fails_its_first_check_is_not_paid_for() -> None:
    meter, prepay = _meter(), _prepay()
    fees = ClientFees(meter, prepay)

    def refuse(meta: Meta) -> None:
        raise Refused

    with pytest.raises(Refused):
        fees.begin(None, 5.0, refuse)
    assert meter.total_requests == 0
    assert prepay.unanswered == []


@pytest.mark.parametrize(("timeout", "expected"), [(5.0, 5.0), (None, UNTIMED_DEPOSIT), (0, 0)])
def test_a_prepaid_call_asks_for_its_deposit(timeout: float | None, expected: float) -> None:
    paid = ClientFees(None, _prepay()).begin({"k": 1}, timeout, _ok)
    assert paid.deposit_timeout == expected
    paid.deposited("0x" + "01" * 32)
    assert paid.deposit_timeout is None
    assert paid.meta == {"k": 1, "re": "0x" + "01" * 32}


def test_a_metered_call_asks_for_no_deposit() -> None:
    paid = ClientFees(_meter(), None).begin(None, 5.0, _ok)
    assert paid.deposit_timeout is None and paid.escrow_id is None


def test_send_checks_again_before_the_meter_counts() -> None:
    """A check that fails after the deposit (closed meanwhile, the in-flight limit
    filled) leaves the meter as it was and the escrow to refund_due."""
    meter, prepay = _meter(), _prepay()
    fees = ClientFees(meter, prepay)
    paid = fees.begin(None, 5.0, _ok)
    paid.deposited("0xe1")
    seen: list[str] = []

    def refuse(meta: Meta) -> None:
        seen.append("check")
        raise Refused

    def send(meta: Meta) -> int:
        seen.append("send")
        return 1

    with pytest.raises(Refused):
        paid.send(1_000, refuse, send)
    assert seen == ["check"]
    assert meter.total_requests == 0
    assert prepay.unanswered == ["0xe1"]


def test_send_meters_then_sends_with_the_receipt() -> None:
    meter, prepay = _meter(), _prepay()
    paid = ClientFees(meter, prepay).begin(None, 5.0, _ok)
    paid.deposited("0xe1")
    sent: list[Meta] = []

    def send(meta: Meta) -> int:
        assert meter.total_requests == 1  # counted before it is framed
        sent.append(meta)
        return 42

    assert paid.send(1_000, _ok, send) == 42
    assert sent[0] is not None and sent[0]["re"] == "0xe1"
    receipt = Receipt.decode(sent[0]["r"])
    assert receipt.total_requests == 1 and receipt.total_amount == PRICE
    assert prepay.unanswered == []


def test_a_meter_that_refuses_leaves_the_escrow_to_refund() -> None:
    meter, prepay = _meter(deposit=PRICE), _prepay()  # pays for one request only
    fees = ClientFees(meter, prepay)
    first = fees.begin(None, 5.0, _ok)
    first.deposited("0xe1")
    first.send(1_000, _ok, lambda meta: 1)
    second = fees.begin(None, 5.0, _ok)
    second.deposited("0xe2")
    sent: list[Meta] = []
    with pytest.raises(InsufficientFunds):
        second.send(2_000, _ok, lambda meta: sent.append(meta) or 2)
    assert sent == []
    assert prepay.unanswered == ["0xe2"]


def _sent(fees: ClientFees, request_id: int, escrow_id: str | None) -> PaidCall:
    """A call through its steps to the send, which gives it ``request_id``."""
    paid = fees.begin(None, 5.0, _ok)
    if escrow_id is not None:
        paid.deposited(escrow_id)
    paid.send(1_000, _ok, lambda meta: request_id)
    return paid


def test_answered_signs_the_acknowledgement_once() -> None:
    prepay = _prepay()
    fees = ClientFees(None, prepay)
    _sent(fees, 5, "0xe1")
    body = b"\x93\x01\x02\x03"
    signature = fees.answered(5, body)
    assert signature is not None
    message = response_ack_message(LEDGER.package_id, "0xe1", response_hash(body))
    assert verify_memoized(CLIENT.ed25519_public, signature, message)
    assert fees.answered(5, body) is None  # (a second answer is not acknowledged)
    fees.unanswered(5)  # (nor refunded: the server may claim it)
    assert prepay.unanswered == [] and fees.prepaid == 0


def test_a_call_with_no_escrow_has_nothing_to_settle() -> None:
    prepay = _prepay()
    fees = ClientFees(_meter(), None)
    _sent(fees, 1, None)
    assert fees.prepaid == 0
    assert fees.answered(1, b"body") is None
    fees.unanswered(1)
    fees.unanswered(99)  # (a request the client never sent)
    assert prepay.unanswered == []


def test_unanswered_refunds_once() -> None:
    prepay = _prepay()
    fees = ClientFees(None, prepay)
    _sent(fees, 1, "0xe1")
    _sent(fees, 2, "0xe2")
    assert fees.prepaid == 2
    fees.unanswered(1)
    fees.unanswered(1)  # (a call's error and then its close, say)
    assert fees.answered(1, b"late") is None  # (a response after it gave up: no ACK)
    assert prepay.unanswered == ["0xe1"]
    fees.all_unanswered()
    fees.all_unanswered()
    assert prepay.unanswered == ["0xe1", "0xe2"] and fees.prepaid == 0


def test_a_replaced_prepay_still_refunds_its_own_escrows() -> None:
    """The escrow goes back to the ResponsePrepay that made it, also when the client's
    ``prepay`` was changed (or taken away) while the call was in flight."""
    first, second = _prepay(), _prepay()
    fees = ClientFees(None, first)
    paid = fees.begin(None, 5.0, _ok)
    assert paid.prepay is first
    fees.prepay = None
    paid.deposited("0xe1")
    paid.send(1_000, _ok, lambda meta: 1)
    _sent(fees, 2, None)  # (begun with no prepay: no escrow)
    fees.prepay = second
    _sent(fees, 3, "0xe3")
    fees.all_unanswered()
    assert first.unanswered == ["0xe1"] and second.unanswered == ["0xe3"]


def test_an_orphaned_deposit_waits_for_refund() -> None:
    """A deposit that ends after its call was cancelled (the asyncio client's worker
    thread): no request names the escrow, so it is refunded."""
    prepay = _prepay()
    paid = ClientFees(None, prepay).begin(None, 5.0, _ok)
    paid.orphaned("0xe1")
    assert prepay.unanswered == ["0xe1"]
    unpaid = ClientFees(_meter(), None).begin(None, 5.0, _ok)
    unpaid.orphaned("0xe2")  # (no prepay: not an escrow of ours to refund)
    assert prepay.unanswered == ["0xe1"]


# what may happen to a call sent: answered, failed (an error, its deadline, cancelled),
# the same again (a late response, a second report), or every call failing (close)
ENDINGS = st.lists(
    st.tuples(st.sampled_from(["answer", "error", "close"]), st.integers(0, 9)),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(prepaid=st.lists(st.booleans(), min_size=1, max_size=10), endings=ENDINGS)
def test_every_escrow_is_settled_or_refunded_exactly_once(
    prepaid: list[bool], endings: list[tuple[str, int]]
) -> None:
    """The client's registry: whatever order calls end in, and however often an ending
    is reported, each escrow made is acknowledged (the server's claim) or refunded,
    never both and never twice; once the client closes, none is left."""
    prepay = _prepay()
    fees = ClientFees(None, prepay)
    made: dict[int, str] = {}
    for request_id, paid in enumerate(prepaid):
        fees.prepay = prepay if paid else None
        escrow_id = f"0x{request_id:064x}" if paid else None
        _sent(fees, request_id, escrow_id)
        if escrow_id is not None:
            made[request_id] = escrow_id
    acknowledged: list[str] = []
    for ending, request_id in endings:
        if ending == "answer":
            if fees.answered(request_id, b"body") is not None:
                acknowledged.append(made[request_id])
        elif ending == "error":
            fees.unanswered(request_id)
        else:
            fees.all_unanswered()
    fees.all_unanswered()
    settled = acknowledged + prepay.unanswered
    assert sorted(settled) == sorted(made.values())
    assert len(set(settled)) == len(settled)
    assert fees.prepaid == 0


# where a call may fail: its first check, the deposit, the check before the meter, the
# meter (the deposit runs out), the send
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["none", "first", "deposit", "again", "send"]),
        st.booleans(),  # prepaid
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(calls=STEPS, deposit_requests=st.integers(0, 30))
def test_no_fee_is_lost_and_no_unsent_request_is_metered(
    calls: list[tuple[str, bool]], deposit_requests: int
) -> None:
    """Money conservation for the client's fee steps: every escrow made belongs to a
    call sent or waits on ``unanswered`` (exactly once); the meter counted exactly
    the requests sent (one whose send failed is taken back); and the receipts went
    out in nonce order, cumulative."""
    meter, prepay = _meter(deposit=PRICE * deposit_requests), _prepay()
    fees = ClientFees(meter, None)
    made: list[str] = []
    in_flight: list[str] = []
    sent_receipts: list[Receipt] = []
    reached_send = sent = 0
    for index, (fail, prepaid) in enumerate(calls):
        fees.prepay = prepay if prepaid else None

        checks = 0

        def check(meta: Meta, fail: str = fail) -> None:
            nonlocal checks
            checks += 1
            if (fail == "first" and checks == 1) or (fail == "again" and checks == 2):
                raise Refused

        def send(meta: Meta, fail: str = fail, index: int = index) -> int:
            nonlocal reached_send, sent
            reached_send += 1
            if fail == "send":
                raise Refused
            assert meta is not None and "r" in meta
            sent_receipts.append(Receipt.decode(meta["r"]))
            sent += 1
            return index

        try:
            paid = fees.begin(None, 1.0, check)
            if paid.deposit_timeout is not None:
                if fail == "deposit":
                    raise Refused  # the ledger refused: no escrow exists
                escrow_id = f"0x{index:064x}"
                made.append(escrow_id)
                paid.deposited(escrow_id)
            paid.send(1_000 + index, check, send)
        except (Refused, InsufficientFunds):  # (InsufficientFunds: the meter's refusal)
            continue
        if paid.escrow_id is not None:
            in_flight.append(paid.escrow_id)
    assert fees.prepaid == len(in_flight)  # (filed under their requests)
    assert sorted(in_flight + prepay.unanswered) == sorted(made)
    assert len(set(prepay.unanswered)) == len(prepay.unanswered)
    # a send that failed after the meter counted (the driver's framing refusing, which
    # the check just before rules out) is taken back: its receipt never left
    assert meter.total_requests == sent <= reached_send
    nonces = [r.nonce for r in sent_receipts]
    assert nonces == sorted(set(nonces))
    amounts = [r.total_amount for r in sent_receipts]
    assert amounts == sorted(amounts) and (not amounts or amounts[-1] == PRICE * sent)
    assert all(r.total_amount <= PRICE * deposit_requests for r in sent_receipts)


def test_the_engine_needs_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """No clock, no socket, no thread: the engine is driven by what it is given."""
    import socket
    import threading
    import time

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fee engine did I/O")

    for module, name in [
        (time, "time"),
        (time, "monotonic"),
        (socket, "socket"),
        (threading, "Thread"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    meter, prepay = _meter(), _prepay()
    paid = ClientFees(meter, prepay).begin(None, 5.0, _ok)
    paid.deposited("0xe1")
    assert paid.send(1_000, _ok, lambda meta: 7) == 7


# -- the server's side -------------------------------------------------------------------------


def _payments() -> RequestPayments:
    sla = Sla(price_per_kib=0, price_per_request=PRICE, min_deposit=0)
    return RequestPayments(scope_of(CONNECTION), sla, CLIENT.ed25519_public, 1_000)


def _policy() -> ResponseFeePolicy:
    return ResponseFeePolicy(LEDGER, SERVER, min_amount=10)


def test_admission_takes_the_escrow_before_the_receipt() -> None:
    """A request the escrow check refuses must not have counted or kept its receipt (a
    refused request costs nothing): the receipt is taken last, and a request it
    refuses has its escrow released by the driver."""
    payments, policy = _payments(), _policy()
    fees = ServerCallFees(payments, None, policy)
    meta = {"r": b"x", "re": "0xe1"}
    steps = fees.admission(meta, CLIENT.sui_address)
    assert [type(step) for step in steps] == [TakeEscrow, PayRequest]
    take, pay = steps
    assert isinstance(pay, PayRequest) and pay.payments is payments and pay.meta is meta
    assert isinstance(take, TakeEscrow) and take.policy is policy
    assert take.peer == CLIENT.sui_address


@pytest.mark.parametrize(
    ("payments", "policy", "steps"),
    [(False, False, []), (True, False, [PayRequest]), (False, True, [TakeEscrow])],
)
def test_admission_has_a_step_per_fee(payments: bool, policy: bool, steps: list[type]) -> None:
    fees = ServerCallFees(_payments() if payments else None, None, _policy() if policy else None)
    assert [type(step) for step in fees.admission(None, None)] == steps
    assert fees.paid is (payments or policy)
    assert fees.needs_context(False) is policy  # (the escrow ID is kept in the context)
    assert fees.needs_context(True)


def test_a_connection_with_no_check_refuses_every_request() -> None:
    fees = ServerCallFees(None, "no ledger connection 0x1", _policy())
    assert fees.paid
    with pytest.raises(E.PaymentRequired, match="no ledger connection 0x1"):
        fees.admission(None, None)


def test_a_failing_fee_check_is_the_requests_internal_error() -> None:
    """A refusal says it counted nothing on a stream paid per request (the client's
    meter takes the call back); a check failing itself says nothing of the kind."""
    paid, prepaid_only = (
        ServerCallFees(_payments(), None, None),
        ServerCallFees(None, None, _policy()),
    )
    assert paid.refusal(E.PaymentRequired("no receipt")) == (
        E.PAYMENT_REQUIRED,
        "no receipt",
        {"counted": 0},
    )
    assert paid.refusal(E.PaymentRequired("short", data={"requests": 5}))[2] == {
        "requests": 5,
        "counted": 0,
    }
    assert prepaid_only.refusal(E.PaymentRequired("no escrow"))[2] is None
    for exc in (OSError(28, "disk full"), TypeError("x"), RuntimeError("secret")):
        code, message, data = paid.refusal(exc)
        assert data is None
        assert code == E.INTERNAL_ERROR
        assert message == f"internal error ({type(exc).__name__})"  # (no detail leaks)


def test_an_answered_escrow_waits_for_its_ack_once() -> None:
    policy = _policy()
    fees = ServerCallFees(None, None, policy)
    policy.answered["0xe1"] = (b"", b"")  # (what policy.admit keeps)
    assert fees.ended(3, "0xe1", b"body") == KeepResponse(policy, "0xe1", b"body")
    assert policy.answered["0xe1"] == (b"", b"")  # (the driver runs the step)
    ack = fees.acked(3, b"sig")
    assert ack is not None and (ack.policy, ack.escrow_id, ack.signature) == (
        policy,
        "0xe1",
        b"sig",
    )
    assert fees.acked(3, b"sig") is None  # (once)
    assert fees.acked(4, b"sig") is None  # (a request that prepaid nothing)


def test_an_unanswered_escrow_is_released() -> None:
    policy = _policy()
    fees = ServerCallFees(None, None, policy)
    assert fees.ended(3, "0xe1", None) == ReleaseEscrow(policy, "0xe1")
    assert fees.acked(3, b"sig") is None
    assert fees.ended(4, None, b"body") is None  # (nothing prepaid: nothing to do)
    assert ServerCallFees(None, None, None).ended(5, "0xe1", b"body") is None


def test_the_servers_run_the_end_steps_on_the_policy() -> None:
    """end_request (both servers): an answered escrow is kept with its response's
    hash, an unanswered one forgotten."""
    policy = _policy()
    fees = ServerCallFees(None, None, policy)
    policy.answered["0xe1"] = policy.answered["0xe2"] = (b"", b"")  # (policy.admit's)
    end_request(fees, 3, "0xe1", b"body")
    end_request(fees, 4, "0xe2", None)
    end_request(fees, 5, None, None)
    assert policy.answered == {"0xe1": (response_hash(b"body"), b"body")}


class _NoLock:
    """A lock the engine must not take (the policy's belongs to the drivers)."""

    def __enter__(self) -> None:
        raise AssertionError("the fee engine took a lock")

    def __exit__(self, *exc: object) -> None:
        pass

    acquire = __enter__


def test_the_server_engine_takes_no_lock() -> None:
    """The server's steps are decisions: the engine reads no policy state under its
    lock and changes none; the drivers run the steps."""
    policy, payments = _policy(), _payments()
    policy._lock = _NoLock()  # type: ignore[assignment]
    payments._lock = _NoLock()  # type: ignore[assignment]
    fees = ServerCallFees(payments, None, policy)
    assert len(fees.admission({"re": "0xe1"}, None)) == 2
    assert isinstance(fees.ended(1, "0xe1", b"body"), KeepResponse)
    assert isinstance(fees.ended(2, "0xe2", None), ReleaseEscrow)
    assert fees.acked(1, b"sig") is not None


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.integers(0, 5), st.booleans(), st.booleans()),  # escrow, answered, acked
        max_size=30,
    )
)
def test_the_policy_keeps_only_answered_escrows(requests: list[tuple[int, bool, bool]]) -> None:
    """Whatever order requests end in, the policy keeps no entry for a request that
    ended with no response, and each ACK is checked for an answered escrow only, once."""
    policy = _policy()
    fees = ServerCallFees(None, None, policy)
    claims: list[str] = []
    for request_id, (escrow, answered, acked) in enumerate(requests):
        escrow_id = f"0xe{escrow}"
        if escrow_id in policy.answered or escrow_id in policy.acks:
            continue  # (policy.admit refuses an escrow used already)
        policy.answered[escrow_id] = (b"", b"")
        end_request(fees, request_id, escrow_id, b"%d" % request_id if answered else None)
        if acked:
            ack = fees.acked(request_id, b"sig")
            assert (ack is not None) is answered
            if ack is not None:
                claims.append(ack.escrow_id)
                # (what acknowledged does once the signature verifies)
                policy.answered.pop(ack.escrow_id)
                policy.acks[ack.escrow_id] = (b"h", b"sig")
    assert all(digest for digest, _ in policy.answered.values())
    assert len(claims) == len(set(claims))


# -- which requests a connection's receipts cover (RequestCover) ------------------------------


def _cover(deposit: int = 1_000, credit: int = 0) -> RequestCover:
    sla = Sla(price_per_kib=0, price_per_request=PRICE, min_deposit=0)
    return RequestCover(scope_of(CONNECTION), sla, CLIENT.ed25519_public, deposit, credit)


def _signed(meter: Meter) -> bytes:
    receipt = meter.record(0, requests=1) or meter.flush(0)
    assert receipt is not None
    return receipt.encode()


def test_a_request_is_counted_only_while_receipts_and_credit_cover_it() -> None:
    cover, meter = _cover(credit=1), _meter()
    assert cover.admit(None) is None  # the credit
    refused = cover.admit(None)
    assert isinstance(refused, Refusal) and "request 2 is not covered" in refused.error.message
    first = _signed(meter)
    accepted = cover.admit(first)
    assert accepted == Receipt.decode(first) == cover.latest
    assert cover.served == 2 and cover.earned == PRICE
    # a stale receipt, while the latest pays for no request unserved: refused
    stale = cover.admit(first)
    assert isinstance(stale, Refusal) and not stale.beyond_deposit
    assert cover.latest == Receipt.decode(first)


def test_the_receipt_of_a_refused_request_is_not_kept() -> None:
    """A valid newer receipt that pays for too few requests (a call metered below its
    price): the request is refused and the receipt is not kept -- the server never
    holds a receipt that pays for a refused request. The client's next receipt, signed
    from the one before (a higher nonce, lower totals than the refused one), is taken."""
    first = Receipt(scope_of(CONNECTION), 0, 2, 2 * PRICE, 1).sign(CLIENT)
    cover = _cover()
    cover.resume(first)
    assert cover.served == 2
    short = Receipt(scope_of(CONNECTION), 0, 4, 4 * PRICE, 2).sign(CLIENT)
    refused = cover.admit(short.encode(), requests=3)
    assert isinstance(refused, Refusal) and refused.error.data == {"requests": 3}
    assert "requests 3..5 are not covered" in refused.error.message
    assert cover.latest == first and cover.served == 2
    paid = Receipt(scope_of(CONNECTION), 0, 3, 3 * PRICE, 3).sign(CLIENT)
    assert cover.admit(paid.encode()) == paid
    assert cover.served == 3 and cover.earned == 3 * PRICE


def test_a_request_counted_as_none_keeps_no_receipt() -> None:
    """A free request (a method priced 0, a JSON-RPC document whose requests the rules
    refuse all) is served without its receipt being looked at: a receipt it carries
    pays for nothing served, and is not kept."""
    cover, meter = _cover(), _meter()
    assert cover.admit(_signed(meter), requests=0) is None
    assert cover.admit(b"not a receipt", requests=0) is None
    assert cover.latest is None and cover.served == 0


def test_receipts_in_another_order_pay_for_the_requests_they_overtook() -> None:
    """Two streams sharing a meter: the newer receipt arrives first and pays for the
    request that carries the older one."""
    cover, meter = _cover(), _meter()
    older, newer = _signed(meter), _signed(meter)
    assert cover.admit(newer) == Receipt.decode(newer)
    assert cover.admit(older) is None  # counted: paid by the newer one
    assert cover.served == 2
    assert isinstance(cover.admit(older), Refusal)  # no request left unpaid for it


def test_a_receipt_beyond_the_deposit_reads_it_again_at_most_once_a_second() -> None:
    cover, meter = _cover(deposit=PRICE), _meter(deposit=10 * PRICE)
    assert cover.admit(_signed(meter)) is not None
    beyond = _signed(meter)
    refused = cover.admit(beyond)
    assert isinstance(refused, Refusal) and refused.beyond_deposit
    assert cover.reread(100.0) is Reread.READ_NOW
    assert cover.reread(100.1) is Reread.WAIT  # (another request, meanwhile)
    cover.deposit_read(None)  # the read failed
    assert cover.reread(100.5) is Reread.REFUSE  # (less than DEPOSIT_REREAD since)
    assert cover.reread(100.0 + DEPOSIT_REREAD) is Reread.READ_NOW
    cover.deposit_read(10 * PRICE)
    assert cover.deposited == 10 * PRICE
    assert cover.admit(beyond) == Receipt.decode(beyond)
    cover.deposit_read(PRICE)  # (a stale read never lowers it)
    assert cover.deposited == 10 * PRICE


def test_a_receipt_of_another_scope_or_version_is_refused() -> None:
    """A request's receipt (meta ``"r"``) is checked as the ledger would pay it: one
    signed for another escrow or package (docs/escrow.md §6), or in format version 1 (a
    client of the release before), is refused with the reason, and counts nothing."""
    cover = _cover()
    other_escrow = scope_of(CONNECTION, escrow_id="0x" + "e1" * 32)
    other_package = scope_of(CONNECTION, package="0x" + "e2" * 32)
    for scope in (other_escrow, other_package):
        receipt = Receipt(scope, 0, 1, PRICE, 1).sign(CLIENT)
        refused = cover.admit(receipt.encode())
        assert isinstance(refused, Refusal)
        assert "receipt refused" in refused.error.message
        assert "does not verify" in refused.error.message
    old = cover.admit(v1_receipt_bytes(CONNECTION, 0, 1, PRICE, 1, CLIENT))
    assert isinstance(old, Refusal)
    assert "Receipt format version 1 is not supported" in old.error.message
    assert cover.latest is None and cover.served == 0
    good = Receipt(scope_of(CONNECTION), 0, 1, PRICE, 1).sign(CLIENT)
    assert cover.admit(good.encode()) == good


def test_a_request_not_served_after_all_counts_no_more() -> None:
    cover = _cover(credit=1)
    assert cover.admit(None) is None
    cover.not_served()
    assert cover.served == 0
    assert cover.admit(None) is None


def test_the_request_cover_needs_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading
    import time

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("RequestCover did I/O")

    for module, name in [(time, "time"), (time, "monotonic"), (socket, "socket")]:
        monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(threading, "Lock", forbidden)
    cover, meter = _cover(deposit=PRICE), _meter(deposit=2 * PRICE)
    assert cover.admit(_signed(meter)) is not None
    refused = cover.admit(_signed(meter))
    assert isinstance(refused, Refusal) and refused.beyond_deposit
    assert cover.reread(5.0) is Reread.READ_NOW


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("request"), st.integers(0, 3)),  # receipts signed first
            st.tuples(st.just("replay"), st.integers(0, 5)),  # an older receipt again
            st.tuples(st.just("topup"), st.integers(0, 5 * PRICE)),
        ),
        max_size=30,
    ),
    deposit_requests=st.integers(0, 6),
    credit=st.integers(0, 3),
)
def test_never_more_served_than_receipts_and_credit_cover(
    steps: list[tuple[str, int]], deposit_requests: int, credit: int
) -> None:
    """Whatever the client signs, replays or leaves unsigned, and however the deposit
    grows: the requests served never exceed what the latest receipt pays for plus the
    credit, the latest receipt never exceeds the deposit known, and its nonce only
    grows."""
    cover = _cover(deposit=deposit_requests * PRICE, credit=credit)
    meter = _meter(deposit=10**6)
    signed: list[bytes] = []
    nonce = 0
    for kind, value in steps:
        if kind == "request":
            raw = None
            for _ in range(value):
                raw = _signed(meter)
                signed.append(raw)
            cover.admit(raw)
        elif kind == "replay" and signed:
            cover.admit(signed[-1 - value % len(signed)])
        elif kind == "topup":
            cover.deposit_read(cover.deposited + value)
        latest = cover.latest
        paid = 0 if latest is None else latest.total_requests
        assert cover.served <= paid + credit
        if latest is not None:
            assert latest.total_amount <= cover.deposited
            assert latest.nonce >= nonce
            nonce = latest.nonce


def test_request_payments_keeps_its_attributes_writable() -> None:
    """RequestPayments' state lives in its RequestCover; its attributes stay writable as
    they were, and a write is what the next request is judged by."""
    payments = _payments()
    with pytest.raises(E.PaymentRequired):
        payments.admit(None)  # no receipt and no credit
    other = Sla(price_per_kib=0, price_per_request=PRICE * 2, min_deposit=0)
    payments.sla = other
    payments.client_public_key = SERVER.ed25519_public
    payments.connection_id = "0x" + "CD" * 32  # (normalized, as the constructor does)
    payments.latest = None
    assert (payments.sla, payments.client_public_key, payments.latest) == (
        other,
        SERVER.ed25519_public,
        None,
    )
    assert payments.connection_id == "0x" + "cd" * 32
    payments.credit_requests = 1
    payments.served = 0
    payments.admit(None)  # within the one request of credit again
    assert payments.served == 1
    with pytest.raises(E.PaymentRequired):
        payments.admit(None)
