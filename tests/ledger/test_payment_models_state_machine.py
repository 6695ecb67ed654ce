"""The escrow state machine of tests/ledger/escrow_machine.py, extended with the payment
models (docs/escrow.md §13-16): subscriptions (subscribe, renew, claim, withdraw, refund,
unmetered connections), a sponsor pool (fund, withdraw, sponsored connections,
reimbursements), ticket sales (buy, go on air, cancel, refund) and retained records
(send, confirm, delete).

Every call's outcome (error name or the exact balance moves) is predicted from the rules
and compared, as in the escrow machine; failed calls must leave the ledger unchanged.
Invariants on top of the escrow ones: MIST conserved with every new holder counted, a
subscription holds exactly its unearned epochs, a pool's pledges are covered and equal
the unreimbursed pledges, a sale holds exactly the price of its unrefunded tickets, a
record holds its storage deposit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from dtp.chain.objects import ConnectionState
from dtp.escrow import Receipt, ReceiptScope
from dtp.keys import HostIdentity
from tests.ledger.escrow_machine import CLIENTS, MALLORY, SERVER, Conn, LedgerMachine

PRICE = 50  # per epoch
SHARE_BPS = 5_000
STORAGE_PRICE = 2  # per byte
RETENTION_MS = 1_000
TICKET = 30


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
    size: int


class EconomicsMachine(LedgerMachine):
    def __init__(self) -> None:
        super().__init__()
        ledger = self.ledger
        ledger.faucet(SERVER.sui_address, 6_000)
        self.offer = ledger.create_subscription_offer(SERVER, self.host, 7, PRICE, 1)
        self.pool = ledger.create_sponsor_pool(SERVER, self.host, 7, SHARE_BPS)
        ledger.fund_sponsor_pool(SERVER, self.pool, 1_500)
        self.terms = ledger.create_retention_terms(SERVER, self.host, 7, RETENTION_MS, 2)
        self.subs: list[tuple[str, HostIdentity]] = []
        self.offers = [self.offer]
        self.free: list[Conn] = []  # connections opened with a subscription (SLA all zero)
        self.pledges: dict[str, int] = {}  # sponsored connection -> pledge (until reimbursed)
        self.reimbursed: set[str] = set()
        self.sales: list[Sale] = []
        self.pipes: dict[tuple[str, str], str] = {}
        self.records: list[Record] = []

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
            # (the open reserves its deposit of 0: refused only once a lowering left the
            # epoch's reservations above the limit)
            else "ESpendingCapExceeded"
            if self.room(cap) < 0
            else None
        )
        result = self.expect(
            lambda: self.ledger.open_subscribed_connection(who, sub_id, cap), {}, error
        )
        if error is None:
            self.free.append(Conn(result.connection_id, result.escrow_id, who, cap))
            self.reserve(result.connection_id, cap, 0, top_up=False)

    @precondition(lambda self: self.free)
    @rule(data=st.data(), more=st.integers(0, 100_000), metered=st.booleans())
    def use_free_connection(self, data: st.DataObject, more: int, metered: bool) -> None:
        """A receipt on an unmetered connection: for 0 MIST it is claimable (pays
        nothing), any other amount does not match the connection's fee."""
        conn = data.draw(st.sampled_from(self.free))
        e = self.ledger.get_escrow(conn.escrow)
        conn.nonce += 1
        b, r = conn.usage[0] + more, conn.usage[1] + 1
        receipt = Receipt(
            ReceiptScope(self.ledger.package_id, conn.escrow, conn.id),
            b,
            r,
            1 if metered else 0,
            conn.nonce,
        ).sign(conn.client)
        error = "EEscrowSettled" if e.settled else "EAmountMismatch" if metered else None
        self.expect(lambda: self.ledger.claim(SERVER, conn.escrow, receipt), {}, error)
        if error is None:
            conn.usage = (b, r)

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

    # -- sponsoring -------------------------------------------------------------------------

    @rule(who=st.sampled_from(CLIENTS), deposit=st.integers(0, 3_000))
    def open_sponsored(self, who: HostIdentity, deposit: int) -> None:
        pool = self.ledger.get_sponsor_pool(self.pool)
        pledge = deposit * SHARE_BPS // 10_000
        error = (
            "InsufficientCoinBalance"
            if deposit > self.ledger.balance(who.sui_address)
            else "ESponsorUnfunded"
            if pledge > pool.available
            else "EInsufficientDeposit"
            if deposit < 100
            else "ESpendingCapExceeded"
            if deposit > self.room(self.caps[who.sui_address])
            else None
        )
        cap = self.caps[who.sui_address]
        result = self.expect(
            lambda: self.ledger.open_sponsored_connection(who, self.pool, cap, deposit),
            {who.sui_address: -deposit},
            error,
        )
        if error is None:
            self.conns.append(Conn(result.connection_id, result.escrow_id, who, cap))
            self.reserve(result.connection_id, cap, deposit, top_up=False)
            self.pledges[result.connection_id] = pledge

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
        error = (
            "ENotSponsored"
            if conn.id not in self.pledges and conn.id not in self.reimbursed
            else "EAlreadyReimbursed"
            if conn.id in self.reimbursed
            else "ENotSettled"
            if not tc.settled
            else None
        )
        amount = 0
        if error is None:
            amount = min(e.claimed * SHARE_BPS // 10_000, self.pledges[conn.id])
        result = self.expect(
            lambda: self.ledger.reimburse(who, self.pool, conn.id),
            {conn.client.sui_address: amount},
            error,
        )
        if error is None:
            assert result == amount
            del self.pledges[conn.id]
            self.reimbursed.add(conn.id)

    @rule(amount=st.integers(0, 2_000), withdraw=st.booleans())
    def pool_money(self, amount: int, withdraw: bool) -> None:
        pool = self.ledger.get_sponsor_pool(self.pool)
        if withdraw:
            error = (
                "EZeroAmount"
                if amount == 0
                else "ESponsorUnfunded"
                if amount > pool.available
                else None
            )
            call: Any = lambda: self.ledger.withdraw_sponsor_pool(SERVER, self.pool, amount)  # noqa: E731
            changes = {SERVER.sui_address: amount}
        else:
            error = (
                "InsufficientCoinBalance"
                if amount > self.ledger.balance(SERVER.sui_address)
                else "EZeroAmount"
                if amount == 0
                else None
            )
            call = lambda: self.ledger.fund_sponsor_pool(SERVER, self.pool, amount)  # noqa: E731
            changes = {SERVER.sui_address: -amount}
        self.expect(call, changes if error is None else {}, error)

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

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), size=st.integers(0, 40))
    def send_retained(self, data: st.DataObject, size: int) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        sender = data.draw(st.sampled_from([conn.client, SERVER]))
        receiver = SERVER if sender is conn.client else conn.client
        key = (conn.id, sender.sui_address)
        if key not in self.pipes:
            if self.ledger.get_connection(conn.id).state is ConnectionState.CLOSED:
                return
            self.pipes[key] = self.ledger.create_pipe(sender, conn.id, 1)
        deposit = size * STORAGE_PRICE
        error = (
            "InsufficientCoinBalance" if deposit > self.ledger.balance(sender.sui_address) else None
        )
        payload = bytes(range(size))
        result = self.expect(
            lambda: self.ledger.send_retained(sender, self.pipes[key], self.terms, 0, payload),
            {sender.sui_address: -deposit},
            error,
        )
        if error is None:
            self.records.append(Record(result, sender, receiver, size))

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
        error = (
            "ENotSender"
            if who is not record.sender
            else "ENotConsumed"
            if not r.consumed
            else "ERetentionNotElapsed"
            if self.ledger.clock_ms() < r.delete_after_ms
            else None
        )
        result = self.expect(
            lambda: self.ledger.delete_retained(who, record.id),
            {who.sui_address: r.deposit} if error is None else {},
            error,
        )
        if error is None:
            assert result == record.size * STORAGE_PRICE
            self.records.remove(record)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_holder_is_audited(self) -> None:
        audit = self.ledger.audit()
        subs = sum(self.ledger.get_subscription(s).funds for s, _ in self.subs)
        pool = self.ledger.get_sponsor_pool(self.pool).funds
        records = sum(self.ledger.get_retained_record(r.id).deposit for r in self.records)
        escrows = sum(self.ledger.get_escrow(c.escrow).balance for c in self.conns + self.free)
        assert audit["escrows"] == escrows + subs + pool + records
        sales = sum(self.ledger.get_ticket_sale(s.id).funds for s in self.sales)
        assert audit["broadcasts"] == sales
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]

    @invariant()
    def models_hold_exactly_what_they_owe(self) -> None:
        for sub_id, _ in self.subs:
            sub = self.ledger.get_subscription(sub_id)
            span = sub.expires_epoch - sub.start_epoch - sub.claimed_epochs
            assert span >= 0 and sub.funds == span * PRICE
        pool = self.ledger.get_sponsor_pool(self.pool)
        assert 0 <= pool.reserved <= pool.funds
        assert pool.reserved == sum(self.pledges.values())
        for spec in self.sales:
            sale = self.ledger.get_ticket_sale(spec.id)
            assert sum(sale.holders.values()) == sale.sold
            assert sale.funds == (0 if sale.on_air else sale.sold * TICKET)
            assert not (sale.on_air and sale.cancelled)
        for record in self.records:
            assert self.ledger.get_retained_record(record.id).deposit == record.size * 2


EconomicsMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None
)
TestEconomicsMachine = EconomicsMachine.TestCase
