"""A broadcast's money as docs/escrow.md §9 states it, computed apart from the rules, for
the state machines that drive broadcasts (tests/messaging/test_broadcast_money.py,
tests/ledger/test_payment_models_state_machine.py).

Two books are kept side by side:

- the *rule*: slots, pool and shares as the docs word them (new money buys shares at the
  pool's value per share once the air time up to its moment is accounted for, the part
  of the slot in progress gone by included, a pool spent to 0 starts a new generation,
  the unit doubles past ``2**120`` shares, refunds round down, the last holder takes the
  pool), to predict every call's exact outcome;
- the *fair value* of each holder, in exact fractions, with no shares at all: what it
  paid in, less its part of each payment for air time made while it held money in the
  pool. Rounding leftovers (``dust``) are kept apart and lose their part of each payment
  alike. A listener's refund must never fall below its fair value by a MIST or more:
  that is, no listener pays for air time gone by before it paid in (a slot that ended,
  or the part of the slot in progress), nor for more than its part of the time after.
  Above its fair value it can get no more than the dust.

Air time is accounted for in pieces: the rest of a slot, whole slots, and (at a
contribution) the part of the slot in progress gone by; a piece costs ``slot_price``
pro rata (the price of a slot's first ``ms`` rounded down, so the pieces of a slot add up
to its price) and is paid while the pool covers the rest of its slot, every piece from
the first that is not being skipped.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Broadcast, broadcast_idle_ms

SHARE_SCALE = 10**9
SHARE_BITS = 120
#: What rounding a contribution's shares down may cost it, at most, in the states these
#: machines reach (a share is worth far less than this).
MINT_SLACK = Fraction(1, 10**6)


@dataclass
class StakeModel:
    contributed: int
    generation: int
    shift: int
    shares: int


@dataclass
class BroadcastModel:
    """One broadcast, by the docs."""

    id: str
    caster: HostIdentity
    price: int
    slot_ms: int
    start_ms: int
    next_slot: int = 0
    #: Of slot ``next_slot``, the ms accounted for already (by a contribution in it).
    accounted: int = 0
    pool: int = 0
    earned: int = 0
    #: Every MIST paid for air time so far.
    charged: int = 0
    claimed: int = 0
    refunded: int = 0
    total: int = 0
    next_seq: int = 0
    cancelled: bool = False
    cancel_slot: int = -1
    last_live_ms: int = 0
    total_shares: int = 0
    holders: int = 0
    generation: int = 0
    share_shift: int = 0
    stakes: dict[str, StakeModel] = field(default_factory=dict)
    #: Each current holder's fair value (see the module's docstring).
    fair: dict[str, Fraction] = field(default_factory=dict)
    #: Slots paid to their end, as ranges [first, first + count) in order (runs joined).
    paid: list[tuple[int, int]] = field(default_factory=list)
    #: The air time accounted for, piece by piece as the events tell it: ("paid", from,
    #: to, slots, amount) or ("skipped", from, to, 0, 0), in order.
    told: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    #: Per slot, whether the last look in it saw the broadcast on air.
    seen: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last_live_ms = self.start_ms

    # -- slots ------------------------------------------------------------------------------

    def slot_at(self, now: int) -> int:
        return 0 if now < self.start_ms else (now - self.start_ms) // self.slot_ms

    def part(self, ms: int) -> int:
        """The price of a slot's first ``ms``, rounded down."""
        return self.price * ms // self.slot_ms

    def slot_start(self, slot: int) -> int:
        return self.start_ms + slot * self.slot_ms

    def pieces(self, now: int, split: bool) -> tuple[int, list[tuple[int, int]], int, int, int]:
        """Accounting at ``now`` (``split``: for a contribution, the part of the slot in
        progress gone by too), piece by piece: (the cost, the runs of slots paid to their
        end, where the paid air time ends, and the new ``next_slot`` and ``accounted``).
        Nothing after a cancel."""
        slot, done = self.next_slot, self.accounted
        paid_to = self.slot_start(slot) + done
        if self.cancelled:
            return 0, [], paid_to, slot, done
        pool, cost, runs, covered = self.pool, 0, [], True
        current = self.slot_at(now)
        if current > slot:
            # the rest of slot ``next_slot``, then whole slots: paid one after another
            # while the pool holds what is left of each
            rest = self.price - self.part(done)
            if pool >= rest:
                pool -= rest
                whole = min(current - slot - 1, pool // self.price)
                pool -= whole * self.price
                cost += rest + whole * self.price
                runs.append((slot, 1 + whole))
                paid_to = self.slot_start(slot + 1 + whole)
                covered = whole == current - slot - 1
            else:
                covered = False
            slot, done = current, 0
        at = now - self.slot_start(slot)
        if split and current == slot and at > done:
            # a contribution: the part of the slot in progress gone by is the money's
            # that was in the pool during it, pro rata, or was off air
            if covered and pool >= self.price - self.part(done):
                cost += self.part(at) - self.part(done)
                paid_to = now
            done = at
        return cost, runs, paid_to, slot, done

    def due(self, now: int) -> int:
        """MIST the completed slots cost at ``now`` (what the next call pays from the pool)."""
        return self.pieces(now, split=False)[0]

    def pool_at(self, now: int) -> int:
        return self.pool - self.due(now)

    def accrue(self, now: int, split: bool = False) -> None:
        start = self.slot_start(self.next_slot) + self.accounted
        cost, runs, paid_to, slot, done = self.pieces(now, split)
        assert cost <= self.pool
        for first, count in runs:
            assert not self.paid or self.paid[-1][0] + self.paid[-1][1] <= first
            if self.paid and sum(self.paid[-1]) == first:
                self.paid[-1] = (self.paid[-1][0], self.paid[-1][1] + count)  # one run
            else:
                self.paid.append((first, count))
        if cost:
            # every MIST in the pool, the dust included, bears the air time alike
            keep = Fraction(self.pool - cost, self.pool)
            self.fair = {a: v * keep for a, v in self.fair.items()}
            self.pool -= cost
            self.earned += cost
            self.charged += cost
        self.next_slot, self.accounted = slot, done
        end = self.slot_start(slot) + done
        if paid_to > start:
            self.told.append(("paid", start, paid_to, sum(n for _, n in runs), cost))
        if end > paid_to:
            self.told.append(("skipped", paid_to, end, 0, 0))

    def on_air(self, now: int) -> bool:
        """The pool covers what is left of the slot in progress."""
        if self.cancelled:
            return False
        cost, _, _, _, done = self.pieces(now, split=False)
        return self.pool - cost >= self.price - self.part(done)

    def is_paid(self, slot: int) -> bool:
        at = bisect.bisect_right(self.paid, (slot, math.inf)) - 1
        return at >= 0 and slot < sum(self.paid[at])

    @property
    def paid_slots(self) -> int:
        return sum(n for _, n in self.paid)

    # -- leaving ----------------------------------------------------------------------------

    @property
    def idle_ms(self) -> int:
        """Three slots, at least ten minutes, at most a day (written out here)."""
        return min(max(3 * self.slot_ms, 600_000), 86_400_000)

    def idle(self, now: int) -> bool:
        return not self.cancelled and now - self.last_live_ms >= self.idle_ms

    # -- shares -----------------------------------------------------------------------------

    def shares_now(self, stake: StakeModel) -> int:
        if stake.generation != self.generation:
            return 0
        return stake.shares >> (self.share_shift - stake.shift)

    def value(self, address: str, pool: int | None = None) -> int:
        """What ``address`` takes out of ``pool`` (the pool as accounted) by the rule."""
        pool = self.pool if pool is None else pool
        stake = self.stakes.get(address)
        if stake is None or stake.generation != self.generation:
            return 0
        if self.holders == 1:
            return pool
        shares = self.shares_now(stake)
        return shares * pool // self.total_shares if shares else 0

    def minted(self, amount: int, now: int) -> int:
        """The shares ``amount`` buys at ``now`` (0: ``EContributionTooSmall``), once the
        air time gone by is accounted for."""
        pool = self.pool - self.pieces(now, split=True)[0]
        if pool == 0:
            return amount * SHARE_SCALE
        return amount * self.total_shares // pool

    def contribute(self, address: str, amount: int, now: int) -> None:
        """An accepted contribution."""
        self.accrue(now, split=True)
        if self.pool == 0 and (self.total_shares or self.holders):
            self.generation += 1
            self.total_shares = self.holders = self.share_shift = 0
            # the shares left are worth nothing: so, near enough, are their fair values
            # (0 but for a holder whose shares a doubling of the unit rounded to none)
            assert all(v <= MINT_SLACK for v in self.fair.values()), self.fair
            self.fair = {}
        minted = self.minted(amount, now)
        assert minted > 0
        old = self.stakes.get(address)
        held = 0 if old is None else self.shares_now(old)
        if old is None or old.generation != self.generation:
            self.holders += 1
        total = self.total_shares + minted
        bits = max(0, total.bit_length() - SHARE_BITS)
        self.total_shares = total >> bits
        self.share_shift += bits
        contributed = (0 if old is None else old.contributed) + amount
        self.stakes[address] = StakeModel(
            contributed, self.generation, self.share_shift, (held + minted) >> bits
        )
        self.fair[address] = self.fair.get(address, Fraction(0)) + amount
        self.pool += amount
        self.total += amount

    @property
    def dust(self) -> Fraction:
        """What rounding left in the pool that no holder's fair value accounts for."""
        return self.pool - sum(self.fair.values(), Fraction(0))

    def pay_out(self, address: str) -> int:
        """An accepted withdraw or leave (accrued already): the refund, checked against
        the fair value."""
        stake = self.stakes[address]
        amount = self.value(address)
        dust = self.dust
        fair = self.fair.pop(address, Fraction(0))
        if stake.generation == self.generation:
            # never a MIST short of the fair value, never more than it and the dust
            assert amount > fair - 1 - MINT_SLACK, (amount, fair)
            assert amount <= fair + dust + MINT_SLACK, (amount, fair, dust)
            self.holders -= 1
            shares = self.shares_now(stake)
            self.total_shares = 0 if self.holders == 0 else self.total_shares - shares
        else:
            assert fair == 0 and amount == 0
        del self.stakes[address]
        self.pool -= amount
        self.refunded += amount
        return amount

    @property
    def contributions(self) -> dict[str, int]:
        return {a: s.contributed for a, s in self.stakes.items()}

    # -- comparing with a ledger ------------------------------------------------------------

    def check(self, b: Broadcast, now: int) -> None:
        """``b`` (the ledger's view) holds what the model says, and every holder could take
        back at least its fair value, less a MIST of rounding, at ``now``."""
        assert (b.pool, b.earned, b.total_contributed) == (self.pool, self.earned, self.total)
        assert (b.paid_slots, b.next_slot) == (self.paid_slots, self.next_slot)
        assert b.slot_accounted_ms == self.accounted
        assert b.cancelled == self.cancelled and b.next_seq == self.next_seq
        assert (b.total_shares, b.holders) == (self.total_shares, self.holders)
        assert (b.generation, b.share_shift) == (self.generation, self.share_shift)
        assert b.last_live_ms == self.last_live_ms
        assert b.idle_ms == self.idle_ms == broadcast_idle_ms(self.slot_ms)
        assert b.is_idle(now) == self.idle(now)
        stakes = {
            a: StakeModel(s.contributed, s.generation, s.shift, s.shares)
            for a, s in b.stakes.items()
        }
        assert stakes == self.stakes
        assert dict(b.contributions) == self.contributions
        # listeners' money: what is left, earned, claimed and refunded is what came in
        assert self.pool + self.earned + self.claimed + self.refunded == self.total
        assert self.claimed + self.earned == self.charged
        assert sum(amount for *_, amount in self.told) == self.charged
        # the holders' shares never add up to more than the total (a doubling of the unit
        # rounds each down)
        assert sum(self.shares_now(s) for s in self.stakes.values()) <= self.total_shares
        # the time-aware view: completed slots paid first, then the value of the shares
        pool = self.pool_at(now)
        keep = Fraction(pool, self.pool) if self.pool else Fraction(0)
        for address, fair in self.fair.items():
            refund = b.refund_value(address, now)
            assert refund == self.value(address, pool)
            assert refund > fair * keep - 1 - MINT_SLACK, (address, refund, fair * keep)
