"""The rules of ``dtp::broadcast``: public broadcasts paid for by their listeners."""

from __future__ import annotations

from typing import Any

from dtp.errors import move_error
from dtp.ledger.local.rules.common import SHARED, Exec, add_u64, utf8
from dtp.ledger.objects import MAX_DATA_LENGTH


def _slot_at(b: dict[str, Any], now_ms: int) -> int:
    return 0 if now_ms < b["start_ms"] else (now_ms - b["start_ms"]) // b["slot_ms"]


def _accrue(b: dict[str, Any], now_ms: int) -> None:
    current = _slot_at(b, now_ms)
    if b["cancelled"] or current <= b["next_slot"]:
        b["next_slot"] = max(current, b["next_slot"])
        return
    paid = min(current - b["next_slot"], b["pool"] // b["slot_price"])
    if paid:
        b["pool"] -= paid * b["slot_price"]
        b["earned"] += paid * b["slot_price"]
        b["paid_slots"] += paid
    b["next_slot"] = current


def _assert_broadcaster(x: Exec, b: dict[str, Any], b_id: str) -> None:
    if x.sender != b["broadcaster"]:
        raise move_error("broadcast", "ENotBroadcaster", f"{x.sender} does not broadcast {b_id}")


def _assert_live(b: dict[str, Any], b_id: str) -> None:
    if b["cancelled"]:
        raise move_error("broadcast", "EBroadcastCancelled", f"broadcast {b_id}")


def broadcast_create(x: Exec, raw_channel: bytes, slot_price: int, slot_ms: int) -> str:
    return new_broadcast(x, raw_channel, slot_price, slot_ms, None)


def new_broadcast(
    x: Exec, raw_channel: bytes, slot_price: int, slot_ms: int, ticket_sale: str | None
) -> str:
    """``broadcast::new``: ``create``, or ``create_ticketed`` once it checked the sale."""
    if slot_price == 0 or slot_ms == 0:
        raise move_error("broadcast", "EInvalidSlot", f"price {slot_price}, length {slot_ms} ms")
    channel = utf8(raw_channel, "channel")
    b_id = x.create(
        "Broadcast",
        SHARED,
        {
            "broadcaster": x.sender,
            "channel": channel,
            "slot_price": slot_price,
            "slot_ms": slot_ms,
            "start_ms": x.now_ms,
            "next_slot": 0,
            "paid_slots": 0,
            "pool": 0,
            "earned": 0,
            "contributions": {},
            "total_contributed": 0,
            "next_seq": 0,
            "cancelled": False,
            "refund_base": 0,
            "outstanding": 0,
            "ticket_sale": ticket_sale,
        },
    )
    x.emit(
        "broadcast",
        "BroadcastCreated",
        {
            "broadcast": b_id,
            "broadcaster": x.sender,
            "channel": channel,
            "slot_price": slot_price,
            "slot_ms": slot_ms,
            "start_ms": x.now_ms,
            "ticket_sale": ticket_sale,
        },
    )
    return b_id


def broadcast_transmit(x: Exec, b_id: str, data: bytes) -> int:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _assert_live(b, b_id)
    if len(data) > MAX_DATA_LENGTH:
        raise move_error("broadcast", "EDataTooLarge", f"{len(data)} > {MAX_DATA_LENGTH} bytes")
    _accrue(b, x.now_ms)
    if b["pool"] < b["slot_price"]:
        raise move_error(
            "broadcast",
            "ENotOnAir",
            f"broadcast {b_id} has {b['pool']} MIST, a slot costs {b['slot_price']}",
        )
    seq: int = b["next_seq"]
    b["next_seq"] = seq + 1
    x.emit("broadcast", "BroadcastTransmitted", {"broadcast": b_id, "seq": seq, "data": data})
    return seq


def broadcast_claim(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _accrue(b, x.now_ms)
    amount: int = b["earned"]
    b["earned"] = 0
    x.pay(b["broadcaster"], amount)
    x.emit(
        "broadcast",
        "BroadcastClaimed",
        {"broadcast": b_id, "amount": amount, "paid_slots": b["paid_slots"]},
    )
    return amount


def broadcast_cancel(x: Exec, b_id: str) -> None:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _assert_live(b, b_id)
    _accrue(b, x.now_ms)
    b["cancelled"] = True
    b["refund_base"] = b["pool"]
    b["outstanding"] = b["total_contributed"]
    x.emit(
        "broadcast",
        "BroadcastCancelled",
        {"broadcast": b_id, "at_ms": x.now_ms, "refundable": b["refund_base"]},
    )


def broadcast_contribute(x: Exec, b_id: str, amount: int) -> None:
    b = x.load(b_id, "Broadcast")
    x.take_coin(amount)
    _assert_live(b, b_id)
    if amount == 0:
        raise move_error("broadcast", "EZeroAmount", f"broadcast {b_id}")
    _accrue(b, x.now_ms)
    b["pool"] += amount
    contribution = add_u64(b["contributions"].get(x.sender, 0), amount)
    b["contributions"][x.sender] = contribution
    b["total_contributed"] = add_u64(b["total_contributed"], amount)
    x.emit(
        "broadcast",
        "BroadcastContributed",
        {
            "broadcast": b_id,
            "listener": x.sender,
            "amount": amount,
            "contribution": contribution,
            "pool": b["pool"],
        },
    )


def broadcast_withdraw(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    if not b["cancelled"]:
        raise move_error("broadcast", "ENotCancelled", f"broadcast {b_id}")
    if x.sender not in b["contributions"]:
        raise move_error("broadcast", "ENoContribution", f"{x.sender} on broadcast {b_id}")
    contribution: int = b["contributions"].pop(x.sender)
    if contribution == b["outstanding"]:
        amount: int = b["pool"]
    else:
        # Rounded on the running total of refunded contributions, not on each share
        # alone: flooring every share apart left up to one MIST per listener to the last
        # one out, who could get back more than it put in (1+1+1 MIST with 1 spent:
        # refunds 0, 0, 2). This way each refund is its exact share rounded down or up
        # (never above the contribution) and the refunds still add up to refund_base.
        total, base = b["total_contributed"], b["refund_base"]
        before = total - b["outstanding"]  # contributions refunded so far
        amount = (before + contribution) * base // total - before * base // total
    b["outstanding"] -= contribution
    b["pool"] -= amount
    x.pay(x.sender, amount)
    x.emit(
        "broadcast",
        "ContributionRefunded",
        {"broadcast": b_id, "listener": x.sender, "amount": amount},
    )
    return amount
