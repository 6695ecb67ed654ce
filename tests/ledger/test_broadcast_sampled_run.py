"""A sampled run of a broadcast's money (docs/escrow.md §9) on LocalLedger and on
SuiLedger over the Sui node stand-in alike: one seeded sequence of contributions (at slot
boundaries and part way through slots), clock moves (slot boundaries, the idle bound),
transmissions and heartbeats, claims, leaves, cancels and withdrawals by three
listeners, each call's outcome predicted by the model of tests/ledger/broadcast_model.py
and checked after every step: the same errors and refunds on both ledgers, money
conserved (gas counted apart on Sui), every holder able to take back its fair value less
a MIST, the air time paid and skipped told by the events exactly as the model accounts
for it, and the pool all back or earned once everyone has left. The hypothesis machines
run the same properties on LocalLedger at length."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.ledger.broadcast_model import BroadcastModel


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CASTER, MALLORY = ident(0x5A), ident(0x5B)
FANS = [ident(0x5C), ident(0x5D), ident(0x5E)]
EVERYONE = [CASTER, MALLORY, *FANS]
BY_ADDRESS = {p.sui_address: p for p in EVERYONE}
FUNDS = 10**7
GAS = 10**11
PRICE, SLOT_MS = 1_000, 60_000  # the idle bound: max(3 slots, 10 min) = 10 min
STEPS = 120


class World(Protocol):
    ledger: Ledger

    def set_clock(self, ms: int) -> None: ...

    def now(self) -> int: ...

    def balance(self, address: str) -> int:
        """Without gas."""

    def held(self) -> int:
        """MIST in broadcasts (pools and earnings)."""

    def conserved(self) -> bool: ...


class LocalWorld:
    def __init__(self) -> None:
        self.local = LocalLedger(":memory:", clock_ms=0)
        self.ledger: Ledger = self.local
        for who in EVERYONE:
            self.local.faucet(who.sui_address, FUNDS)

    def set_clock(self, ms: int) -> None:
        self.local.set_clock(ms)

    def now(self) -> int:
        return self.local.clock_ms()

    def balance(self, address: str) -> int:
        return self.local.balance(address)

    def held(self) -> int:
        return self.local.audit()["broadcasts"]

    def conserved(self) -> bool:
        a = self.local.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


class SuiWorld:
    def __init__(self, node: SuiNodeStandIn) -> None:
        self.node = node
        self.ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        for who in EVERYONE:
            node.faucet(who.sui_address, FUNDS + GAS)

    def set_clock(self, ms: int) -> None:
        self.node.set_clock(ms)

    def now(self) -> int:
        return self.ledger.clock_ms()

    def balance(self, address: str) -> int:
        return self.ledger.balance(address) - GAS + self.node.gas_paid(address)

    def held(self) -> int:
        return self.node.audit()["broadcasts"]

    def conserved(self) -> bool:
        a = self.node.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"] + a["gas"]


class Run:
    """The seeded sequence on one world, checked step by step."""

    def __init__(self, world: World, seed: int) -> None:
        self.world, self.ledger = world, world.ledger
        self.rng = random.Random(seed)
        self.models: list[BroadcastModel] = []
        self.outcomes: list[Any] = []
        self.cursor: str | None = None
        #: The BroadcastSlotsPaid / BroadcastSlotsSkipped events read, by broadcast.
        self.told: dict[str, list[tuple[str, int, int, int, int]]] = {}
        self.new_broadcast()

    def new_broadcast(self) -> None:
        b_id = self.ledger.create_broadcast(CASTER, "sampled", PRICE, SLOT_MS)
        self.models.append(BroadcastModel(b_id, CASTER, PRICE, SLOT_MS, self.world.now()))

    @property
    def m(self) -> BroadcastModel:
        return self.models[-1]

    def call(self, call: Callable[[], Any], error: str | None, changes: dict[str, int]) -> Any:
        before = {p.sui_address: self.world.balance(p.sui_address) for p in EVERYONE}
        try:
            result = call()
        except ChainError as exc:
            assert exc.name == error, (exc, error)
            self.outcomes.append(exc.name)
            result = None
        else:
            assert error is None, f"expected {error}, got {result!r}"
            self.outcomes.append(result)
        for p in EVERYONE:
            moved = self.world.balance(p.sui_address) - before[p.sui_address]
            assert moved == (changes.get(p.sui_address, 0) if error is None else 0)
        return result

    def step(self) -> None:
        m, now, rng = self.m, self.world.now(), self.rng
        op = rng.choice(
            ["contribute"] * 4 + ["clock"] * 3 + ["live", "claim", "leave", "leave", "cancel"]
        )
        who = rng.choice([*FANS, *FANS, MALLORY])
        if op == "contribute":
            amount = rng.choice([0, 1, PRICE - 1, PRICE, 3 * PRICE + 7, 20 * PRICE])
            error = (
                "EZeroAmount"
                if amount == 0
                else "EContributionTooSmall"
                if m.minted(amount, now) == 0
                else None
            )
            self.call(
                lambda: self.ledger.broadcast_contribute(who, m.id, amount),
                error,
                {who.sui_address: -amount},
            )
            if error is None:
                m.contribute(who.sui_address, amount, now)
        elif op == "clock":
            target = rng.choice(
                [
                    now + 1,
                    m.start_ms + (m.slot_at(now) + rng.choice([1, 2, 7])) * SLOT_MS,
                    m.start_ms + m.slot_at(now) * SLOT_MS + rng.randrange(SLOT_MS),
                    m.last_live_ms + m.idle_ms - 1,
                    m.last_live_ms + m.idle_ms,
                ]
            )
            self.world.set_clock(max(now, target))
        elif op == "live":
            by = rng.choice([CASTER, CASTER, MALLORY])
            heartbeat = rng.random() < 0.5
            error = (
                "ENotBroadcaster"
                if by is not CASTER
                else "ENotOnAir"
                if not m.on_air(now)
                else None
            )
            if heartbeat:
                call: Any = lambda: self.ledger.broadcast_heartbeat(by, m.id)  # noqa: E731
            else:
                call = lambda: self.ledger.broadcast_transmit(by, m.id, b"x")  # noqa: E731
            self.call(call, error, {})
            if error is None:
                m.accrue(now)
                m.last_live_ms = now
                m.next_seq += not heartbeat
        elif op == "claim":
            m.accrue(now)
            got = self.call(
                lambda: self.ledger.broadcast_claim(CASTER, m.id),
                None,
                {CASTER.sui_address: m.earned},
            )
            assert got == m.earned
            m.claimed += m.earned
            m.earned = 0
        elif op == "leave":
            error = (
                "ENoContribution"
                if who.sui_address not in m.stakes
                else "EBroadcastLive"
                if not m.idle(now)
                else None
            )
            expected = m.value(who.sui_address, m.pool_at(now)) if error is None else 0
            got = self.call(
                lambda: self.ledger.broadcast_leave(who, m.id),
                error,
                {who.sui_address: expected},
            )
            if error is None:
                m.accrue(now)
                assert got == expected == m.pay_out(who.sui_address)
        elif rng.random() < 0.3:  # cancel, now and then: everyone withdraws
            self.call(lambda: self.ledger.broadcast_cancel(CASTER, m.id), None, {})
            m.accrue(now)
            m.cancelled = True
            for address in sorted(m.stakes):
                listener = BY_ADDRESS[address]
                expected = m.value(address)
                got = self.call(
                    lambda listener=listener: self.ledger.broadcast_withdraw(listener, m.id),
                    None,
                    {address: expected},
                )
                assert got == expected == m.pay_out(address)
            assert m.pool == 0
            self.new_broadcast()
        self.check()

    def read_slot_events(self) -> None:
        events, self.cursor = self.ledger.events(self.cursor)
        for event in events:
            if event.name in ("BroadcastSlotsPaid", "BroadcastSlotsSkipped"):
                f = event.fields
                if event.name == "BroadcastSlotsPaid":
                    told = ("paid", f["from_ms"], f["to_ms"], f["slots"], f["amount"])
                else:
                    told = ("skipped", f["from_ms"], f["to_ms"], 0, 0)
                self.told.setdefault(f["broadcast"], []).append(told)

    def check(self) -> None:
        now = self.world.now()
        self.read_slot_events()
        for m in self.models:
            m.check(self.ledger.get_broadcast(m.id), now)
            # the events tell the air time as the model accounts for it, piece by piece,
            # one piece after another from the start
            assert self.told.get(m.id, []) == m.told
            assert all(a[2] == b[1] for a, b in zip(m.told, m.told[1:], strict=False))
            assert not m.told or m.told[0][1] == m.start_ms
        assert self.world.held() == sum(m.pool + m.earned for m in self.models)
        assert self.world.conserved()

    def everyone_leaves(self) -> None:
        """The end: the broadcaster goes quiet, every listener leaves within the idle
        bound, and all that came in is back or earned."""
        m = self.m
        self.world.set_clock(max(self.world.now(), m.last_live_ms + m.idle_ms))
        now = self.world.now()
        for address in sorted(m.stakes):
            listener = BY_ADDRESS[address]
            expected = m.value(address, m.pool_at(now))
            got = self.call(
                lambda listener=listener: self.ledger.broadcast_leave(listener, m.id),
                None,
                {address: expected},
            )
            m.accrue(now)
            assert got == expected == m.pay_out(address)
        self.check()
        assert m.pool == 0 and not m.stakes


def _run(world: World) -> Run:
    run = Run(world, seed=62)
    for _ in range(STEPS):
        run.step()
    run.everyone_leaves()
    # the run did what it is for: listeners were refused and left, slots were paid,
    # a broadcast was cancelled and withdrawn from
    kinds = {o for o in run.outcomes if isinstance(o, str)}
    assert {"EBroadcastLive", "ENoContribution"} <= kinds, kinds
    assert sum(m.paid_slots for m in run.models) > 0
    assert len(run.models) > 1 and any(m.refunded for m in run.models[:-1])
    assert any(m.generation for m in run.models)  # a pool spent to 0, then bought into
    # air time was paid and skipped, and contributions accounted for the part of the slot
    # in progress gone by: pro rata when on air, skipped when off air
    pieces = [(m.start_ms, piece) for m in run.models for piece in m.told]
    ends = {(kind, (to - start) % SLOT_MS > 0) for start, (kind, _, to, *_) in pieces}
    assert {("paid", True), ("skipped", True), ("paid", False), ("skipped", False)} <= ends
    return run


def test_a_sampled_run_on_both_ledgers() -> None:
    """The properties hold on each ledger, and the outcomes (refunds, errors) of the
    seeded run do not depend on the ledger."""
    local = LocalWorld()
    try:
        first = _run(local)
    finally:
        local.local.close()
    with SuiNodeStandIn(clock_ms=0) as node:
        sui = SuiWorld(node)
        try:
            second = _run(sui)
        finally:
            sui.ledger.close()
        node.state.check()
    assert first.outcomes == second.outcomes
