"""The escrow state machine of tests/ledger/escrow_machine.py, extended with the payment
models (docs/escrow.md §13-16): subscriptions (subscribe, renew, claim, withdraw, refund,
unmetered connections, and their end by anyone once the subscription is over), a sponsor
pool of two lanes (fund and withdraw, of the pool or of one lane; pledge limit, sponsored
connections through either lane, reimbursements, the host's authority changing and
back), ticket sales (buy, go on air, cancel, refund) and retained records (terms
published, retired and replaced; send, confirm, delete, and the sender's reclaim of an
unconfirmed record after its deadline); and broadcasts (docs/escrow.md §9: contribute,
slots paid as the clock moves, transmit and heartbeat, claim, cancel, withdraw, leave).

Every call's outcome (error name or the exact balance moves) is predicted from the rules
and compared, as in the escrow machine; failed calls must leave the ledger unchanged.
Invariants on top of the escrow ones: MIST conserved with every new holder counted, a
subscription holds exactly its unearned epochs, each lane's pledges are covered by its
own funds and equal its unreimbursed pledges (a reimbursed one leaves no entry), each
within the pledge limit in force at its open, a sale holds
exactly the price of its unrefunded tickets, a record holds its storage deposit and has a
deadline at most twice the longest retention; the escrow machine's cap invariants (no
epoch's claims exceed the cap) cover the unmetered and sponsored connections too, and a
reservation of 0 never fails; a broadcast holds what its model says
(tests/ledger/broadcast_model.py: ``pool + earned + claimed + refunded`` is what came in),
every listener could take back its fair value (what it paid in less its part of the slots
paid since: never a slot that ended before it paid) less a MIST of rounding, and every
contribution is back with its listener or earned within the idle bound once the
broadcaster stops showing it is live.
And every deposit is reachable by someone after its deadline: a rule lets every deadline
pass, then each record's sender takes its deposit back, anyone ends the connections of
subscriptions that are over (nothing owed), every client settles its connections after
the half-close timeout and the provider claims every subscription's earnings -- each of
those must succeed, and afterwards no record, escrow or subscription holds a MIST.

tests/ledger/test_economics_on_sui.py runs the same machine on SuiLedger over the node
stand-in, and compares its calls' outcomes with LocalLedger's for the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from dtp.identity.keys import HostIdentity
from dtp.ledger._economics import MAX_RETENTION_MS
from dtp.ledger._objects import ConnectionState
from dtp.testing.identities import identity
from tests.ledger.broadcast_model import BroadcastModel
from tests.ledger.escrow_machine import (
    CLIENTS,
    MALLORY,
    SERVER,
    TIMEOUT,
    Conn,
    LedgerMachine,
)

PRICE = 50  # per epoch
SHARE_BPS = 5_000
MAX_PLEDGE = 600  # the pool's limit per connection at first: deposits above 1200 hit it
LANES = 2  # the pool's lanes, each pledging from its own funds
HEIR = identity(5)  # the host's authority for a while (change_authority)
STORAGE_PRICE = 2  # per byte
RETENTION_MS = 1_000
TICKET = 30
BCAST_PRICE = 40  # per slot
BCAST_SLOT_MS = 1_000


@dataclass
class Sale:
    id: str
    min_tickets: int
    max_tickets: int


@dataclass
class Record:
    id: str
    sender: HostIdentity
    receiver: HostIdentity
    deposit: int


class EconomicsMachine(LedgerMachine):
    SIGNERS = (*LedgerMachine.SIGNERS, HEIR)

    def __init__(self) -> None:
        super().__init__()
        ledger = self.ledger
        ledger.faucet(SERVER.sui_address, 7_500)
        self.offer = ledger.create_subscription_offer(SERVER, self.host, 7, PRICE, 1)
        self.pool = ledger.create_sponsor_pool(
            SERVER, self.host, 7, SHARE_BPS, max_pledge=MAX_PLEDGE, lanes=LANES
        )
        self.lanes = ledger.get_sponsor_pool(self.pool).lanes
        ledger.fund_sponsor_pool(SERVER, self.pool, 3_000)  # 1500 in each lane
        self.terms = ledger.create_retention_terms(SERVER, self.host, 7, RETENTION_MS, 2)
        self.retired_terms: list[str] = []  # retired by the provider: sends refuse them
        self.subs: list[tuple[str, HostIdentity]] = []
        self.offers = [self.offer]
        self.free: list[Conn] = []  # connections opened with a subscription (SLA all zero)
        # sponsored connection -> (its lane, the pledge), until reimbursed
        self.pledges: dict[str, tuple[str, int]] = {}
        self.reimbursed: set[str] = set()
        self.sales: list[Sale] = []
        self.pipes: dict[tuple[str, str], str] = {}
        self.records: list[Record] = []
        self.bcasts: list[BroadcastModel] = []
        self.new_broadcast()

    # -- subscriptions ----------------------------------------------------------------------

    def _offer_of(self, sub_id: str) -> Any:
        return self.ledger.get_subscription_offer(self.ledger.get_subscription(sub_id).offer)

    def _earned(self, sub_id: str) -> int:
        sub = self.ledger.get_subscription(sub_id)
        offer = self._offer_of(sub_id)
        now = self.ledger.epoch()
        if offer.withdrawn:
            now = min(now, offer.withdrawn_epoch)
        end = min(now + 1, sub.expires_epoch)
        return max(0, end - sub.start_epoch)

    @rule(who=st.sampled_from(CLIENTS), epochs=st.integers(0, 3))
    def subscribe(self, who: HostIdentity, epochs: int) -> None:
        offer = self.ledger.get_subscription_offer(self.offer)
        cost = epochs * PRICE
        error = (
            "InsufficientCoinBalance"
            if cost > self.ledger.balance(who.sui_address)
            else "EOfferWithdrawn"
            if offer.withdrawn
            else "EInvalidEpochs"
            if epochs == 0
            else None
        )
        result = self.expect(
            lambda: self.ledger.subscribe(who, self.offer, epochs), {who.sui_address: -cost}, error
        )
        if error is None:
            self.subs.append((result, who))

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), epochs=st.integers(0, 2))
    def renew(self, data: st.DataObject, epochs: int) -> None:
        sub_id, holder = data.draw(st.sampled_from(self.subs))
        who = data.draw(st.sampled_from([holder, *CLIENTS]))
        sub = self.ledger.get_subscription(sub_id)
        offer = self._offer_of(sub_id)
        cost = epochs * PRICE
        error = (
            "InsufficientCoinBalance"
            if cost > self.ledger.balance(who.sui_address)
            else "ENotHolder"
            if who is not holder
            else "EOfferWithdrawn"
            if offer.withdrawn
            else "EInvalidEpochs"
            if epochs == 0
            else None
        )
        changes = {who.sui_address: -cost}
        if error is None and sub.expires_epoch <= self.ledger.epoch():
            due = sub.expires_epoch - sub.start_epoch - sub.claimed_epochs
            changes[SERVER.sui_address] = due * PRICE
        result = self.expect(
            lambda: self.ledger.renew_subscription(who, sub_id, epochs), changes, error
        )
        if error is None:
            assert result == max(sub.expires_epoch, self.ledger.epoch()) + epochs

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def claim_subscription(self, data: st.DataObject) -> None:
        sub_id, holder = data.draw(st.sampled_from(self.subs))
        who = data.draw(st.sampled_from([SERVER, SERVER, holder]))
        sub = self.ledger.get_subscription(sub_id)
        due = (self._earned(sub_id) - sub.claimed_epochs) * PRICE
        error = None if who is SERVER else "ENotProvider"
        result = self.expect(
            lambda: self.ledger.claim_subscription(who, sub_id),
            {SERVER.sui_address: due} if error is None else {},
            error,
        )
        if error is None:
            assert result == due

    @rule(who=st.sampled_from([SERVER, *CLIENTS]))
    def withdraw_offer(self, who: HostIdentity) -> None:
        offer = self.ledger.get_subscription_offer(self.offer)
        error = (
            "ENotProvider" if who is not SERVER else "EOfferWithdrawn" if offer.withdrawn else None
        )
        self.expect(lambda: self.ledger.withdraw_subscription_offer(who, self.offer), {}, error)
        if error is None:
            # The provider comes back with a new offer; the old subscriptions stay on the old.
            self.offer = self.ledger.create_subscription_offer(SERVER, self.host, 7, PRICE, 1)

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def refund_subscription(self, data: st.DataObject) -> None:
        sub_id, holder = data.draw(st.sampled_from(self.subs))
        who = data.draw(st.sampled_from([holder, *CLIENTS]))
        sub = self.ledger.get_subscription(sub_id)
        offer = self._offer_of(sub_id)
        error = (
            "ENotHolder"
            if who is not holder
            else "ENotWithdrawn"
            if not offer.withdrawn
            else "EAlreadyRefunded"
            if sub.refunded
            else None
        )
        cut = max(sub.start_epoch, min(sub.expires_epoch, offer.withdrawn_epoch + 1))
        amount = (sub.expires_epoch - cut) * PRICE
        result = self.expect(
            lambda: self.ledger.refund_subscription(who, sub_id),
            {who.sui_address: amount} if error is None else {},
            error,
        )
        if error is None:
            assert result == amount

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def open_subscribed(self, data: st.DataObject) -> None:
        sub_id, holder = data.draw(st.sampled_from(self.subs))
        who = data.draw(st.sampled_from([holder, *CLIENTS]))
        sub = self.ledger.get_subscription(sub_id)
        offer = self._offer_of(sub_id)
        cap = self.caps[who.sui_address]
        error = (
            "ENotHolder"
            if who is not holder
            else "EOfferWithdrawn"
            if offer.withdrawn
            else "ESubscriptionExpired"
            if not sub.is_live(self.ledger.epoch())
            # (the open reserves its deposit of 0, which no cap refuses, however far a
            # lowering took its limit below what is outstanding: docs/escrow.md §4)
            else None
        )
        result = self.expect(
            lambda: self.ledger.open_subscribed_connection(who, sub_id, cap), {}, error
        )
        if error is None:
            self.free.append(self.track(result.connection_id, result.escrow_id, who))
            self.reserve(result.connection_id, cap, 0, top_up=False)

    @precondition(lambda self: self.free)
    @rule(data=st.data(), more=st.integers(0, 100_000), metered=st.booleans())
    def use_free_connection(self, data: st.DataObject, more: int, metered: bool) -> None:
        """A receipt on an unmetered connection: for 0 MIST it is claimable (pays
        nothing), any other amount does not match the connection's fee."""
        conn = data.draw(st.sampled_from(self.free))
        e = self.ledger.get_escrow(conn.escrow)
        b, r = conn.usage[0] + more, conn.usage[1] + 1
        receipt = self.receipt(conn, b, r, 1 if metered else 0)
        error = "EEscrowSettled" if e.settled else "EAmountMismatch" if metered else None
        self.expect(lambda: self.ledger.claim(SERVER, conn.escrow, receipt), {}, error)
        if error is None:
            conn.usage = (b, r)
            self.claimed(conn.id, conn.cap, 0)

    @precondition(lambda self: any(not self.ledger.get_escrow(c.escrow).settled for c in self.free))
    @rule(data=st.data())
    def end_free_connection(self, data: st.DataObject) -> None:
        live = [c for c in self.free if not self.ledger.get_escrow(c.escrow).settled]
        conn = data.draw(st.sampled_from(live))
        if self.ledger.get_connection(conn.id).state is ConnectionState.OPEN:
            self.ledger.close_connection(conn.client, conn.id)
        result = self.expect(lambda: self.ledger.settle(SERVER, conn.id), {})
        assert result.refunded == 0 and result.claimed == 0
        self.release(conn.id, conn.cap, 0)

    @rule(who=st.sampled_from(CLIENTS), epochs=st.integers(1, 2))
    def subscribe_and_open(self, who: HostIdentity, epochs: int) -> None:
        """A holder subscribes and opens a connection with it at once (the path the
        SDK's connect takes), so that subscribed connections are common enough for
        their end to be explored."""
        offer = self.ledger.get_subscription_offer(self.offer)
        cost = epochs * PRICE
        cap = self.caps[who.sui_address]
        if offer.withdrawn or cost > self.ledger.balance(who.sui_address) or self.room(cap) < 0:
            return  # (the refusals are subscribe's and open_subscribed's to explore)
        sub_id = self.expect(
            lambda: self.ledger.subscribe(who, self.offer, epochs), {who.sui_address: -cost}
        )
        self.subs.append((sub_id, who))
        opened = self.expect(lambda: self.ledger.open_subscribed_connection(who, sub_id, cap), {})
        assert self.ledger.get_connection(opened.connection_id).subscription == sub_id
        self.free.append(self.track(opened.connection_id, opened.escrow_id, who))
        self.reserve(opened.connection_id, cap, 0, top_up=False)

    def _sub_of(self, conn: Conn) -> str:
        sub = self.ledger.get_connection(conn.id).subscription
        assert sub is not None, "a subscribed connection records its subscription"
        return sub

    def _over(self, sub_id: str) -> bool:
        sub = self.ledger.get_subscription(sub_id)
        return self._offer_of(sub_id).withdrawn or not sub.is_live(self.ledger.epoch())

    @precondition(lambda self: self.free)
    @rule(data=st.data(), who=st.sampled_from([MALLORY, SERVER, *CLIENTS]), later=st.booleans())
    def end_subscribed(self, data: st.DataObject, who: HostIdentity, later: bool) -> None:
        """Anyone ends a subscribed connection once its subscription is over (``later``:
        an epoch passes first): closed and settled at once, its deposit back to the
        client, nothing owed."""
        if later:
            self.ledger.advance_epoch()
        live = [c for c in self.free if not self.ledger.get_escrow(c.escrow).settled]
        conn = data.draw(st.sampled_from(live or self.free))
        e = self.ledger.get_escrow(conn.escrow)
        error = (
            "ESubscriptionLive"
            if not self._over(self._sub_of(conn))
            else "EAlreadySettled"
            if e.settled
            else None
        )
        changes = {conn.client.sui_address: e.balance} if error is None else {}
        result = self.expect(
            lambda: self.ledger.end_subscribed_connection(who, conn.id), changes, error
        )
        if error is None:
            assert result == e.balance
            tc = self.ledger.get_connection(conn.id)
            assert tc.settled and tc.state is ConnectionState.CLOSED
            self.release(conn.id, conn.cap, e.balance)

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def end_metered_through_subscription(self, data: st.DataObject) -> None:
        """A metered connection has no subscription to be ended by: refused, even when a
        subscription of its client's is named and over."""
        conn = data.draw(st.sampled_from(self.conns))
        named = data.draw(st.sampled_from([None, *[s for s, _ in self.subs]]))
        self.expect(
            lambda: self.ledger.end_subscribed_connection(MALLORY, conn.id, named),
            {},
            "ENotSubscribed",
        )

    # -- sponsoring -------------------------------------------------------------------------

    def conns_of(self, cap_id: str) -> list[Conn]:
        return [c for c in self.conns + self.free if c.cap == cap_id]

    def lane_available(self) -> dict[str, int]:
        """What each lane holds unpledged, read from the ledger."""
        return {lane.id: lane.available for lane in self.ledger.get_sponsor_lanes(self.pool)}

    def lane_reserved(self, lane: str) -> int:
        """What the model says ``lane`` has pledged."""
        return sum(amount for one, amount in self.pledges.values() if one == lane)

    @rule(data=st.data(), who=st.sampled_from(CLIENTS), deposit=st.integers(0, 3_000))
    def open_sponsored(self, data: st.DataObject, who: HostIdentity, deposit: int) -> None:
        pool = self.ledger.get_sponsor_pool(self.pool)
        # bounded per connection: one large deposit cannot lock the whole pool
        pledge = min(deposit * SHARE_BPS // 10_000, pool.max_pledge)
        assert pool.pledge_for(deposit) == pledge
        cap = self.caps[who.sui_address]
        available = self.lane_available()
        # named: the lane a client picks by default follows its cap's ID, which differs
        # between LocalLedger and the stand-in, whose runs are compared call by call
        # (tests/ledger/test_sponsor_lanes.py tests that choice)
        lane = data.draw(st.sampled_from(self.lanes))
        error = (
            "InsufficientCoinBalance"
            if deposit > self.ledger.balance(who.sui_address)
            else "ESponsorUnfunded"
            if pledge > available[lane]
            else "EInsufficientDeposit"
            if deposit < 100
            else "ESpendingCapExceeded"
            if self.refused_reservation(cap, deposit)
            else None
        )
        result = self.expect(
            lambda: self.ledger.open_sponsored_connection(who, self.pool, cap, deposit, lane=lane),
            {who.sui_address: -deposit},
            error,
        )
        if error is None:
            self.conns.append(self.track(result.connection_id, result.escrow_id, who))
            self.reserve(result.connection_id, cap, deposit, top_up=False)
            self.pledges[result.connection_id] = (lane, pledge)
            found = self.ledger.get_sponsor_pledge(self.pool, result.connection_id)
            assert found is not None and (found.lane, found.amount) == (lane, pledge)
            assert self.lane_available()[lane] == available[lane] - pledge

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), who=st.sampled_from([SERVER, MALLORY, *CLIENTS]))
    def reimburse(self, data: st.DataObject, who: HostIdentity) -> None:
        sponsored = [c for c in self.conns if c.id in self.pledges or c.id in self.reimbursed]
        pick_sponsored = sponsored and data.draw(st.integers(0, 4)) > 0
        conn = data.draw(st.sampled_from(sponsored if pick_sponsored else self.conns))
        if conn.id in self.pledges and data.draw(st.booleans()):
            # End it first: the client closes, the server settles (the rest goes back).
            if self.ledger.get_connection(conn.id).state is ConnectionState.OPEN:
                self.ledger.close_connection(conn.client, conn.id)
            e = self.ledger.get_escrow(conn.escrow)
            if not e.settled:
                self.expect(
                    lambda: self.ledger.settle(SERVER, conn.id),
                    {conn.client.sui_address: e.balance},
                )
                self.release(conn.id, conn.cap, e.balance)
        tc = self.ledger.get_connection(conn.id)
        e = self.ledger.get_escrow(conn.escrow)
        # through the lane that holds the pledge (by default), or one named
        named = data.draw(st.sampled_from([None, *self.lanes]))
        lane = self.pledges[conn.id][0] if conn.id in self.pledges else None
        error = (
            # never sponsored, reimbursed already (its pledge is gone) or not this lane's
            "ENotSponsored"
            if lane is None or named not in (None, lane)
            else "ENotSettled"
            if not tc.settled
            else None
        )
        amount = 0
        if error is None:
            amount = min(e.claimed * SHARE_BPS // 10_000, self.pledges[conn.id][1])
        result = self.expect(
            lambda: self.ledger.reimburse(who, self.pool, conn.id, lane=named),
            {conn.client.sui_address: amount},
            error,
        )
        if error is None:
            assert result == amount
            del self.pledges[conn.id]
            self.reimbursed.add(conn.id)
            # the pledge's entry is removed with it: nothing of it is left in the lane
            assert self.ledger.get_sponsor_pledge(self.pool, conn.id) is None

    @rule(
        data=st.data(),
        amount=st.integers(0, 2_000),
        withdraw=st.booleans(),
    )
    def pool_money(self, data: st.DataObject, amount: int, withdraw: bool) -> None:
        """Money in and out of the whole pool (spread over its lanes, or taken from them)
        or of one lane."""
        available = self.lane_available()
        named = data.draw(st.sampled_from([None, *self.lanes]))
        if withdraw:
            error = (
                "EZeroAmount"
                if amount == 0
                else "ESponsorUnfunded"
                if amount > (sum(available.values()) if named is None else available[named])
                else None
            )
            call: Any = lambda: self.ledger.withdraw_sponsor_pool(  # noqa: E731
                SERVER, self.pool, amount, lane=named
            )
            changes = {SERVER.sui_address: amount}
        else:
            error = (
                "InsufficientCoinBalance"
                if amount > self.ledger.balance(SERVER.sui_address)
                else "EZeroAmount"
                if amount == 0
                else None
            )
            call = lambda: self.ledger.fund_sponsor_pool(  # noqa: E731
                SERVER, self.pool, amount, lane=named
            )
            changes = {SERVER.sui_address: -amount}
        self.expect(call, changes if error is None else {}, error)
        if error is None and named is None:
            # spread to (or taken from) the lanes towards one level: the lanes it reached
            # end at most a MIST apart
            after = self.lane_available()
            moved = {one: abs(after[one] - available[one]) for one in self.lanes}
            assert sum(moved.values()) == amount
            touched = [after[one] for one in self.lanes if moved[one]]
            assert not touched or max(touched) - min(touched) <= 1

    @rule(who=st.sampled_from([SERVER, SERVER, *CLIENTS]), limit=st.integers(0, 2_000))
    def set_max_pledge(self, who: HostIdentity, limit: int) -> None:
        """The provider bounds the pledges of connections opened from now on (0: none);
        the pledges made stay as they were."""
        error = None if who is SERVER else "ENotProvider"
        self.expect(lambda: self.ledger.set_sponsor_max_pledge(who, self.pool, limit), {}, error)
        if error is None:
            assert self.ledger.get_sponsor_pool(self.pool).max_pledge == limit

    @rule(data=st.data(), deposit=st.integers(100, 1_000), amount=st.integers(1, 500))
    def change_authority(self, data: st.DataObject, deposit: int, amount: int) -> None:
        """The host changes hands and back. Meanwhile the pool sponsors no new connection
        (their fees would go to the heir), stays its provider's to withdraw and to bound
        (not the heir's), and its pledges still bind it; the subscription offer sells
        nothing (no subscribe, renew or open), and anyone may withdraw it, which ends its
        earning at this epoch (the provider comes back with a new offer)."""
        ledger, client = self.ledger, data.draw(st.sampled_from(CLIENTS))
        ledger.set_authority(SERVER, self.host, HEIR.sui_address)
        withdrawn = False
        try:
            self._offer_after_a_sale(data, client)
            if data.draw(st.booleans()):
                by = data.draw(st.sampled_from([HEIR, MALLORY, *CLIENTS]))
                self.expect(lambda: ledger.withdraw_subscription_offer(by, self.offer), {})
                offer = ledger.get_subscription_offer(self.offer)
                assert offer.withdrawn and offer.withdrawn_epoch == ledger.epoch()
                withdrawn = True
            cap = self.caps[client.sui_address]
            self.expect(
                lambda: ledger.open_sponsored_connection(client, self.pool, cap, deposit),
                {},
                "InsufficientCoinBalance"
                if deposit > ledger.balance(client.sui_address)
                else "EProviderChanged",
            )
            self.expect(
                lambda: ledger.withdraw_sponsor_pool(HEIR, self.pool, amount), {}, "ENotProvider"
            )
            self.expect(
                lambda: ledger.set_sponsor_max_pledge(HEIR, self.pool, amount), {}, "ENotProvider"
            )
            error = "ESponsorUnfunded" if amount > sum(self.lane_available().values()) else None
            self.expect(
                lambda: ledger.withdraw_sponsor_pool(SERVER, self.pool, amount),
                {SERVER.sui_address: amount} if error is None else {},
                error,
            )
            reserved = sum(lane.reserved for lane in ledger.get_sponsor_lanes(self.pool))
            assert reserved == sum(amount for _, amount in self.pledges.values())
        finally:
            ledger.set_authority(HEIR, self.host, SERVER.sui_address)
        self.host_version = ledger.object_ref(self.host).version  # (written by the change)
        if withdrawn:
            self.offer = ledger.create_subscription_offer(SERVER, self.host, 7, PRICE, 1)

    def _offer_after_a_sale(self, data: st.DataObject, client: HostIdentity) -> None:
        """With the host another's, the offers refuse to sell: subscribe, renew and open
        abort (``EProviderChanged``, after the checks that come before it)."""
        ledger = self.ledger
        cost = PRICE
        self.expect(
            lambda: ledger.subscribe(client, self.offer, 1),
            {},
            "InsufficientCoinBalance"
            if cost > ledger.balance(client.sui_address)
            else "EProviderChanged",
        )
        if not self.subs:
            return
        sub_id, holder = data.draw(st.sampled_from(self.subs))
        withdrawn = self._offer_of(sub_id).withdrawn
        after_holder = "EOfferWithdrawn" if withdrawn else "EProviderChanged"
        self.expect(
            lambda: ledger.renew_subscription(holder, sub_id, 1),
            {},
            "InsufficientCoinBalance"
            if cost > ledger.balance(holder.sui_address)
            else after_holder,
        )
        cap = self.caps[holder.sui_address]
        self.expect(
            lambda: ledger.open_subscribed_connection(holder, sub_id, cap), {}, after_holder
        )

    # -- tickets -----------------------------------------------------------------------------

    @rule(min_tickets=st.integers(1, 3), max_tickets=st.sampled_from([0, 4]))
    def create_sale(self, min_tickets: int, max_tickets: int) -> None:
        deadline = self.ledger.clock_ms() + 2_000
        sale = self.ledger.create_ticket_sale(
            SERVER, "show", TICKET, min_tickets, max_tickets, deadline
        )
        self.sales.append(Sale(sale, min_tickets, max_tickets))

    @precondition(lambda self: self.sales)
    @rule(data=st.data(), who=st.sampled_from(CLIENTS), count=st.integers(0, 3))
    def buy(self, data: st.DataObject, who: HostIdentity, count: int) -> None:
        spec = data.draw(st.sampled_from(self.sales[-2:]))
        sale = self.ledger.get_ticket_sale(spec.id)
        cost = count * TICKET
        error = (
            "InsufficientCoinBalance"
            if cost > self.ledger.balance(who.sui_address)
            else "ECancelled"
            if sale.cancelled
            else "EAlreadyOnAir"
            if sale.on_air
            else "ESaleClosed"
            if self.ledger.clock_ms() > sale.deadline_ms
            else "EWrongPayment"
            if count == 0
            else "ESoldOut"
            if sale.max_tickets and sale.sold + count > sale.max_tickets
            else None
        )
        self.expect(
            lambda: self.ledger.buy_tickets(who, spec.id, count), {who.sui_address: -cost}, error
        )

    @precondition(lambda self: self.sales)
    @rule(data=st.data(), op=st.sampled_from(["go_on_air", "cancel"]))
    def organize(self, data: st.DataObject, op: str) -> None:
        spec = data.draw(st.sampled_from(self.sales))
        who = data.draw(st.sampled_from([SERVER, SERVER, MALLORY]))
        sale = self.ledger.get_ticket_sale(spec.id)
        late = self.ledger.clock_ms() > sale.deadline_ms
        error = (
            "ENotOrganizer"
            if who is not SERVER
            else "ECancelled"
            if sale.cancelled
            else "EAlreadyOnAir"
            if sale.on_air
            else None
        )
        if op == "go_on_air" and error is None:
            error = (
                "ESaleClosed"
                if late
                else "EThresholdNotMet"
                if sale.sold < sale.min_tickets
                else None
            )
        if op == "go_on_air":
            changes = {SERVER.sui_address: sale.funds} if error is None else {}
            result = self.expect(lambda: self.ledger.go_on_air(who, spec.id), changes, error)
            if error is None:
                assert result == sale.sold * TICKET
        else:
            self.expect(lambda: self.ledger.cancel_ticket_sale(who, spec.id), {}, error)

    @precondition(lambda self: self.sales)
    @rule(data=st.data(), who=st.sampled_from(CLIENTS))
    def refund_tickets(self, data: st.DataObject, who: HostIdentity) -> None:
        spec = data.draw(st.sampled_from(self.sales[-2:]))
        sale = self.ledger.get_ticket_sale(spec.id)
        missed = not sale.on_air and self.ledger.clock_ms() > sale.deadline_ms
        held = sale.holders.get(who.sui_address, 0)
        error = (
            "ERefundNotOpen"
            if not (sale.cancelled or missed)
            else "ENoTickets"
            if held == 0
            else None
        )
        self.expect(
            lambda: self.ledger.refund_tickets(who, spec.id),
            {who.sui_address: held * TICKET} if error is None else {},
            error,
        )

    # -- retention ---------------------------------------------------------------------------

    @rule(
        op=st.sampled_from(["retire", "replace", "create"]),
        who=st.sampled_from([SERVER, SERVER, MALLORY]),
        retention=st.sampled_from([0, RETENTION_MS, MAX_RETENTION_MS, MAX_RETENTION_MS + 1]),
    )
    def change_terms(self, op: str, who: HostIdentity, retention: int) -> None:
        """The provider takes its terms back, replaces them, or publishes new ones (only
        it may; at most MAX_RETENTION_MS): a send picks among them (``send_retained``)."""
        terms = self.ledger.get_retention_terms(self.terms)
        if op == "create":
            error = (
                "ENotProvider"
                if who is not SERVER
                else "EInvalidTerms"
                if retention > MAX_RETENTION_MS
                else None
            )
            call: Any = lambda: self.ledger.create_retention_terms(  # noqa: E731
                who, self.host, 7, retention, STORAGE_PRICE
            )
        else:
            error = (
                "ENotProvider"
                if who is not SERVER
                else "ETermsRetired"
                if terms.retired
                else "EInvalidTerms"
                if op == "replace" and retention > MAX_RETENTION_MS
                else None
            )
            call = (
                (lambda: self.ledger.retire_retention_terms(who, self.terms))
                if op == "retire"
                else (
                    lambda: self.ledger.replace_retention_terms(
                        who, self.terms, retention, STORAGE_PRICE
                    )
                )
            )
        result = self.expect(call, {}, error)
        if error is None:
            if op != "create":
                assert self.ledger.get_retention_terms(self.terms).retired
                self.retired_terms.append(self.terms)
            if op != "retire":
                assert self.ledger.get_retention_terms(result).retention_ms == retention
                self.terms = result

    @precondition(lambda self: self.conns or self.free)
    @rule(data=st.data(), size=st.integers(0, 40))
    def send_retained(self, data: st.DataObject, size: int) -> None:
        conn = data.draw(st.sampled_from(self.conns + self.free))
        sender = data.draw(st.sampled_from([conn.client, SERVER]))
        receiver = SERVER if sender is conn.client else conn.client
        key = (conn.id, sender.sui_address)
        state = self.ledger.get_connection(conn.id).state
        if key not in self.pipes:
            if state is ConnectionState.CLOSED:
                return
            self.pipes[key] = self.ledger.create_pipe(sender, conn.id, 1)
        terms_id = data.draw(st.sampled_from([self.terms, self.terms, *self.retired_terms[-2:]]))
        terms = self.ledger.get_retention_terms(terms_id)
        deposit = size * terms.storage_price_per_byte
        error = (
            "InsufficientCoinBalance"
            if deposit > self.ledger.balance(sender.sui_address)
            # a record is kept only on an Open connection, under live terms
            else "EConnectionNotOpen"
            if state is not ConnectionState.OPEN
            else "ETermsRetired"
            if terms.retired
            else None
        )
        payload = bytes(range(size))
        result = self.expect(
            lambda: self.ledger.send_retained(sender, self.pipes[key], terms_id, 0, payload),
            {sender.sui_address: -deposit},
            error,
        )
        if error is None:
            record = self.ledger.get_retained_record(result)
            assert record.retention_ms == terms.retention_ms
            assert record.reclaim_after_ms == record.stored_at_ms + 2 * terms.retention_ms
            self.records.append(Record(result, sender, receiver, deposit))

    @precondition(lambda self: self.records)
    @rule(
        data=st.data(),
        op=st.sampled_from(["confirm", "delete"]),
        by_owner=st.sampled_from([True, True, True, False]),
    )
    def handle_record(self, data: st.DataObject, op: str, by_owner: bool) -> None:
        record = data.draw(st.sampled_from(self.records))
        r = self.ledger.get_retained_record(record.id)
        if op == "confirm":
            who = record.receiver if by_owner else record.sender
            error = (
                "ENotReceiver"
                if who is not record.receiver
                else "EAlreadyConsumed"
                if r.consumed
                else None
            )
            self.expect(lambda: self.ledger.confirm_consumed(who, record.id), {}, error)
            return
        who = record.sender if by_owner else record.receiver
        now = self.ledger.clock_ms()
        error = (
            "ENotSender"
            if who is not record.sender
            # unconfirmed, the record waits out twice its retention time, then the
            # sender takes its deposit back anyway
            else "ENotConsumed"
            if not r.consumed and now < r.reclaim_after_ms
            else "ERetentionNotElapsed"
            if now < r.delete_after_ms
            else None
        )
        assert (error is None) == (who is record.sender and r.deletable_at(now))
        result = self.expect(
            lambda: self.ledger.delete_retained(who, record.id),
            {who.sui_address: r.deposit} if error is None else {},
            error,
        )
        if error is None:
            assert result == record.deposit
            self.records.remove(record)

    # -- broadcasts --------------------------------------------------------------------------

    def new_broadcast(self) -> None:
        b_id = self.ledger.create_broadcast(SERVER, "econ", BCAST_PRICE, BCAST_SLOT_MS)
        now = self.ledger.clock_ms()
        self.bcasts.append(BroadcastModel(b_id, SERVER, BCAST_PRICE, BCAST_SLOT_MS, now))

    @property
    def bcast(self) -> BroadcastModel:
        """The broadcast the rules act on (a cancelled one is followed by a new one)."""
        return self.bcasts[-1]

    @rule(who=st.sampled_from(CLIENTS), amount=st.sampled_from([0, 1, 39, 40, 41, 120, 300]))
    def contribute(self, who: HostIdentity, amount: int) -> None:
        m, now = self.bcast, self.ledger.clock_ms()
        error = (
            "InsufficientCoinBalance"
            if amount > self.ledger.balance(who.sui_address)
            else "EBroadcastCancelled"
            if m.cancelled
            else "EZeroAmount"
            if amount == 0
            else "EContributionTooSmall"
            if m.minted(amount, now) == 0
            else None
        )
        self.expect(
            lambda: self.ledger.broadcast_contribute(who, m.id, amount),
            {who.sui_address: -amount},
            error,
        )
        if error is None:
            m.contribute(who.sui_address, amount, now)

    @rule(who=st.sampled_from([SERVER, SERVER, MALLORY]), heartbeat=st.booleans())
    def transmit(self, who: HostIdentity, heartbeat: bool) -> None:
        m, now = self.bcast, self.ledger.clock_ms()
        error = (
            "ENotBroadcaster"
            if who is not SERVER
            else "EBroadcastCancelled"
            if m.cancelled
            else "ENotOnAir"
            if not m.on_air(now)
            else None
        )
        if heartbeat:
            call: Any = lambda: self.ledger.broadcast_heartbeat(who, m.id)  # noqa: E731
        else:
            call = lambda: self.ledger.broadcast_transmit(who, m.id, b"news")  # noqa: E731
        self.expect(call, {}, error)
        if error is None:
            m.accrue(now)
            m.last_live_ms = now
            m.next_seq += not heartbeat

    @rule(who=st.sampled_from([SERVER, SERVER, MALLORY]), old=st.booleans())
    def claim_broadcast(self, who: HostIdentity, old: bool) -> None:
        m = self.bcasts[0] if old else self.bcast
        error = None if who is SERVER else "ENotBroadcaster"
        if error is None:
            m.accrue(self.ledger.clock_ms())
        due = m.earned if error is None else 0
        result = self.expect(
            lambda: self.ledger.broadcast_claim(who, m.id), {who.sui_address: due}, error
        )
        if error is None:
            assert result == due
            m.claimed += due
            m.earned = 0

    @rule(who=st.sampled_from([SERVER, MALLORY]), now=st.integers(0, 1))
    def cancel_broadcast(self, who: HostIdentity, now: int) -> None:
        if now:
            return  # (most times not: a cancel ends what the other rules exercise)
        m = self.bcast
        error = "ENotBroadcaster" if who is not SERVER else None
        self.expect(lambda: self.ledger.broadcast_cancel(who, m.id), {}, error)
        if error is None:
            m.accrue(self.ledger.clock_ms())
            m.cancelled = True
            self.new_broadcast()

    @rule(data=st.data(), leave=st.booleans())
    def take_back(self, data: st.DataObject, leave: bool) -> None:
        """A listener (or not) withdraws from a cancelled broadcast, or leaves the live
        one: refused until it is idle."""
        m = data.draw(st.sampled_from(self.bcasts[-2:]))
        holders = [p for p in CLIENTS if p.sui_address in m.stakes]
        who = data.draw(st.sampled_from([*holders, *holders, *CLIENTS, MALLORY]))
        self._take_back(m, who, leave)

    @rule(data=st.data())
    def everyone_leaves_when_idle(self, data: st.DataObject) -> None:
        """Nothing stays locked: once the broadcaster has shown no sign of life for the
        idle bound, every listener leaves, and the pool is all back with them or earned."""
        m = self.bcast
        self.ledger.set_clock(max(self.ledger.clock_ms(), m.last_live_ms + m.idle_ms))
        for address in data.draw(st.permutations(sorted(m.stakes))):
            who = next(p for p in CLIENTS if p.sui_address == address)
            self._take_back(m, who, leave=True)
        assert m.pool == 0 and not m.stakes

    def _take_back(self, m: BroadcastModel, who: HostIdentity, leave: bool) -> None:
        now = self.ledger.clock_ms()
        if leave:
            error = (
                "EBroadcastCancelled"
                if m.cancelled
                else "ENoContribution"
                if who.sui_address not in m.stakes
                else "EBroadcastLive"
                if not m.idle(now)
                else None
            )
            call: Any = lambda: self.ledger.broadcast_leave(who, m.id)  # noqa: E731
        else:
            error = (
                "ENotCancelled"
                if not m.cancelled
                else "ENoContribution"
                if who.sui_address not in m.stakes
                else None
            )
            call = lambda: self.ledger.broadcast_withdraw(who, m.id)  # noqa: E731
        expected = m.value(who.sui_address, m.pool_at(now)) if error is None else 0
        result = self.expect(call, {who.sui_address: expected}, error)
        if error is None:
            if leave:  # (a withdraw after the cancel accounts no slots: the ledger's does not)
                m.accrue(now)  # the slots the pool covered are the broadcaster's
            assert result == expected == m.pay_out(who.sui_address)

    # -- deadlines -----------------------------------------------------------------------------

    @precondition(lambda self: self.records or self.free or self.conns)
    @rule(now=st.integers(0, 3))
    def every_deposit_comes_back_after_its_deadline(self, now: int) -> None:
        """Let every deadline pass, then each holder of a claim on a deposit takes it: no
        coin is left without a path back. Records: the sender deletes (confirmed or not).
        Subscribed connections: anyone ends them once the subscription is over. Metered
        ones: the client half-closes, and settles once the timeout passed. Subscriptions:
        the provider claims what they earned, all of it once expired. (``now``: one
        draw in four; the rest of the machine gets the time to build state first.)"""
        if now:
            return
        ledger = self.ledger
        last = max(
            [ledger.get_retained_record(r.id).reclaim_after_ms for r in self.records],
            default=0,
        )
        ledger.set_clock(max(ledger.clock_ms(), last))
        for record in list(self.records):
            r = ledger.get_retained_record(record.id)
            assert r.reclaim_after_ms - r.stored_at_ms <= 2 * MAX_RETENTION_MS
            got = self.expect(
                partial(ledger.delete_retained, record.sender, record.id),
                {record.sender.sui_address: r.deposit},
            )
            assert got == r.deposit
            self.records.remove(record)
        last_epoch = max(
            [ledger.get_subscription(s).expires_epoch for s, _ in self.subs], default=0
        )
        while ledger.epoch() < last_epoch:
            ledger.advance_epoch()
        for conn in self.free:
            e = ledger.get_escrow(conn.escrow)
            if e.settled:
                continue
            assert self._over(self._sub_of(conn))
            got = self.expect(
                partial(ledger.end_subscribed_connection, MALLORY, conn.id),
                {conn.client.sui_address: e.balance},
            )
            assert got == e.balance
            self.release(conn.id, conn.cap, e.balance)
        for conn in self.conns:
            if ledger.get_escrow(conn.escrow).settled:
                continue
            if ledger.get_connection(conn.id).state is ConnectionState.OPEN:
                ledger.close_connection(conn.client, conn.id)
        ledger.advance_clock(TIMEOUT)
        for conn in self.conns:
            e = ledger.get_escrow(conn.escrow)
            if e.settled:
                continue
            settled = self.expect(
                partial(ledger.settle, conn.client, conn.id),
                {conn.client.sui_address: e.balance},
            )
            assert settled.refunded == e.balance
            self.release(conn.id, conn.cap, e.balance)
        for sub_id, holder in self.subs:
            sub = ledger.get_subscription(sub_id)
            offer = self._offer_of(sub_id)
            if offer.withdrawn and not sub.refunded:
                # the epochs that had not begun at the withdrawal go back to the holder
                cut = max(sub.start_epoch, min(sub.expires_epoch, offer.withdrawn_epoch + 1))
                back = (sub.expires_epoch - cut) * PRICE
                self.expect(
                    partial(ledger.refund_subscription, holder, sub_id),
                    {holder.sui_address: back},
                )
                sub = ledger.get_subscription(sub_id)
            due = (self._earned(sub_id) - sub.claimed_epochs) * PRICE
            assert due == sub.funds, "an expired subscription owes its provider all it holds"
            self.expect(
                partial(ledger.claim_subscription, SERVER, sub_id), {SERVER.sui_address: due}
            )
        assert all(ledger.get_escrow(c.escrow).balance == 0 for c in self.conns + self.free)
        assert all(ledger.get_subscription(s).funds == 0 for s, _ in self.subs)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_holder_is_audited(self) -> None:
        audit = self.ledger.audit()
        subs = sum(self.ledger.get_subscription(s).funds for s, _ in self.subs)
        pool = sum(lane.funds for lane in self.ledger.get_sponsor_lanes(self.pool))
        records = sum(self.ledger.get_retained_record(r.id).deposit for r in self.records)
        escrows = sum(self.ledger.get_escrow(c.escrow).balance for c in self.conns + self.free)
        assert audit["escrows"] == escrows + subs + pool + records
        sales = sum(self.ledger.get_ticket_sale(s.id).funds for s in self.sales)
        pools = sum(m.pool + m.earned for m in self.bcasts)
        assert audit["broadcasts"] == sales + pools
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]

    @invariant()
    def models_hold_exactly_what_they_owe(self) -> None:
        for sub_id, _ in self.subs:
            sub = self.ledger.get_subscription(sub_id)
            span = sub.expires_epoch - sub.start_epoch - sub.claimed_epochs
            assert span >= 0 and sub.funds == span * PRICE
        # in every lane: reserved == the sum of its pledges (no entry past its
        # reimbursement) <= funds
        for lane in self.ledger.get_sponsor_lanes(self.pool):
            assert 0 <= lane.reserved <= lane.funds
            assert lane.reserved == self.lane_reserved(lane.id)
            assert lane.pledges == sum(1 for one, _ in self.pledges.values() if one == lane.id)
        for spec in self.sales:
            sale = self.ledger.get_ticket_sale(spec.id)
            assert sum(sale.holders.values()) == sale.sold
            assert sale.funds == (0 if sale.on_air else sale.sold * TICKET)
            assert not (sale.on_air and sale.cancelled)
        for record in self.records:
            r = self.ledger.get_retained_record(record.id)
            assert r.deposit == record.deposit
            # every deposit has a way back within a bounded time
            assert r.delete_after_ms <= r.reclaim_after_ms <= r.stored_at_ms + 2 * MAX_RETENTION_MS

    @invariant()
    def broadcasts_owe_every_listener_its_fair_value(self) -> None:
        now = self.ledger.clock_ms()
        for m in self.bcasts:
            m.check(self.ledger.get_broadcast(m.id), now)


EconomicsMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None
)
TestEconomicsMachine = EconomicsMachine.TestCase
