"""PaidServerCore (dtp/hostid/paid/_server_core.py), the server-wide rules both paid
servers pump, driven without any I/O: admission steps, the work the release waits for,
the one-DTP-connection-per-ledger-connection reservation, policy refreshes, settlements."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import ConnectionClosed, ObjectNotFound, PaymentRequired
from dtp.hostid.paid._policy import CLOSED_REFUSAL, ServicePolicy
from dtp.hostid.paid._server_core import (
    END_FAILED,
    NO_LEDGER_CONNECTION,
    TOP_UP_FAILED,
    UNMETERED_REFUSAL,
    AdmitStep,
    EndPhase,
    EndPlan,
    EndStep,
    HandlerRaised,
    HandleStep,
    PaidServerCore,
    Refusal,
)
from dtp.ledger._objects import Firewall, FirewallMode, Host, Settlement
from dtp.payments._gate import CLOSE_PAYMENT_REQUIRED
from dtp.payments._serving import SERVED_REFUSAL
from dtp.protocol._events import ConnectionTerminated
from dtp.protocol.connection import CloseCode
from dtp.transport._session import CALLBACK_FAILED

CID = "0x" + "ab" * 32
ALICE, BOB = "0x" + "a1" * 32, "0x" + "b0" * 32

FIREWALL = Firewall(FirewallMode.ALLOW_ALL, 0, 0, 0, 1000, 10)
HOST = Host("0x" + "11" * 32, 1, "0x" + "22" * 32, b"\0" * 32, (), {}, FIREWALL)


@dataclass(eq=False)
class Conn:
    """A stand-in for a driver's PaidConnection: what the core reads of one."""

    client: str
    connection_id: str = CID
    ledger_check_due: float = 0.0


def core(**policy: float) -> PaidServerCore[Conn]:
    made: PaidServerCore[Conn] = PaidServerCore(ServicePolicy(**policy))  # type: ignore[arg-type]
    made.start(HOST, 0.0)
    return made


def test_admission_steps_follow_the_verdict_and_the_close() -> None:
    server = core()
    assert server.admission_starts()
    assert server.admitted("firewall denies", CID) is AdmitStep.VERDICT
    assert server.admitted(None, None) is AdmitStep.VERDICT
    assert server.admitted(None, CID) is AdmitStep.SERVE
    assert server.close() is False  # the admission still counts
    # admitted as the server closes: nobody will serve it
    assert server.admitted(None, CID) is AdmitStep.SETTLE_AND_REFUSE
    assert server.admitted("refused", CID) is AdmitStep.VERDICT
    assert server.work_ends() is True  # the last work after close(): the release is due
    assert not server.admission_starts()  # released: refused, nothing counted
    assert server.working == 0


def test_close_twice_and_release_once() -> None:
    server = core()
    assert server.close() is True  # idle: released at once
    assert server.releasing
    assert server.close() is None
    server.work_starts()
    assert server.work_ends() is False  # decided already: not twice


@given(st.lists(st.sampled_from(["admit", "work", "end", "close"]), max_size=40))
def test_the_release_is_decided_once_and_only_when_closed_and_idle(steps: list[str]) -> None:
    server = core()
    running = 0
    releases = 0
    closed = False
    for step in steps:
        if step == "admit":
            started = server.admission_starts()
            assert started == (releases == 0)
            running += started
        elif step == "work":
            server.work_starts()
            running += 1
        elif step == "end" and running:
            running -= 1
            due = server.work_ends()
            assert due == (closed and running == 0 and releases == 0)
            releases += due
        elif step == "close":
            due = server.close()
            if closed:
                assert due is None
            else:
                closed = True
                assert due == (running == 0)
                releases += bool(due)
        assert server.working == running
        assert releases <= 1
        assert server.releasing == (releases == 1)


def test_a_reserved_connection_served_is_settled_by_its_server() -> None:
    """The blocking server's DTPServer reports each reservation and release: one handed
    over to serve counts twice (its admission, carried by the reservation; its
    handler), and its release only ends the admission's count."""
    server = core()
    assert server.admission_starts()
    assert server.admitted(None, CID) is AdmitStep.SERVE
    assert server.reserved(CID, True) is False  # the count goes on with the reservation
    assert server.handling(CID.upper().replace("0X", "0x")) is HandleStep.SERVE
    assert server.working == 2
    assert server.reserve_unserved(CID) is None  # reserved: not the unserved path's
    assert server.close() is False
    assert server.work_ends() is False  # the handler returned
    assert server.unreserved(CID) is False  # served: nothing to settle here
    assert server.work_ends() is True  # the admission's count: the last work


def test_a_reserved_connection_handed_over_as_the_server_closes_is_settled_at_its_release() -> None:
    server = core()
    assert server.admission_starts()
    assert server.admitted(None, CID) is AdmitStep.SERVE
    server.reserved(CID, True)
    assert server.close() is False
    # refused (aborted): its reservation's release settles it
    assert server.handling(CID) is HandleStep.REFUSE
    assert server.working == 1
    assert server.reserve_unserved(CID) is None
    assert server.unreserved(CID) is True  # never served: settle it now
    key = server.reserve_unserved(CID)
    assert key == CID
    server.serving.release(key)
    assert server.work_ends() is True  # once settled: the release


def test_a_refused_reservation_ends_its_admissions_count() -> None:
    server = core()
    assert server.admission_starts()
    assert server.close() is False
    assert server.reserved(CID, False) is True  # the last work after close(): released
    assert server.unreserved(CID) is False  # (never reserved: nothing of ours)


def test_a_connection_handed_over_unreported_as_the_server_closes_is_refused_and_settled() -> None:
    """The asyncio server's DTPServer reports no reservations: a handshake that finished
    as the server closed is refused and settled by the hand-over itself, counted as
    work; one naming no ledger connection, or after the release, is only refused."""
    server = core()
    assert server.handling(CID) is HandleStep.SERVE
    assert server.close() is False
    assert server.handling(CID) is HandleStep.REFUSE_AND_SETTLE
    assert server.handling(None) is HandleStep.REFUSE
    assert server.working == 2
    assert server.work_ends() is False
    assert server.work_ends() is True
    assert server.handling(CID) is HandleStep.REFUSE  # released: nothing to settle by
    assert server.working == 0


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "handshake", "handle", "release", "end", "close"]),
            st.integers(0, 2),
        ),
        max_size=40,
    )
)
def test_every_admitted_connection_is_served_or_settled_before_the_release(
    steps: list[tuple[str, int]],
) -> None:
    """Admissions through to the engines' release, in any order the DTPServer's threads
    can give them: the release is decided once, only when closed with no work left, and
    each DTP connection admitted and reserved is either served or settled as unserved
    (exactly one of the two) before it."""
    server = core()
    cids = ["0x" + f"{i:02x}" * 32 for i in range(3)]
    admitting: set[str] = set()  # admitted, not reserved yet
    fate: dict[str, str | None] = {}  # reserved: "served", "refused" once handed over
    running = 0  # handlers under way (ended by "end")
    releases = 0
    for step, i in steps:
        cid = cids[i]
        if step == "admit" and cid not in fate and cid not in admitting:
            if server.admission_starts():
                if server.closed:
                    # admitted as the server closes: settled at once, then refused
                    assert server.admitted(None, cid) is AdmitStep.SETTLE_AND_REFUSE
                    releases += server.work_ends()
                else:
                    assert server.admitted(None, cid) is AdmitStep.SERVE
                    admitting.add(cid)
        elif step == "handshake" and cid in admitting:
            admitting.discard(cid)
            fate[cid] = None
            releases += server.reserved(cid, True)
        elif step == "handle" and cid in fate and fate[cid] is None:
            handed = server.handling(cid)
            assert handed is not HandleStep.REFUSE_AND_SETTLE  # (its release settles it)
            fate[cid] = "served" if handed is HandleStep.SERVE else "refused"
            running += handed is HandleStep.SERVE
        elif step == "release" and cid in fate:
            unserved = server.unreserved(cid)
            assert unserved == (fate.pop(cid) != "served")
            if unserved:
                key = server.reserve_unserved(cid)
                assert key == cid  # (one per ledger connection: nobody else has it)
                server.serving.release(key)
            releases += server.work_ends()
        elif step == "end" and running:
            running -= 1
            releases += server.work_ends()
        elif step == "close":
            releases += bool(server.close())
        assert releases <= 1
        assert server.working == len(admitting) + len(fate) + running
        if releases:
            assert server.closed and server.working == 0
            assert not fate and not admitting  # every admitted one accounted for


def test_a_connection_handed_over_is_refused_without_a_ledger_connection_or_a_second_time() -> None:
    server = core()
    assert server.serve_refusal(None, ALICE) == Refusal(NO_LEDGER_CONNECTION, None)
    assert server.serve_refusal(CID, None) == Refusal(NO_LEDGER_CONNECTION, None)
    assert server.serve_refusal(CID.upper().replace("0X", "0x"), ALICE) is None
    assert CID in server.serving  # reserved (normalized) until its settlement is done
    assert server.serve_refusal(CID, ALICE) == Refusal(
        SERVED_REFUSAL, f"refused connection {CID}: already served"
    )
    server.serving.release(CID)
    assert server.serve_refusal(CID, ALICE) is None
    unread = ObjectNotFound(f"connection {CID}")
    # (settled at once as a connection nobody serves, its deposit refunded whole; not
    # found too: a Sui node may not show an open yet, and the settlement is retried)
    assert PaidServerCore.unmetered(CID, unread) == Refusal(
        UNMETERED_REFUSAL, f"cannot meter connection {CID}: {unread}", settle=True
    )
    # the refusals before the gate leave the settlement to whoever holds the ID
    before_gate = server.serve_refusal(None, ALICE)
    assert before_gate is not None and not before_gate.settle


def test_one_dtp_connection_per_ledger_connection() -> None:
    server = core()
    assert server.reserve_served(CID)
    assert not server.reserve_served(CID)  # a second DTP connection on it is refused
    assert server.reserve_unserved(CID.upper().replace("0X", "0x")) is None
    server.serving.release(CID)
    key = server.reserve_unserved(CID.upper().replace("0X", "0x"))
    assert key == CID  # normalised, reserved: the settlement is the caller's
    assert not server.reserve_served(CID)


def test_settled_records_or_asks_for_a_retry() -> None:
    server = core()
    outcome = Settlement(paid=5, claimed=5, refunded=95)
    assert server.settled(CID, outcome)
    assert not server.settled(CID, None)
    assert list(server.settlements) == [(CID, outcome)]


def test_refresh_denies_changes_limits_and_schedules_ledger_checks() -> None:
    server = core(ledger_check_interval=10.0)
    alice, bob = Conn(ALICE, ledger_check_due=5.0), Conn(BOB, ledger_check_due=50.0)
    server.opened(alice)
    server.opened(bob)
    assert server.open_connections == 2
    same = server.refresh(HOST, 1.0)
    assert (same.limits, same.denied, same.ledger_checks) == (None, (), ())

    # (who the lists refuse is the ledger's to say: refused_clients, given here)
    firewall = replace(FIREWALL, deny_count=1, max_bytes_per_sec=500)
    refresh = server.refresh(replace(HOST, firewall=firewall), 6.0, frozenset({BOB}))
    assert refresh.limits == firewall
    assert refresh.denied == (bob,)
    assert refresh.ledger_checks == (alice,)
    assert alice.ledger_check_due == 16.0  # due again an interval later

    server.ended(bob)
    server.ended(bob)  # twice: nothing more
    assert server.live() == [alice]
    assert server.refresh(replace(HOST, firewall=firewall), 7.0, frozenset({BOB})).denied == ()


def test_the_hosts_rate_limits_are_set_at_the_start_and_on_a_change() -> None:
    server: PaidServerCore[Conn] = PaidServerCore(ServicePolicy())
    assert (server.limiter.bytes_per_sec, server.limiter.requests_per_sec) == (0, 0)
    server.start(HOST, 0.0)
    assert (server.limiter.bytes_per_sec, server.limiter.requests_per_sec) == (1000, 10)
    buckets = server.buckets(ALICE, 0.0)
    slower = replace(FIREWALL, max_bytes_per_sec=500, max_requests_per_sec=5)
    assert server.refresh(replace(HOST, firewall=slower), 1.0).limits == slower
    # set at once, on the buckets of a client already connected too
    assert (server.limiter.bytes_per_sec, server.limiter.requests_per_sec) == (500, 5)
    assert buckets.bytes.rate == 500 and buckets.requests.rate == 5


def test_a_clients_buckets_are_shared_and_given_back_when_its_last_connection_ends() -> None:
    server = core()
    first, second = Conn(ALICE), Conn(ALICE)
    buckets = server.buckets(ALICE, 0.0)
    server.opened(first)
    assert server.buckets(ALICE, 0.0) is buckets  # one client, one pair of buckets
    server.opened(second)
    server.ended(first)
    server.ended(first)  # twice: given back once
    assert server.limiter.clients[ALICE] is buckets
    server.ended(second)
    assert ALICE not in server.limiter.clients  # idle now, kept while it refills


def test_the_store_is_detached_once() -> None:
    server = core()
    assert not server.detach_due()
    server.attached = True
    assert server.detach_due()
    assert not server.detach_due()


def test_a_connection_the_client_closed_cleanly_is_settled_before_the_close() -> None:
    first = PaidServerCore.settles_first
    assert first(ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True))
    assert not first(ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=False))  # we closed
    assert not first(ConnectionTerminated(CLOSE_PAYMENT_REQUIRED, "unpaid", by_peer=True))
    assert not first(None)  # still open: closed first, then settled


def test_how_a_served_connection_ends() -> None:
    """end_plan: settled first only when the client closed cleanly; aborted with
    CALLBACK_FAILED when the handler failed, with CLOSED_REFUSAL when the end was
    cancelled (the loop ending), else closed gracefully."""
    server = core()
    clean = ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True)
    assert server.end_plan(clean, False) == EndPlan(True, None)
    assert server.end_plan(None, False) == EndPlan(False, None)
    assert server.end_plan(None, True) == EndPlan(False, CALLBACK_FAILED)
    assert server.end_plan(None, False, cancelled=True) == EndPlan(False, CLOSED_REFUSAL)
    assert server.end_plan(None, True, cancelled=True) == EndPlan(False, CALLBACK_FAILED)


def test_a_connection_stops_counting_as_its_end_begins() -> None:
    server = core()
    alice = Conn(ALICE)
    server.buckets(ALICE, 0.0)
    server.opened(alice)
    clean = ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True)
    assert server.ending(alice, clean, False) == EndPlan(True, None)
    assert server.open_connections == 0
    assert ALICE not in server.limiter.clients  # its buckets given back
    assert server.refresh(HOST, 1.0).denied == ()  # no refresh reaches it


def _run_end(
    phase: EndPhase[Conn],
    ended: ConnectionTerminated | None,
    cut: frozenset[EndStep] = frozenset(),
    raising: frozenset[EndStep] = frozenset(),
) -> list[EndStep]:
    """The steps ``phase`` gives, made as a driver makes them: ENDING with ``ended``;
    those in ``cut`` cut short by a cancellation, those in ``raising`` raising (the
    driver logs them and goes on)."""
    made = []
    for step in phase:
        made.append(step)
        if step is EndStep.ENDING and step not in raising:
            phase.ending(ended)
        if step in cut:
            phase.cancel()
    return made


def test_a_served_connections_end_is_one_list_of_steps() -> None:
    """EndPhase: the final receipt, the top-up read, the end of its count, then the
    settlement and the close in the plan's order (settled first when the client closed
    cleanly)."""
    server = core()
    clean = ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True)
    alice = Conn(ALICE)
    server.buckets(ALICE, 0.0)
    server.opened(alice)
    phase = EndPhase(server, alice, False)
    assert _run_end(phase, clean) == [
        EndStep.FINAL_RECEIPT,
        EndStep.TOP_UP,
        EndStep.ENDING,
        EndStep.SETTLE,
        EndStep.CLOSE,
    ]
    assert phase.plan == EndPlan(True, None) and not phase.cancelled
    assert server.open_connections == 0  # (ENDING: PaidServerCore.ending)
    failed = EndPhase(server, Conn(BOB), True)
    assert _run_end(failed, None) == [
        EndStep.FINAL_RECEIPT,
        EndStep.TOP_UP,
        EndStep.ENDING,
        EndStep.CLOSE,
        EndStep.SETTLE,
    ]
    assert failed.plan == EndPlan(False, CALLBACK_FAILED)


def test_a_cancelled_end_skips_the_waits_before_the_settlement_but_not_the_settlement() -> None:
    server = core()
    phase = EndPhase(server, Conn(ALICE), False)
    made = _run_end(phase, None, cut=frozenset({EndStep.FINAL_RECEIPT}))
    assert made == [EndStep.FINAL_RECEIPT, EndStep.ENDING, EndStep.CLOSE, EndStep.SETTLE]
    assert phase.cancelled and phase.plan == EndPlan(False, CLOSED_REFUSAL)


def test_a_failed_end_of_the_count_still_closes_and_settles() -> None:
    """Should ENDING raise before it made its plan, the end goes on as for a connection
    not ended yet: closed, then settled."""
    phase = EndPhase(core(), Conn(ALICE), False)
    clean = ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True)
    made = _run_end(phase, clean, raising=frozenset({EndStep.ENDING}))
    assert made[-2:] == [EndStep.CLOSE, EndStep.SETTLE]
    assert phase.plan == EndPlan(False, None)


def test_a_failed_end_step_has_its_own_log_line() -> None:
    assert EndStep.FINAL_RECEIPT.failure == END_FAILED
    assert EndStep.TOP_UP.failure == TOP_UP_FAILED
    assert len({step.failure for step in EndStep} - {END_FAILED}) == 3
    assert all(step.failure.count("%s") == 1 for step in EndStep)


_ENDS = st.sampled_from(
    [
        None,
        ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True),
        ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=False),
        ConnectionTerminated(CLOSE_PAYMENT_REQUIRED, "unpaid", by_peer=True),
    ]
)


@given(
    _ENDS,
    st.booleans(),
    st.frozensets(st.sampled_from(list(EndStep))),
    st.frozensets(st.sampled_from(list(EndStep))),
)
def test_every_end_settles_once_after_its_count_ends(
    ended: ConnectionTerminated | None,
    failed: bool,
    cut: frozenset[EndStep],
    raising: frozenset[EndStep],
) -> None:
    """Whatever step raises or is cut short by a cancellation, the end settles the
    connection exactly once, and closes it once, both after it stopped counting; the
    top-up read, when made, comes before that."""
    server = core()
    paid = Conn(ALICE)
    server.buckets(ALICE, 0.0)
    server.opened(paid)
    phase = EndPhase(server, paid, failed)
    made = _run_end(phase, ended, cut, raising)
    assert made[0] is EndStep.FINAL_RECEIPT
    assert sorted(made[-2:], key=str) == [EndStep.CLOSE, EndStep.SETTLE]
    assert made.count(EndStep.ENDING) == 1 and made[-3] is EndStep.ENDING
    assert (EndStep.TOP_UP in made) is (EndStep.FINAL_RECEIPT not in cut)
    settles_first = made.index(EndStep.SETTLE) < made.index(EndStep.CLOSE)
    assert settles_first is (EndStep.ENDING not in raising and PaidServerCore.settles_first(ended))
    if EndStep.ENDING not in raising:
        assert server.open_connections == 0 and ALICE not in server.limiter.clients


def test_what_counts_as_a_failed_handler() -> None:
    """handler_raised: a DTPError (the gate's PaymentRequired among them) is no failure
    once the connection ended; one while it goes on and any other error are."""

    def failed(cid: str, exc: Exception, ended: ConnectionTerminated | None) -> bool:
        return PaidServerCore.handler_raised(cid, exc, ended).failed

    ended = ConnectionTerminated(CloseCode.NO_ERROR, "", by_peer=True)
    unpaid = ConnectionTerminated(CLOSE_PAYMENT_REQUIRED, "unpaid", by_peer=False)
    assert not failed(CID, PaymentRequired("unpaid", CLOSE_PAYMENT_REQUIRED), unpaid)
    assert not failed(CID, ConnectionClosed("closed"), ended)
    assert failed(CID, ConnectionClosed("closed"), None)
    assert failed(CID, ValueError("a bug"), None)
    assert failed(CID, ValueError("a bug"), ended)


def test_what_a_server_logs_of_a_handler_that_raised() -> None:
    """handler_raised gives the line both servers log with their own logger: the end at
    INFO for a DTPError, the failure at ERROR with the error's traceback otherwise."""
    bug = ValueError("a bug")
    assert PaidServerCore.handler_raised(CID, bug, None) == HandlerRaised(
        True, logging.ERROR, f"the handler failed for connection {CID}", bug
    )
    closed = ConnectionClosed("closed")
    assert PaidServerCore.handler_raised(CID, closed, None) == HandlerRaised(
        True, logging.INFO, f"connection {CID} ended: {closed}", None
    )
