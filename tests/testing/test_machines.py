"""The ready state machines (dtp.testing.machines): they run clean on the real rules, a
user's subclass adds rules and keeps the invariants, and each catches the bug it is
there for -- a server paid beyond what its client signed, refunds before the timeout, a
replica that does not converge."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test

from dtp.errors import ChainError
from dtp.graph import SyncSession
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS
from dtp.testing.ledger_world import LedgerWorld, WorldBroken
from dtp.testing.machines import EscrowMachine, GraphMachine

QUICK = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: For the broken machines: the first bug found is the one reported, and no explain
#: phase (it reruns the shrunk failure under a line tracer only to comment it: most of
#: such a test's time, for a report these tests do not read).
ONE_BUG = settings(
    QUICK,
    report_multiple_bugs=False,
    phases=[phase for phase in Phase if phase is not Phase.explain],
)


def test_the_escrow_machine_holds_on_the_ledger() -> None:
    run_state_machine_as_test(EscrowMachine, settings=QUICK)


def test_the_graph_machine_converges() -> None:
    run_state_machine_as_test(GraphMachine, settings=QUICK)


class StarGraphMachine(GraphMachine):
    replicas_count = 4
    star = True


def test_the_graph_machine_converges_in_a_star() -> None:
    run_state_machine_as_test(StarGraphMachine, settings=QUICK)


class _MeteredService(EscrowMachine):
    """A user's machine: a service of its own that bills a request at a time (signs
    through the world, claims what it signed)."""

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def a_request_is_billed(self, data: st.DataObject) -> None:
        world = self.world
        channel = data.draw(st.sampled_from(world.channels))
        world.refresh(channel)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        b, r = channel.terms.claimed_usage or (0, 0)
        if (
            escrow.settled
            or (r + 1) * world.sla.price_per_request
            > escrow.deposited - (b * world.sla.price_per_kib + 1023) // 1024
        ):
            return
        world.claim(channel, world.sign(channel, b, r + 1))


def test_a_users_rules_run_under_the_invariants() -> None:
    run_state_machine_as_test(_MeteredService, settings=QUICK)


class _OverBilling(EscrowMachine):
    """A broken service: it claims a receipt for one request more than the client
    signed for, signing it itself with the client's key it should not hold."""

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def bills_one_request_too_many(self, data: st.DataObject) -> None:
        world = self.world
        channel = data.draw(st.sampled_from(world.channels))
        world.refresh(channel)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        b, r = channel.terms.claimed_usage or (0, 0)
        extra = channel.terms.receipt(b, r + 1, nonce=escrow.latest_nonce + 1)
        if escrow.settled or extra.total_amount > escrow.deposited:
            return
        world.claim(channel, extra)  # (not through world.sign: the client never signed it)


def test_a_claim_beyond_what_was_signed_is_caught() -> None:
    with pytest.raises(WorldBroken, match=r"signed for at most|the amount of no receipt"):
        run_state_machine_as_test(_OverBilling, settings=ONE_BUG)


def test_refunds_come_only_after_the_timeout() -> None:
    world = LedgerWorld(clients=1)
    channel = world.open(0, 1_000)
    world.claim(channel, world.sign(channel, 1024, 1))
    world.close(channel, channel.client)
    with pytest.raises(ChainError, match=r"ETimeoutNotReached|timeout"):
        world.settle(channel, channel.client)
    world.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    assert world.settle(channel, channel.client).refunded == 1_000 - 15
    world.check()


class _ForgetfulReplica(GraphMachine):
    """A broken sync: a replica whose sessions read nothing (its peer's bytes are
    dropped), so it never learns the others' writes."""

    def _deliver(self, link: tuple[SyncSession, SyncSession], cut: float = 1.0) -> bool:
        moved = False
        for sender, receiver in (link, link[::-1]):
            data = sender.data_to_send()
            if data and receiver.graph is not self.replicas[0]:
                receiver.receive_data(data)
                moved = True
        return moved


def test_a_replica_that_does_not_converge_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"differs|summary"):
        run_state_machine_as_test(_ForgetfulReplica, settings=ONE_BUG)
