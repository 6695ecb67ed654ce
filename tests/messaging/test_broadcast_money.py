"""Money properties of a listener-paid broadcast (docs/escrow.md §9, docs/messaging.md §5).

A hypothesis state machine drives a real LocalLedger file on a frozen clock: broadcasts
with various slot prices and lengths, contributions (0, 1, a slot, everything, more than
the balance) from several listeners, clock moves (onto slot boundaries, just before
them, huge jumps), transmits, claims and cancels (by the broadcaster and by others),
refunds and ``is_on_air`` reads. Every call's outcome is predicted from an independent
model of the slot math: a refused call must raise the documented typed error and leave
the ledger byte-for-byte unchanged; an accepted one must move balances exactly as
predicted. Invariants: MIST conserved, ``pool + earned == contributed - claimed -
refunded``, only covered slots are paid and each at most once, a slot last seen on air
is paid once it ends (unless cancelled in it), one last seen off air never is, a refund
is the listener's exact share of the unspent pool rounded down or up (never more than
it put in), and on air exactly when the docs say.

Then the messaging layer: a station and a listener over a real DTP connection, one send
attempted in every slot while the pool runs dry and is topped up; what is delivered is
exactly what the ledger charges for.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Broadcast
from dtp.errors import BroadcastError, ChainError, InsufficientFunds
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.broadcast import AirChange, BroadcastListener, BroadcastMessage, BroadcastStation
from tests.messaging.radio import CASTERS, FANS, PRICE, SLOT_MS, Radio, ident, radio_on_air

MALLORY = ident(0x6F)
EVERYONE = [*CASTERS, *FANS, MALLORY]
#: Starting balances: a whale (a huge contribution), a middling fan, a poor one.
FUNDS = {FANS[0].sui_address: 2**62, FANS[1].sui_address: 10**6, FANS[2].sui_address: 50}
BY_ADDRESS = {p.sui_address: p for p in EVERYONE}
MAX_DATA = 16_381
PRICES = [1, 2, 7, 100, 10**12]
SLOT_LENGTHS = [1, 10, 1_000, 86_400_000]


@dataclass
class Model:
    """What the docs say one broadcast holds, computed apart from the rules."""

    id: str
    caster: HostIdentity
    price: int
    slot_ms: int
    start_ms: int
    next_slot: int = 0
    pool: int = 0
    earned: int = 0
    claimed: int = 0
    refunded: int = 0
    total: int = 0
    next_seq: int = 0
    cancelled: bool = False
    cancel_slot: int = -1
    refund_base: int = 0
    #: Live contribution per listener (removed at its refund).
    contributions: dict[str, int] = field(default_factory=dict)
    #: Contributions refunded so far.
    withdrawn: int = 0
    #: Paid slots, as ranges [first, first + count).
    paid: list[tuple[int, int]] = field(default_factory=list)
    #: Per slot, whether the last look in it saw the broadcast on air.
    seen: dict[int, bool] = field(default_factory=dict)

    def slot_at(self, now: int) -> int:
        return 0 if now < self.start_ms else (now - self.start_ms) // self.slot_ms

    def due(self, now: int) -> int:
        """Completed slots the pool pays for at ``now``: one after another, from the
        first not accounted for, while the pool holds a slot's price."""
        if self.cancelled:
            return 0
        completed = max(0, self.slot_at(now) - self.next_slot)
        return min(completed, self.pool // self.price)

    def accrue(self, now: int) -> None:
        paid = self.due(now)
        assert paid * self.price <= self.pool
        if paid:
            assert not self.paid or self.paid[-1][0] + self.paid[-1][1] <= self.next_slot
            self.paid.append((self.next_slot, paid))
            self.pool -= paid * self.price
            self.earned += paid * self.price
        self.next_slot = max(self.next_slot, self.slot_at(now))

    def on_air(self, now: int) -> bool:
        return not self.cancelled and self.pool - self.due(now) * self.price >= self.price

    def is_paid(self, slot: int) -> bool:
        return any(first <= slot < first + n for first, n in self.paid)

    @property
    def paid_slots(self) -> int:
        return sum(n for _, n in self.paid)


class BroadcastMoneyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dtp-bcast-")
        self.ledger = LocalLedger(str(Path(self.dir) / "ledger.db"), clock_ms=1_000)
        for address, amount in FUNDS.items():
            self.ledger.faucet(address, amount)
        self.ledger.faucet(MALLORY.sui_address, 5)
        self.models: list[Model] = []

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # helpers

    def now(self) -> int:
        return self.ledger.clock_ms()

    def balances(self) -> dict[str, int]:
        return {p.sui_address: self.ledger.balance(p.sui_address) for p in EVERYONE}

    def expect(
        self,
        call: Callable[[], Any],
        changes: dict[str, int],
        error: tuple[type[ChainError], str] | None,
    ) -> Any:
        """Run ``call``: a refusal must be ``error`` (its class and name) and change
        nothing at all; a success must move balances by exactly ``changes``."""
        before_dump = self.ledger.dump()
        before = self.balances()
        try:
            result = call()
        except ChainError as exc:
            assert error is not None, f"unexpected refusal {exc!r}"
            assert isinstance(exc, error[0]) and exc.name == error[1], (exc, error)
            assert self.ledger.dump() == before_dump, f"a refused call changed state: {exc}"
            return exc
        assert error is None, f"expected {error}, got {result!r}"
        after = self.balances()
        for address, value in after.items():
            assert value == before[address] + changes.get(address, 0), "unexpected balance move"
        return result

    def pick(self, data: st.DataObject, prefer: Callable[[Model], bool]) -> Model:
        """A broadcast, most often one where the rule has something to do."""
        preferred = [m for m in self.models if prefer(m)]
        return data.draw(st.sampled_from(preferred * 3 + self.models))

    def _refused(self, name: str) -> tuple[type[ChainError], str]:
        return (BroadcastError, name)

    # rules

    @initialize(
        caster=st.sampled_from(CASTERS),
        price=st.sampled_from(PRICES),
        slot_ms=st.sampled_from(SLOT_LENGTHS),
    )
    def first(self, caster: HostIdentity, price: int, slot_ms: int) -> None:
        """One broadcast from the start, so every rule has something to act on."""
        self.create(caster, price, slot_ms)

    @precondition(lambda self: len(self.models) < 3)
    @rule(
        caster=st.sampled_from(CASTERS),
        price=st.sampled_from([0, *PRICES]),
        slot_ms=st.sampled_from([*SLOT_LENGTHS, 0]),
    )
    def another(self, caster: HostIdentity, price: int, slot_ms: int) -> None:
        self.create(caster, price, slot_ms)

    def create(self, caster: HostIdentity, price: int, slot_ms: int) -> None:
        error = self._refused("EInvalidSlot") if price == 0 or slot_ms == 0 else None
        result = self.expect(
            lambda: self.ledger.create_broadcast(caster, "ch", price, slot_ms), {}, error
        )
        if error is None:
            self.models.append(Model(result, caster, price, slot_ms, self.now()))

    @precondition(lambda self: self.models)
    @rule(
        data=st.data(),
        who=st.sampled_from([*FANS, *FANS, MALLORY, CASTERS[0]]),
        kind=st.sampled_from(
            ["zero", "one", "one", "slot", "slot+1", "3 slots", "10 slots", "all", "all+1"]
            + ["any"] * 3
        ),
    )
    def contribute(self, data: st.DataObject, who: HostIdentity, kind: str) -> None:
        m = self.pick(data, lambda m: not m.cancelled)
        have = self.ledger.balance(who.sui_address)
        amount = {
            "zero": 0,
            "one": 1,
            "slot": m.price,
            "slot+1": m.price + 1,
            "3 slots": 3 * m.price,
            "10 slots": 10 * m.price,
            "all": have,
            "all+1": have + 1,
        }.get(kind)
        if amount is None:
            amount = data.draw(st.integers(0, max(have, 1)))
        self._contribute(m, who, amount)

    def _contribute(self, m: Model, who: HostIdentity, amount: int) -> None:
        have = self.ledger.balance(who.sui_address)
        # (the coin is split off before the Move call runs, so a short balance comes first)
        error = (
            (InsufficientFunds, "InsufficientCoinBalance")
            if amount > have
            else self._refused("EBroadcastCancelled")
            if m.cancelled
            else self._refused("EZeroAmount")
            if amount == 0
            else None
        )
        self.expect(
            lambda: self.ledger.broadcast_contribute(who, m.id, amount),
            {who.sui_address: -amount},
            error,
        )
        if error is None:
            m.accrue(self.now())  # new money never pays for past slots
            m.pool += amount
            m.total += amount
            m.contributions[who.sui_address] = m.contributions.get(who.sui_address, 0) + amount
            # a top-up may put the slot in progress on air (seen here, as a rule that goes
            # on to move the clock leaves the invariants no look at this slot)
            now = self.now()
            m.seen[m.slot_at(now)] = m.on_air(now)

    @precondition(lambda self: self.models)
    @rule(data=st.data(), size=st.sampled_from([0, 5, MAX_DATA, MAX_DATA + 1]))
    def transmit(self, data: st.DataObject, size: int) -> None:
        m = self.pick(data, lambda m: m.on_air(self.now()))
        who = data.draw(st.sampled_from([m.caster, *CASTERS, MALLORY]))
        now = self.now()
        error = (
            self._refused("ENotBroadcaster")
            if who is not m.caster
            else self._refused("EBroadcastCancelled")
            if m.cancelled
            else self._refused("EDataTooLarge")
            if size > MAX_DATA
            else self._refused("ENotOnAir")
            if not m.on_air(now)
            else None
        )
        seq = self.expect(lambda: self.ledger.broadcast_transmit(who, m.id, b"d" * size), {}, error)
        if error is None:
            m.accrue(now)
            assert seq == m.next_seq
            m.next_seq += 1

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        m = self.pick(data, lambda m: bool(m.due(self.now()) or m.earned))
        who = data.draw(st.sampled_from([m.caster, m.caster, *CASTERS, MALLORY, FANS[0]]))
        if who is not m.caster:
            self.expect(
                lambda: self.ledger.broadcast_claim(who, m.id),
                {},
                self._refused("ENotBroadcaster"),
            )
            return
        m.accrue(self.now())
        due = m.earned
        got = self.expect(
            lambda: self.ledger.broadcast_claim(who, m.id), {who.sui_address: due}, None
        )
        assert got == due
        m.claimed += due
        m.earned = 0

    @precondition(lambda self: self.models)
    @rule(data=st.data(), now=st.integers(0, 2))
    def cancel(self, data: st.DataObject, now: int) -> None:
        if now:
            return  # (most times not: a cancel ends what the other rules exercise)
        m = self.pick(data, lambda m: bool(m.contributions) and not m.cancelled)
        who = data.draw(st.sampled_from([m.caster, m.caster, *CASTERS, FANS[1]]))
        self._cancel(m, who)

    def _cancel(self, m: Model, who: HostIdentity) -> None:
        error = (
            self._refused("ENotBroadcaster")
            if who is not m.caster
            else self._refused("EBroadcastCancelled")
            if m.cancelled
            else None
        )
        self.expect(lambda: self.ledger.broadcast_cancel(who, m.id), {}, error)
        if error is None:
            now = self.now()
            m.accrue(now)  # completed slots are paid, the slot in progress is not
            m.cancelled = True
            m.cancel_slot = m.slot_at(now)
            m.refund_base = m.pool

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        m = self.pick(data, lambda m: m.cancelled and bool(m.contributions))
        listeners = [BY_ADDRESS[a] for a in sorted(m.contributions)]
        who = data.draw(st.sampled_from([*listeners, *listeners, *FANS, MALLORY, m.caster]))
        self._withdraw(m, who)

    @precondition(lambda self: any(not m.cancelled for m in self.models))
    @rule(data=st.data(), now=st.integers(0, 2))
    def crowd_then_cancel(self, data: st.DataObject, now: int) -> None:
        """Several listeners chip in a few slots' worth each (not whole slots), part of it
        is spent, the broadcast is cancelled, and all take their refunds in some order:
        where rounding each share matters."""
        if now:
            return  # (most times not, as for cancel)
        m = data.draw(st.sampled_from([m for m in self.models if not m.cancelled]))
        for who in FANS:
            self.ledger.faucet(who.sui_address, 4 * m.price)
            self._contribute(m, who, data.draw(st.integers(1, 4 * m.price)))
        slots = data.draw(st.integers(0, 6))
        self.ledger.advance_clock(slots * m.slot_ms + data.draw(st.integers(0, m.slot_ms - 1)))
        self._cancel(m, m.caster)
        order = data.draw(st.permutations(sorted(m.contributions)))
        for address in order:
            self._withdraw(m, BY_ADDRESS[address])
        assert m.pool == 0

    @precondition(lambda self: any(m.cancelled and m.contributions for m in self.models))
    @rule(data=st.data())
    def everyone_withdraws(self, data: st.DataObject) -> None:
        """Every listener of a cancelled broadcast takes its refund, in some order."""
        m = data.draw(st.sampled_from([m for m in self.models if m.cancelled and m.contributions]))
        order = data.draw(st.permutations(sorted(m.contributions)))
        for address in order:
            self._withdraw(m, BY_ADDRESS[address])
        assert m.pool == 0

    def _withdraw(self, m: Model, who: HostIdentity) -> None:
        c = m.contributions.get(who.sui_address)
        error = (
            self._refused("ENotCancelled")
            if not m.cancelled
            else self._refused("ENoContribution")
            if c is None
            else None
        )
        share = None
        if error is None:
            assert c is not None
            # the exact share of the unspent pool, c * refund_base / total, rounded
            share = (c * m.refund_base // m.total, -(-c * m.refund_base // m.total))
            if m.withdrawn + c == m.total:
                expected = m.pool  # last one out: nothing stays behind
            else:
                expected = (m.withdrawn + c) * m.refund_base // m.total - (
                    m.withdrawn * m.refund_base // m.total
                )
        else:
            expected = 0
        got = self.expect(
            lambda: self.ledger.broadcast_withdraw(who, m.id),
            {who.sui_address: expected},
            error,
        )
        if error is None:
            assert c is not None and share is not None
            assert got == expected
            assert share[0] <= got <= share[1] <= c, (got, share, c)
            del m.contributions[who.sui_address]
            m.withdrawn += c
            m.pool -= got
            m.refunded += got

    @rule(who=st.sampled_from(FANS), amount=st.sampled_from([1, 1_000, 10**9, 10**13]))
    def faucet(self, who: HostIdentity, amount: int) -> None:
        self.ledger.faucet(who.sui_address, amount)

    @rule(ms=st.sampled_from([1, 9, 10, 999, 1_000, 1_001, 12_345, 86_400_000, 10**12]))
    def advance(self, ms: int) -> None:
        self.ledger.advance_clock(ms)

    @precondition(lambda self: self.models)
    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]), slots=st.sampled_from([1, 2, 5]))
    def advance_to_boundary(self, data: st.DataObject, offset: int, slots: int) -> None:
        """Onto (or just around) the start of a later slot of one broadcast."""
        m = data.draw(st.sampled_from(self.models))
        now = self.now()
        target = m.start_ms + (m.slot_at(now) + slots) * m.slot_ms + offset
        if target > now:
            self.ledger.set_clock(target)

    # invariants

    @invariant()
    def conserved(self) -> None:
        audit = self.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
        held = sum(m.pool + m.earned for m in self.models)
        assert audit["broadcasts"] == held

    @invariant()
    def matches_model(self) -> None:
        now = self.now()
        for m in self.models:
            b = self.ledger.get_broadcast(m.id)
            assert isinstance(b, Broadcast)
            # as last accounted on the ledger
            assert (b.pool, b.earned, b.total_contributed) == (m.pool, m.earned, m.total)
            assert (b.paid_slots, b.next_slot) == (m.paid_slots, m.next_slot)
            assert b.cancelled == m.cancelled and b.next_seq == m.next_seq
            assert dict(b.contributions) == m.contributions
            if m.cancelled:
                assert b.refund_base == m.refund_base
                assert b.outstanding == m.total - m.withdrawn
            # listeners' money: what is left, earned, claimed and refunded is what came in
            assert b.pool + b.earned == m.total - m.claimed - m.refunded
            assert m.claimed + m.earned == m.paid_slots * m.price
            # the slot math at the current time
            on = m.on_air(now)
            assert self.ledger.is_on_air(m.id) is on
            assert b.is_on_air(now) is on
            if not m.cancelled:
                m.seen[m.slot_at(now)] = on

    @invariant()
    def only_covered_slots_paid_once(self) -> None:
        for m in self.models:
            ends = [first + n for first, n in m.paid]
            firsts = [first for first, _ in m.paid]
            # ranges in order, never overlapping, never reaching an unfinished slot
            assert all(a <= b for a, b in zip(ends, firsts[1:], strict=False))
            assert not ends or ends[-1] <= m.next_slot
            for slot, on in m.seen.items():
                if slot >= m.next_slot:
                    continue  # not accounted for yet
                if on and slot != m.cancel_slot:
                    assert m.is_paid(slot), f"slot {slot} was on air and is not paid"
                if not on:
                    assert not m.is_paid(slot), f"slot {slot} was off air and is paid"

    @invariant()
    def refunds_settle_the_pool(self) -> None:
        for m in self.models:
            if m.cancelled and not m.contributions:
                assert m.pool == 0  # no MIST stranded by rounding


BroadcastMoneyMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
TestBroadcastMoney = BroadcastMoneyMachine.TestCase


# -- focused regressions ----------------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    yield ledger
    ledger.close()


def test_no_refund_exceeds_the_contribution(ledger: LocalLedger) -> None:
    """Three listeners give 1 MIST each, one slot of 1 MIST is spent, then the broadcast is
    cancelled: 2 MIST are refundable. Flooring each share apart (1 * 2 / 3 = 0) gave the
    first two nothing and the last one out both MIST, twice what it put in."""
    caster = CASTERS[0]
    for fan in FANS:
        ledger.faucet(fan.sui_address, 1)
    b_id = ledger.create_broadcast(caster, "ch", 1, 1_000)
    for fan in FANS:
        ledger.broadcast_contribute(fan, b_id, 1)
    ledger.set_clock(1_000)
    ledger.broadcast_cancel(caster, b_id)
    assert ledger.get_broadcast(b_id).refund_base == 2
    refunds = [ledger.broadcast_withdraw(fan, b_id) for fan in FANS]
    assert all(r <= 1 for r in refunds), refunds
    assert sum(refunds) == 2 and ledger.get_broadcast(b_id).pool == 0
    assert ledger.broadcast_claim(caster, b_id) == 1


def test_refunds_are_each_share_rounded_either_way(ledger: LocalLedger) -> None:
    """Seven small listeners: every refund is its exact share rounded down or up (never
    more than the listener gave), and together they empty the pool."""
    caster = CASTERS[0]
    fans = [ident(0x70 + i) for i in range(7)]
    gifts = [3, 1, 4, 1, 5, 9, 2]
    for fan, gift in zip(fans, gifts, strict=True):
        ledger.faucet(fan.sui_address, gift)
    b_id = ledger.create_broadcast(caster, "ch", 4, 1_000)
    for fan, gift in zip(fans, gifts, strict=True):
        ledger.broadcast_contribute(fan, b_id, gift)
    ledger.set_clock(2_500)  # slots 0 and 1 paid: 8 of 25 spent
    ledger.broadcast_cancel(caster, b_id)
    base, total = 17, 25
    assert ledger.get_broadcast(b_id).refund_base == base
    got = [ledger.broadcast_withdraw(fan, b_id) for fan in fans]
    for gift, refund in zip(gifts, got, strict=True):
        assert gift * base // total <= refund <= -(-gift * base // total) <= gift
    assert sum(got) == base
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


# -- the messaging layer ------------------------------------------------------------------------


@pytest.fixture
def radio(ledger: LocalLedger) -> Iterator[Radio]:
    yield from radio_on_air(ledger)


def _next(listener: BroadcastListener) -> BroadcastMessage | AirChange:
    return listener.get(timeout=30)


def test_station_delivers_exactly_what_the_pool_pays(radio: Radio) -> None:
    """One send per slot while the pool runs dry and is topped up (mid-slot, on a slot
    boundary, after a long dry spell): a send goes out exactly in the slots the ledger
    then charges for, the listener hears AIR off when the pool runs dry and AIR on after
    each top-up, and the broadcaster's claim is exactly the delivered slots' price."""
    ledger, b_id = radio.ledger, radio.b_id
    station = BroadcastStation(ledger, CASTERS[0], b_id)
    listener = radio.tune_in(station)
    fan = FANS[1].sui_address
    fan_start = ledger.balance(fan)
    # slot -> MIST contributed at its start (250: two slots and a half)
    top_ups = {0: 250, 3: 100, 4: 49, 5: 1, 9: 300, 10: 50}
    delivered: list[int] = []
    air: list[bool] = []
    try:
        for slot in range(14):
            ledger.set_clock(slot * SLOT_MS + 10)
            if slot in top_ups:
                listener.contribute(top_ups[slot])
            try:
                seq = station.send(b"slot %d" % slot)
            except E.OffAir:
                pass
            else:
                delivered.append(slot)
                msg = _next(listener)
                while isinstance(msg, AirChange):
                    air.append(msg.on_air)
                    msg = _next(listener)
                assert isinstance(msg, BroadcastMessage)
                assert (msg.seq, msg.payload) == (seq, b"slot %d" % slot)
            # the slot's last ms: a covered slot stays covered, an uncovered one off air
            ledger.set_clock(slot * SLOT_MS + SLOT_MS - 1)
            try:
                station.send(b"end of slot %d" % slot)
            except E.OffAir:
                assert delivered[-1:] != [slot]
            else:
                assert delivered[-1:] == [slot]
                assert _next(listener).payload == b"end of slot %d" % slot  # type: ignore[union-attr]
        ledger.set_clock(20 * SLOT_MS)
        station.check()
        # covered: 0, 1 (250 → 50 left), 3 (50 + 100; 50 + 49 leaves 4 uncovered), 5
        # (99 + 1; slot 4 was off air and is not charged), 9, 10, 11 (300 + 50 → 50 left)
        assert delivered == [0, 1, 3, 5, 9, 10, 11]
        claimed = station.claim()
        b = ledger.get_broadcast(b_id)
        assert b.paid_slots == len(delivered) and claimed == PRICE * len(delivered)
        assert b.pool == sum(top_ups.values()) - claimed == 50
        assert ledger.balance(fan) == fan_start - sum(top_ups.values())
        assert ledger.balance(CASTERS[0].sui_address) == claimed
        # AIR: on for the first top-up, then off/on around each dry spell, off at the end
        while len(air) < 8:
            item = _next(listener)
            assert isinstance(item, AirChange)
            air.append(item.on_air)
        assert air == [True, False, True, False, True, False, True, False]
        assert listener.received == 2 * len(delivered) and listener.missed == 0
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        listener.close()
        station.close()


class _CancelDuringRead(LocalLedger):
    """A real LocalLedger that, once armed, runs a callback right after a
    ``get_broadcast`` returns: the moment a station's check has read the broadcast and
    not yet decided (the interleaving of a monitor thread and a cancel)."""

    hook: Callable[[], None] | None = None

    def get_broadcast(self, broadcast_id: str) -> Broadcast:
        b = super().get_broadcast(broadcast_id)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return b


def test_station_stays_off_air_after_a_cancel_racing_a_check(tmp_path: Path) -> None:
    """A check that read the broadcast (covered) just before cancel() ran used to put the
    station back on air after its AIR "cancelled", and send() then went out for the rest
    of the slot, unpaid (the slot in progress at a cancel is never paid)."""
    ledger = _CancelDuringRead(str(tmp_path / "ledger.db"), clock_ms=0)
    gen = radio_on_air(ledger)
    radio = next(gen)
    try:
        station = BroadcastStation(ledger, CASTERS[0], radio.b_id)
        listener = radio.tune_in(station)
        listener.contribute(10 * PRICE)
        assert station.check()
        assert _next(listener) == AirChange(True, "covered", 1)
        ledger.advance_clock(SLOT_MS)  # a new slot: the next check asks the ledger

        cancelled = threading.Event()

        def cancel() -> None:
            station.cancel()
            cancelled.set()

        ledger.hook = cancel
        with pytest.raises(E.OffAir):
            # its check reads "covered", then the cancel lands before it decides
            station.send(b"after the cancel")
        assert cancelled.is_set()
        assert not station.on_air and not station.check()
        with pytest.raises(E.OffAir):
            station.send(b"later in the slot")
        assert _next(listener) == AirChange(False, "cancelled", 1)
        with pytest.raises(queue.Empty):
            listener.get(timeout=1)  # nothing after the cancel: no AIR on, no message
        b = ledger.get_broadcast(radio.b_id)
        assert b.cancelled and b.paid_slots == 1
        assert listener.withdraw() == 9 * PRICE
        listener.close()
        station.close()
    finally:
        next(gen, None)
        ledger.close()
