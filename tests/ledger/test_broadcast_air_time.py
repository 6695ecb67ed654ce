"""A broadcast's air time accounted for (docs/escrow.md §9) on LocalLedger and on SuiLedger
over the Sui node stand-in alike: a contribution pays only from the moment it joins (the
part of the slot in progress gone by paid pro rata by the money that was in the pool, or
skipped if off air), and each stretch of air time paid or skipped is told by a
``BroadcastSlotsPaid`` / ``BroadcastSlotsSkipped`` event, decoded from BCS on Sui, from
which a listener reconciles the broadcaster's earnings without recomputing the slots."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.local import LocalLedger
from tests.ledger.standin_ledger import StandInLedger


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CASTER, A, B, C = ident(0x71), ident(0x72), ident(0x73), ident(0x74)
FUNDS = 10_000


@pytest.fixture(params=["local", "sui"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A LocalLedger, or SuiLedger on a stand-in, with the clock at 0 and each listener
    funded with :data:`FUNDS` (balances read without gas)."""
    if request.param == "local":
        led: Any = LocalLedger(":memory:", clock_ms=0)
    else:
        led = StandInLedger([CASTER, A, B, C], clock_ms=0)
    try:
        for who in (A, B, C):
            led.faucet(who.sui_address, FUNDS)
        yield led
    finally:
        led.close()


def conserved(ledger: Any) -> bool:
    a = ledger.audit()
    return bool(a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"])


def told(ledger: Any, broadcast: str) -> list[tuple[str, int, int, int, int]]:
    """The broadcast's slot events, in order: (kind, from, to, slots, amount)."""
    events, _ = ledger.events(filter=EventFilter(module="broadcast"))
    out = []
    for e in events:
        if e.fields.get("broadcast") != broadcast:
            continue
        f = e.fields
        if e.name == "BroadcastSlotsPaid":
            out.append(("paid", f["from_ms"], f["to_ms"], f["slots"], f["amount"]))
        elif e.name == "BroadcastSlotsSkipped":
            out.append(("skipped", f["from_ms"], f["to_ms"], 0, 0))
    return out


def test_an_hour_slot_joined_a_millisecond_before_its_end_costs_a_mist(ledger: Any) -> None:
    b = ledger.create_broadcast(CASTER, "late", 100, 3_600_000)
    ledger.set_clock(3_599_999)
    ledger.broadcast_contribute(A, b, 100)
    assert ledger.get_broadcast(b).is_on_air(3_599_999)
    ledger.set_clock(3_600_000)
    assert ledger.broadcast_claim(CASTER, b) == 1  # 100 before: the whole slot for 1 ms
    assert not ledger.get_broadcast(b).is_on_air(3_600_000)
    ledger.set_clock(10_800_000)  # idle for three slots: A leaves
    assert ledger.broadcast_leave(A, b) == 99
    assert ledger.balance(A.sui_address) == FUNDS - 1
    assert ledger.balance(CASTER.sui_address) == 1
    assert told(ledger, b) == [
        ("skipped", 0, 3_599_999, 0, 0),
        ("paid", 3_599_999, 3_600_000, 1, 1),
        ("skipped", 3_600_000, 10_800_000, 0, 0),
    ]
    assert conserved(ledger)


def test_a_contribution_never_revives_air_time_gone_by(ledger: Any) -> None:
    b = ledger.create_broadcast(CASTER, "revive", 100, 1_000)
    ledger.broadcast_contribute(A, b, 33)  # slot 0 off air
    ledger.set_clock(999)
    ledger.broadcast_contribute(B, b, 67)  # 67 paid the whole slot before
    ledger.set_clock(1_000)
    assert ledger.broadcast_claim(CASTER, b) == 1
    view = ledger.get_broadcast(b)
    assert view.refund_value(A.sui_address, 1_000) == 32  # 32.67 rounded down
    assert view.refund_value(B.sui_address, 1_000) == 66  # 66.33 rounded down
    assert told(ledger, b) == [("skipped", 0, 999, 0, 0), ("paid", 999, 1_000, 1, 1)]
    assert conserved(ledger)


def test_a_listener_joining_mid_slot_pays_its_part_of_the_rest(ledger: Any) -> None:
    b = ledger.create_broadcast(CASTER, "midway", 100, 1_000)
    ledger.broadcast_contribute(A, b, 200)
    ledger.set_clock(500)
    ledger.broadcast_contribute(B, b, 100)
    view = ledger.get_broadcast(b)
    assert (view.pool, view.earned, view.slot_accounted_ms) == (250, 50, 500)
    ledger.set_clock(1_000)
    ledger.broadcast_cancel(CASTER, b)
    assert ledger.broadcast_withdraw(A, b) == 120  # paid 50 alone, then 30 of 50
    assert ledger.broadcast_withdraw(B, b) == 80  # 20 of 50: 33 before, for half a slot
    assert ledger.broadcast_claim(CASTER, b) == 100
    assert told(ledger, b) == [("paid", 0, 500, 0, 50), ("paid", 500, 1_000, 1, 50)]
    assert conserved(ledger)


def test_the_slot_events_reconcile_the_earnings(ledger: Any) -> None:
    """7 MIST slots of 3 ms, contributions at every millisecond, a dry spell: the events'
    amounts add up to what the broadcaster earned, its paid slots to ``paid_slots``, and
    their spans follow one another from the start to what is accounted for."""
    b = ledger.create_broadcast(CASTER, "ticks", 7, 3)
    ledger.broadcast_contribute(A, b, 7)
    for ms, who, amount in [(1, B, 1), (2, C, 1), (4, A, 3), (5, B, 2), (13, C, 20)]:
        ledger.set_clock(ms)
        ledger.broadcast_contribute(who, b, amount)
    ledger.set_clock(30)
    earned = ledger.broadcast_claim(CASTER, b)
    view = ledger.get_broadcast(b)
    pieces = told(ledger, b)
    assert sum(amount for *_, amount in pieces) == earned == 34 - view.pool
    assert sum(slots for *_, slots, _ in pieces) == view.paid_slots
    assert [p[1] for p in pieces[1:]] == [p[2] for p in pieces[:-1]]
    assert pieces[0][1] == 0
    assert pieces[-1][2] == view.start_ms + view.next_slot * 3 + view.slot_accounted_ms
    assert {"paid", "skipped"} == {kind for kind, *_ in pieces}
    # slot 0 was paid in three parts: 2 + 2 + 3 MIST, its price
    assert pieces[:3] == [("paid", 0, 1, 0, 2), ("paid", 1, 2, 0, 2), ("paid", 2, 3, 1, 3)]
    assert conserved(ledger)
