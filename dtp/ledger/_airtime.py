"""A broadcast's air time accounted for (docs/escrow.md §9): ``broadcast::due`` and its
slot arithmetic, shared by the LocalLedger rules (which move the money and tell it with
``BroadcastSlotsPaid`` / ``BroadcastSlotsSkipped``) and the
:class:`~dtp.ledger._objects.Broadcast` view (which predicts the pool and the air at a
given time)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AirTime", "air_time_due", "slot_part"]


def slot_part(slot_price: int, slot_ms: int, ms: int) -> int:
    """``broadcast::slot_part``: the price of the first ``ms`` of a slot, rounded down.
    Cut anywhere, the parts of a slot add up to ``slot_price`` exactly, and what is left
    of a slot always costs at least 1 MIST."""
    return slot_price * ms // slot_ms


@dataclass(frozen=True)
class AirTime:
    """What accounting a broadcast's air time up to a moment does: ``[from_ms,
    paid_to_ms)`` paid, ``[paid_to_ms, to_ms)`` skipped (off air)."""

    #: MIST the pool pays the broadcaster.
    amount: int
    #: Slots paid to their end (``paid_slots`` grows by this much).
    slots: int
    from_ms: int
    paid_to_ms: int
    to_ms: int
    #: The broadcast's ``next_slot`` and ``slot_accounted_ms`` afterwards.
    next_slot: int
    slot_accounted_ms: int


def air_time_due(
    *,
    start_ms: int,
    slot_ms: int,
    slot_price: int,
    next_slot: int,
    slot_accounted_ms: int,
    pool: int,
    cancelled: bool,
    now_ms: int,
    split: bool,
) -> AirTime:
    """``broadcast::due``: the rest of slot ``next_slot``, then the whole slots after it up
    to the slot in progress at ``now_ms``, each paid while the pool covers it and skipped
    from the first it does not; with ``split`` (a contribution), also the part of the slot
    in progress gone by, paid pro rata if the pool covers that slot's rest. Nothing after
    a cancel."""
    slot, accounted = next_slot, slot_accounted_ms
    from_ms = paid_to = start_ms + slot * slot_ms + accounted
    if cancelled:
        return AirTime(0, 0, from_ms, from_ms, from_ms, slot, accounted)
    current = 0 if now_ms < start_ms else (now_ms - start_ms) // slot_ms
    amount = slots = 0
    if current > slot:
        rest = slot_price - slot_part(slot_price, slot_ms, accounted)
        if pool >= rest:
            pool -= rest
            whole = min(current - slot - 1, pool // slot_price)
            pool -= whole * slot_price
            slots = 1 + whole
            amount = rest + whole * slot_price
            paid_to = start_ms + (slot + slots) * slot_ms
        slot, accounted = current, 0
    start = start_ms + slot * slot_ms
    if split and current == slot and now_ms > start + accounted:
        at = now_ms - start
        # covered: the pool holds the slot's rest (nothing before it was skipped then)
        if pool >= slot_price - slot_part(slot_price, slot_ms, accounted):
            amount += slot_part(slot_price, slot_ms, at) - slot_part(slot_price, slot_ms, accounted)
            paid_to = now_ms
        accounted = at
    return AirTime(
        amount, slots, from_ms, paid_to, start_ms + slot * slot_ms + accounted, slot, accounted
    )
