"""Money properties of a listener-paid broadcast (docs/escrow.md §9, docs/messaging.md §5).

A hypothesis state machine drives a real LocalLedger file on a frozen clock: broadcasts
with various slot prices and lengths, contributions (0, 1, a slot, everything, more than
the balance) from several listeners, clock moves (onto slot boundaries, just before
them, past the idle bound, huge jumps), transmits and heartbeats, claims and cancels (by
the broadcaster and by others), withdrawals, leaves and ``is_on_air`` reads. Every call's
outcome is predicted from an independent model (tests/ledger/broadcast_model.py): a
refused call must raise the documented typed error and leave the ledger byte-for-byte
unchanged; an accepted one must move balances exactly as predicted. Invariants: MIST
conserved, ``pool + earned + claimed + refunded == contributed``, only covered slots are
paid and each at most once, a slot last seen on air is paid once it ends (unless
cancelled in it), one last seen off air never is, every holder could take back its fair
value (what it paid in less its part of the slots paid since) less a MIST of rounding,
a refund is never above that value plus the rounding left in the pool, the last one out
leaves nothing behind, and on air exactly when the docs say.

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
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dtp.errors import BroadcastError, ChainError, InsufficientFunds
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Broadcast
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.broadcast import AirChange, BroadcastListener, BroadcastMessage, BroadcastStation
from tests.ledger.broadcast_model import BroadcastModel as Model
from tests.messaging.radio import CASTERS, FANS, PRICE, SLOT_MS, Radio, ident, radio_on_air

MALLORY = ident(0x6F)
EVERYONE = [*CASTERS, *FANS, MALLORY]
#: Starting balances: a whale (a huge contribution), a middling fan, a poor one.
FUNDS = {FANS[0].sui_address: 2**62, FANS[1].sui_address: 10**6, FANS[2].sui_address: 50}
BY_ADDRESS = {p.sui_address: p for p in EVERYONE}
MAX_DATA = 16_381
PRICES = [1, 2, 7, 100, 10**12]
SLOT_LENGTHS = [1, 10, 1_000, 86_400_000]


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
        # (only a refusal is compared with the state before: a dump per call was most
        # of this machine's time)
        before_dump = None if error is None else self.ledger.dump()
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
        now = self.now()
        # (the coin is split off before the Move call runs, so a short balance comes first)
        error = (
            (InsufficientFunds, "InsufficientCoinBalance")
            if amount > have
            else self._refused("EBroadcastCancelled")
            if m.cancelled
            else self._refused("EZeroAmount")
            if amount == 0
            else self._refused("EContributionTooSmall")
            if m.minted(amount, now) == 0
            else None
        )
        self.expect(
            lambda: self.ledger.broadcast_contribute(who, m.id, amount),
            {who.sui_address: -amount},
            error,
        )
        if error is None:
            m.contribute(who.sui_address, amount, now)  # new money never pays for past slots
            # a top-up may put the slot in progress on air (seen here, as a rule that goes
            # on to move the clock leaves the invariants no look at this slot)
            m.seen[m.slot_at(now)] = m.on_air(now)

    @precondition(lambda self: self.models)
    @rule(
        data=st.data(),
        size=st.sampled_from([0, 5, MAX_DATA, MAX_DATA + 1]),
        heartbeat=st.booleans(),
    )
    def transmit(self, data: st.DataObject, size: int, heartbeat: bool) -> None:
        """A message on the ledger, or a station's heartbeat (its messages go over DTP
        streams): either shows the broadcaster is live."""
        m = self.pick(data, lambda m: m.on_air(self.now()))
        who = data.draw(st.sampled_from([m.caster, *CASTERS, MALLORY]))
        now = self.now()
        error = (
            self._refused("ENotBroadcaster")
            if who is not m.caster
            else self._refused("EBroadcastCancelled")
            if m.cancelled
            else self._refused("EDataTooLarge")
            if size > MAX_DATA and not heartbeat
            else self._refused("ENotOnAir")
            if not m.on_air(now)
            else None
        )
        if heartbeat:
            self.expect(lambda: self.ledger.broadcast_heartbeat(who, m.id), {}, error)
        else:
            seq = self.expect(
                lambda: self.ledger.broadcast_transmit(who, m.id, b"d" * size), {}, error
            )
        if error is None:
            m.accrue(now)
            m.last_live_ms = now
            if not heartbeat:
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
        m = self.pick(data, lambda m: bool(m.stakes) and not m.cancelled)
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

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        m = self.pick(data, lambda m: m.cancelled and bool(m.stakes))
        listeners = [BY_ADDRESS[a] for a in sorted(m.stakes)]
        who = data.draw(st.sampled_from([*listeners, *listeners, *FANS, MALLORY, m.caster]))
        self._withdraw(m, who)

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        m = self.pick(data, lambda m: m.idle(self.now()) and bool(m.stakes))
        listeners = [BY_ADDRESS[a] for a in sorted(m.stakes)]
        who = data.draw(st.sampled_from([*listeners, *listeners, *FANS, MALLORY]))
        self._leave(m, who)

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
        order = data.draw(st.permutations(sorted(m.stakes)))
        for address in order:
            self._withdraw(m, BY_ADDRESS[address])
        assert m.pool == 0

    @precondition(lambda self: any(not m.cancelled for m in self.models))
    @rule(data=st.data(), slots=st.sampled_from([3, 40, 130]))
    def pay_as_you_go(self, data: st.DataObject, slots: int) -> None:
        """Two listeners take turns keeping the pool at about two slots, topping it up at
        every slot: each slot then halves the value of every share held before, so the
        number of shares doubles at each top-up, and past 2**120 the share unit must
        double instead, rounding every stake down (where the rounding matters)."""
        m = data.draw(st.sampled_from([m for m in self.models if not m.cancelled]))
        for turn in range(slots):
            who = FANS[turn % 2]
            amount = max(1, 2 * m.price - m.pool_at(self.now()))
            self.ledger.faucet(who.sui_address, amount)
            self._contribute(m, who, amount)
            self.ledger.set_clock(m.start_ms + (m.slot_at(self.now()) + 1) * m.slot_ms)

    @precondition(lambda self: any(m.cancelled and m.stakes for m in self.models))
    @rule(data=st.data())
    def everyone_withdraws(self, data: st.DataObject) -> None:
        """Every listener of a cancelled broadcast takes its refund, in some order."""
        m = data.draw(st.sampled_from([m for m in self.models if m.cancelled and m.stakes]))
        order = data.draw(st.permutations(sorted(m.stakes)))
        for address in order:
            self._withdraw(m, BY_ADDRESS[address])
        assert m.pool == 0

    @precondition(lambda self: any(not m.cancelled and m.stakes for m in self.models))
    @rule(data=st.data())
    def everyone_leaves_when_idle(self, data: st.DataObject) -> None:
        """No money stays locked: a broadcaster that shows no sign of life for its idle
        bound lets every listener leave, and then all of the pool is back with them or
        earned by the slots the pool covered."""
        m = data.draw(st.sampled_from([m for m in self.models if not m.cancelled and m.stakes]))
        self.ledger.set_clock(max(self.now(), m.last_live_ms + m.idle_ms))
        order = data.draw(st.permutations(sorted(m.stakes)))
        for address in order:
            self._leave(m, BY_ADDRESS[address])
        assert m.pool == 0 and not m.stakes

    def _withdraw(self, m: Model, who: HostIdentity) -> None:
        error = (
            self._refused("ENotCancelled")
            if not m.cancelled
            else self._refused("ENoContribution")
            if who.sui_address not in m.stakes
            else None
        )
        expected = m.value(who.sui_address) if error is None else 0
        got = self.expect(
            lambda: self.ledger.broadcast_withdraw(who, m.id),
            {who.sui_address: expected},
            error,
        )
        if error is None:
            assert got == expected == m.pay_out(who.sui_address)

    def _leave(self, m: Model, who: HostIdentity) -> None:
        now = self.now()
        error = (
            self._refused("EBroadcastCancelled")
            if m.cancelled
            else self._refused("ENoContribution")
            if who.sui_address not in m.stakes
            else self._refused("EBroadcastLive")
            if not m.idle(now)
            else None
        )
        expected = m.value(who.sui_address, m.pool_at(now)) if error is None else 0
        got = self.expect(
            lambda: self.ledger.broadcast_leave(who, m.id), {who.sui_address: expected}, error
        )
        if error is None:
            m.accrue(now)  # the slots the pool covered are the broadcaster's
            assert got == expected == m.pay_out(who.sui_address)

    @rule(who=st.sampled_from(FANS), amount=st.sampled_from([1, 1_000, 10**9, 10**13]))
    def faucet(self, who: HostIdentity, amount: int) -> None:
        self.ledger.faucet(who.sui_address, amount)

    @rule(ms=st.sampled_from([1, 9, 10, 999, 1_000, 1_001, 12_345, 600_000, 86_400_000, 10**12]))
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

    @precondition(lambda self: self.models)
    @rule(data=st.data(), offset=st.sampled_from([-1, 0]))
    def advance_to_idle(self, data: st.DataObject, offset: int) -> None:
        """Onto (or just before) the moment listeners of one broadcast may leave."""
        m = data.draw(st.sampled_from(self.models))
        target = m.last_live_ms + m.idle_ms + offset
        if target > self.now():
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
            m.check(b, now)  # as last accounted, and every holder's fair value
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
            if not m.stakes:
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
    cancelled: 2 MIST are refundable. Flooring each share apart (1 * 2 / 3 = 0) once gave
    the first two nothing and the last one out both MIST, twice what it put in."""
    caster = CASTERS[0]
    for fan in FANS:
        ledger.faucet(fan.sui_address, 1)
    b_id = ledger.create_broadcast(caster, "ch", 1, 1_000)
    for fan in FANS:
        ledger.broadcast_contribute(fan, b_id, 1)
    ledger.set_clock(1_000)
    ledger.broadcast_cancel(caster, b_id)
    assert ledger.get_broadcast(b_id).pool == 2
    refunds = [ledger.broadcast_withdraw(fan, b_id) for fan in FANS]
    assert refunds == [0, 1, 1]
    assert sum(refunds) == 2 and ledger.get_broadcast(b_id).pool == 0
    assert ledger.broadcast_claim(caster, b_id) == 1


def test_refunds_are_the_value_of_their_shares(ledger: LocalLedger) -> None:
    """Seven small listeners: each refund is its shares' value rounded down, so never a
    MIST below its exact part of the unspent pool, never above what it gave; what
    rounding leaves stays with the shares still held, and the last one out empties the
    pool."""
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
    assert ledger.get_broadcast(b_id).pool == base
    got = []
    for fan, gift in zip(fans, gifts, strict=True):
        b = ledger.get_broadcast(b_id)
        value = b.refund_value(fan.sui_address, ledger.clock_ms())
        assert value == b.shares_of(fan.sui_address) * b.pool // b.total_shares or b.holders == 1
        refund = ledger.broadcast_withdraw(fan, b_id)
        assert refund == value
        assert gift * base / total - 1 < refund <= gift
        got.append(refund)
    assert got == [2, 0, 2, 0, 4, 7, 2]
    assert sum(got) == base and ledger.get_broadcast(b_id).pool == 0
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


# -- the messaging layer ------------------------------------------------------------------------


@pytest.fixture
def radio(ledger: LocalLedger) -> Iterator[Radio]:
    yield from radio_on_air(ledger)


def _next(listener: BroadcastListener) -> BroadcastMessage | AirChange:
    return listener.get(timeout=30)


def test_station_delivers_exactly_what_the_pool_pays(radio: Radio) -> None:
    """One send per slot while the pool runs dry and is topped up (10 ms into a slot,
    after a long dry spell): a send goes out exactly in the slots the ledger then charges
    for, the listener hears AIR off when the pool runs dry and AIR on after each top-up
    that covers what is left of the slot, and the broadcaster's claim is exactly the
    delivered slots' price less the part of each gone by off air before its top-up."""
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
        # covered: 0 and 1 (250: the rest of slot 0 after its first 10 ms, off air, costs
        # 99 → 51 left), 3 (51 + 100), 4 (52 + 49 = 101 covers the 99 left of slot 4:
        # its first 10 ms were off air), not 5 (2 + 1), then 9, 10, 11 (3 + 300 + 50:
        # slot 10's first 10 ms were on air, paid at its top-up → 54 left)
        assert delivered == [0, 1, 3, 4, 9, 10, 11]
        claimed = station.claim()
        b = ledger.get_broadcast(b_id)
        # 10 ms off air before the top-up of slots 0, 3, 4 and 9: 1 MIST each not charged
        assert b.paid_slots == len(delivered) and claimed == PRICE * len(delivered) - 4
        assert b.pool == sum(top_ups.values()) - claimed == 54
        assert ledger.balance(fan) == fan_start - sum(top_ups.values())
        assert ledger.balance(CASTERS[0].sui_address) == claimed
        # AIR: on for the first top-up, then off/on around each dry spell, off at the end
        while len(air) < 6:
            item = _next(listener)
            assert isinstance(item, AirChange)
            air.append(item.on_air)
        assert air == [True, False, True, False, True, False]
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
    """A check that read the broadcast (covered) just before cancel() ran does not put the
    station back on air after its AIR "cancelled": send() does not go out for the rest
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
