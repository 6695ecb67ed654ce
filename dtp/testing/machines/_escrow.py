"""A ``hypothesis.stateful`` machine of the escrow rules (docs/escrow.md §5-7) to extend.

:class:`EscrowMachine` runs a :class:`~dtp.testing.ledger_world.LedgerWorld` through
opens, top-ups, service paid by signed receipts, flawed and replayed receipts, closes,
finalizes, settlements by either side and the passing of time, and checks after every
step that

- money is conserved (the ledger's audit) and every escrow's books balance;
- no claim goes beyond a signed receipt: what the server took from an escrow is the
  amount of a receipt its client signed, never more than the most it signed for;
- a flawed or replayed receipt is refused with its error and changes nothing;
- refunds come after timeouts: the client settles a connection alone only once
  ``HALF_CLOSE_TIMEOUT_MS`` passed since its first close, and then gets back exactly what
  was not claimed; before, it is refused and nothing moves.

Extend it with rules of your own -- your service's calls on ``self.world`` -- and the
invariants hold over any mix of yours and its own::

    class MyServiceMachine(EscrowMachine):
        @precondition(lambda self: self.world.channels)
        @rule(data=st.data())
        def my_service_bills(self, data):
            channel = data.draw(st.sampled_from(self.world.channels))
            my_billing.charge(self.world, channel)   # signs with self.world.sign(...)

    TestMyService = MyServiceMachine.TestCase

Receipts your rules sign must be signed through :meth:`LedgerWorld.sign` (it notes them:
the invariant "no claim beyond a signed receipt" is checked against them). Override
:meth:`make_world` for another SLA, more clients or another ledger.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState
from dtp.ledger.receipt import fee
from dtp.testing.ledger_world import Channel, LedgerWorld
from dtp.testing.strategies._ledger_ops import STRANGER
from dtp.testing.strategies._money import flawed_receipts, possible_flaws

__all__ = ["EscrowMachine"]


class EscrowMachine(RuleBasedStateMachine):
    """The escrow rules as a state machine (see the module docs)."""

    def __init__(self) -> None:
        super().__init__()
        self.world = self.make_world()

    def make_world(self) -> LedgerWorld:
        """The world the machine runs on (override for other terms)."""
        return LedgerWorld(clients=2, funds=50_000)

    # -- helpers for rules, the machine's and yours ---------------------------------------------

    def expect_refusal(self, call: Any, error: str | None = None) -> ChainError:
        """Run ``call``, which must be refused (with ``error`` when given) and leave every
        balance and escrow as they were."""
        world = self.world
        before = (world.balances(), [world.ledger.get_escrow(c.escrow_id) for c in world.channels])
        try:
            call()
        except ChainError as exc:
            after = (
                world.balances(),
                [world.ledger.get_escrow(c.escrow_id) for c in world.channels],
            )
            assert after == before, f"{exc.name} was refused but changed the ledger"
            if error is not None:
                assert exc.name == error, (exc.name, error)
            return exc
        raise AssertionError(f"expected a refusal ({error or 'any'}), the call went through")

    def _channel(self, data: st.DataObject) -> Channel:
        return data.draw(st.sampled_from(self.world.channels), label="channel")

    def _actor(self, data: st.DataObject, channel: Channel) -> HostIdentity:
        return data.draw(
            st.sampled_from([channel.client, self.world.server, STRANGER]), label="who"
        )

    # -- rules ------------------------------------------------------------------------------------

    @rule(client=st.integers(0, 1), deposit=st.integers(0, 20_000))
    def open(self, client: int, deposit: int) -> None:
        """A client opens a connection: refused (nothing moves) beyond its balance or
        below the SLA's minimum deposit, else the deposit leaves its balance whole."""
        world = self.world
        who = world.clients[client % len(world.clients)]
        have = world.ledger.balance(who.sui_address)
        if deposit > have or deposit < world.sla.min_deposit:
            self.expect_refusal(lambda: world.open(who, deposit))
            return
        before = world.ledger.balance(who.sui_address)
        channel = world.open(who, deposit)
        assert world.ledger.balance(who.sui_address) == before - deposit
        assert world.ledger.get_escrow(channel.escrow_id).deposited == deposit

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data(), amount=st.integers(0, 5_000))
    def top_up(self, data: st.DataObject, amount: int) -> None:
        """The client adds to an escrow: refused once settled or beyond its balance."""
        world, channel = self.world, self._channel(data)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        if escrow.settled or amount > world.ledger.balance(channel.client.sui_address):
            self.expect_refusal(lambda: world.top_up(channel, amount))
            return
        world.top_up(channel, amount)
        assert world.ledger.get_escrow(channel.escrow_id).deposited == escrow.deposited + amount

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data(), kib=st.integers(0, 64), requests=st.integers(0, 8))
    def serve_and_claim(self, data: st.DataObject, kib: int, requests: int) -> None:
        """The server serves more, the client signs for it, the server claims it: paid
        exactly the difference from what was claimed before."""
        world, channel = self.world, self._channel(data)
        world.refresh(channel)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        b, r = channel.terms.claimed_usage or (0, 0)
        b, r = b + kib * 1024, r + requests
        if escrow.settled or fee(world.sla, b, r) > escrow.deposited:
            return
        receipt = world.sign(channel, b, r)
        server_before = world.ledger.balance(world.server.sui_address)
        paid = world.claim(channel, receipt)
        assert paid == receipt.total_amount - escrow.claimed
        assert world.ledger.balance(world.server.sui_address) == server_before + paid

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def claim_a_flawed_receipt(self, data: st.DataObject) -> None:
        """A receipt with one flaw is refused with the flaw's error (``EEscrowSettled``
        once settled), and changes nothing."""
        world, channel = self.world, self._channel(data)
        world.refresh(channel)
        if channel.terms.claimed_usage is None or not possible_flaws(channel.terms):
            return
        flawed = data.draw(flawed_receipts(channel.terms), label="flawed")
        settled = world.ledger.get_escrow(channel.escrow_id).settled
        expected = "EEscrowSettled" if settled else flawed.flaw.error
        self.expect_refusal(
            lambda: world.ledger.claim(world.server, channel.escrow_id, flawed.receipt), expected
        )

    @precondition(lambda self: any(c.signed for c in self.world.channels))
    @rule(data=st.data())
    def replay_a_claimed_receipt(self, data: st.DataObject) -> None:
        """A receipt claimed already is refused (``EReplayedReceipt``)."""
        world = self.world
        channel = data.draw(st.sampled_from([c for c in world.channels if c.signed]))
        escrow = world.ledger.get_escrow(channel.escrow_id)
        old = [r for r in channel.signed if r.nonce <= escrow.latest_nonce]
        if not old:
            return
        receipt = data.draw(st.sampled_from(old))
        expected = "EEscrowSettled" if escrow.settled else "EReplayedReceipt"
        self.expect_refusal(
            lambda: world.ledger.claim(world.server, channel.escrow_id, receipt), expected
        )

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def someone_else_claims(self, data: st.DataObject) -> None:
        """Only the server may claim: the client's and a stranger's claims of a valid
        receipt are refused (``ENotServer``)."""
        world, channel = self.world, self._channel(data)
        world.refresh(channel)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        b, r = channel.terms.claimed_usage or (0, 0)
        if fee(world.sla, b, r + 1) > escrow.deposited or escrow.settled:
            return
        receipt = channel.terms.receipt(b, r + 1)
        who = data.draw(st.sampled_from([channel.client, STRANGER]))
        self.expect_refusal(lambda: world.claim(channel, receipt, signer=who), "ENotServer")

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        """Anyone closes: a participant half-closes, then closes; a stranger is refused."""
        world, channel = self.world, self._channel(data)
        who = self._actor(data, channel)
        try:
            world.close(channel, who)
        except ChainError as exc:
            assert who is STRANGER or exc.name in (
                "EAlreadyHalfClosed",
                "EConnectionClosed",
            ), exc.name

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def finalize(self, data: st.DataObject) -> None:
        """A participant finalizes a half-closed connection, only once its timeout passed."""
        world, channel = self.world, self._channel(data)
        who = self._actor(data, channel)
        due = world.client_settles_at(channel)
        tc = world.ledger.get_connection(channel.connection_id)
        try:
            world.finalize(channel, who)
        except ChainError as exc:
            if who is not STRANGER and tc.state is ConnectionState.HALF_CLOSED:
                assert due is not None and world.ledger.clock_ms() < due, exc.name
            return
        assert who is not STRANGER and tc.state is ConnectionState.HALF_CLOSED
        assert due is not None and world.ledger.clock_ms() >= due

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def server_settles(self, data: st.DataObject) -> None:
        """The server settles at any time (with the latest receipt, if any is
        unclaimed): the client gets back exactly what was not claimed."""
        world, channel = self.world, self._channel(data)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        if escrow.settled:
            self.expect_refusal(lambda: world.settle(channel, world.server), "EAlreadySettled")
            return
        client_before = world.ledger.balance(channel.client.sui_address)
        latest = max(channel.signed, key=lambda r: r.nonce, default=None)
        if latest is not None and latest.nonce > escrow.latest_nonce:
            done = world.settle_with_receipt(channel, latest)
        else:
            done = world.settle(channel, world.server)
        after = world.ledger.get_escrow(channel.escrow_id)
        assert done.refunded == after.deposited - after.claimed
        assert world.ledger.balance(channel.client.sui_address) == client_before + done.refunded

    @precondition(lambda self: self.world.channels)
    @rule(data=st.data())
    def client_settles(self, data: st.DataObject) -> None:
        """Refunds come after timeouts: the client alone settles only once the
        half-close timeout passed, and then gets the escrow's whole balance."""
        world, channel = self.world, self._channel(data)
        escrow = world.ledger.get_escrow(channel.escrow_id)
        due = world.client_settles_at(channel)
        if escrow.settled or due is None or world.ledger.clock_ms() < due:
            self.expect_refusal(lambda: world.settle(channel, channel.client))
            return
        before = world.ledger.balance(channel.client.sui_address)
        done = world.settle(channel, channel.client)
        assert done.refunded == escrow.balance
        assert world.ledger.balance(channel.client.sui_address) == before + escrow.balance

    @rule(ms=st.sampled_from([1, 1_000, HALF_CLOSE_TIMEOUT_MS - 1, HALF_CLOSE_TIMEOUT_MS]))
    def time_passes(self, ms: int) -> None:
        """The ledger's clock moves on (to the half-close timeout and past it, too)."""
        self.world.advance_clock(ms)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def the_rules_hold(self) -> None:
        """:meth:`LedgerWorld.check`: conservation, balanced books, no claim beyond a
        signed receipt, settled escrows empty and refunded exactly."""
        self.world.check()

    def teardown(self) -> None:
        close = getattr(self.world.ledger, "close", None)
        if close is not None:
            close()
