"""The rules of ``dtp::broadcast``: public broadcasts paid for by their listeners."""

from __future__ import annotations

from typing import Any, Final

from dtp.errors import move_error
from dtp.ledger._airtime import air_time_due, slot_part
from dtp.ledger._objects import MAX_DATA_LENGTH, broadcast_idle_ms
from dtp.ledger.local.rules._common import SHARED, Exec, add_u64, rule, utf8

#: Shares one MIST buys in a new share generation (``broadcast::SHARE_SCALE``).
SHARE_SCALE: Final = 1_000_000_000
#: ``total_shares`` stays below ``2**SHARE_BITS`` (``broadcast::SHARE_BITS``): past it the
#: share unit doubles as often as needed.
SHARE_BITS: Final = 120


def _accounted(b: dict[str, Any]) -> int:
    """Of slot ``next_slot``, the ms accounted for (a broadcast a LocalLedger file kept
    from before contributions accounted for the slot in progress has none)."""
    done: int = b.get("slot_accounted_ms", 0)
    return done


def _slot_rest(b: dict[str, Any]) -> int:
    """``broadcast::slot_rest``: what covers the rest of slot ``next_slot``."""
    return int(b["slot_price"] - slot_part(b["slot_price"], b["slot_ms"], _accounted(b)))


def _account(x: Exec, b: dict[str, Any], b_id: str, split: bool = False) -> None:
    """``broadcast::account`` (``accrue`` without ``split``): pay the air time the pool
    covered up to now, skip what it did not, and tell both."""
    due = air_time_due(
        start_ms=b["start_ms"],
        slot_ms=b["slot_ms"],
        slot_price=b["slot_price"],
        next_slot=b["next_slot"],
        slot_accounted_ms=_accounted(b),
        pool=b["pool"],
        cancelled=b["cancelled"],
        now_ms=x.now_ms,
        split=split,
    )
    b["pool"] -= due.amount
    b["earned"] += due.amount
    b["paid_slots"] += due.slots
    b["next_slot"] = due.next_slot
    b["slot_accounted_ms"] = due.slot_accounted_ms
    if due.paid_to_ms > due.from_ms:
        x.emit(
            "broadcast",
            "BroadcastSlotsPaid",
            {
                "broadcast": b_id,
                "from_ms": due.from_ms,
                "to_ms": due.paid_to_ms,
                "slots": due.slots,
                "amount": due.amount,
            },
        )
    if due.to_ms > due.paid_to_ms:
        x.emit(
            "broadcast",
            "BroadcastSlotsSkipped",
            {"broadcast": b_id, "from_ms": due.paid_to_ms, "to_ms": due.to_ms},
        )


def _idle_at(b: dict[str, Any], now_ms: int) -> bool:
    """Whether the idle bound has passed at ``now_ms`` since the broadcaster was live."""
    live: int = b["last_live_ms"]
    return now_ms >= live and now_ms - live >= broadcast_idle_ms(b["slot_ms"])


def _shares_now(b: dict[str, Any], stake: dict[str, Any]) -> int:
    """A stake's shares in the current unit; none if of an earlier generation."""
    if stake["generation"] != b["generation"]:
        return 0
    doublings = b["share_shift"] - stake["shift"]
    return 0 if doublings >= 128 else int(stake["shares"]) >> doublings


def _value_of(b: dict[str, Any], stake: dict[str, Any], pool: int) -> int:
    """What ``stake`` takes out of ``pool``: its shares' part rounded down, all of it for
    the generation's last holder, nothing for an earlier generation."""
    if stake["generation"] != b["generation"]:
        return 0
    if b["holders"] == 1:
        return pool
    shares = _shares_now(b, stake)
    return 0 if shares == 0 else shares * pool // b["total_shares"]


def _excess_bits(total: int) -> int:
    """Bits to drop from ``total`` shares to bring it below ``2**SHARE_BITS``."""
    return max(0, total.bit_length() - SHARE_BITS)


def _assert_broadcaster(x: Exec, b: dict[str, Any], b_id: str) -> None:
    if x.sender != b["broadcaster"]:
        raise move_error("broadcast", "ENotBroadcaster", f"{x.sender} does not broadcast {b_id}")


def _assert_on_air(b: dict[str, Any], b_id: str) -> None:
    """(accrued) The pool covers what is left of the slot in progress (``ENotOnAir``)."""
    rest = _slot_rest(b)
    if b["pool"] < rest:
        raise move_error(
            "broadcast",
            "ENotOnAir",
            f"broadcast {b_id} has {b['pool']} MIST, the rest of the slot costs {rest}",
        )


def _assert_not_cancelled(b: dict[str, Any], b_id: str) -> None:
    if b["cancelled"]:
        raise move_error("broadcast", "EBroadcastCancelled", f"broadcast {b_id}")


def _live_for_broadcaster(x: Exec, b_id: str) -> dict[str, Any]:
    """The broadcast ``b_id``, the sender its broadcaster, not cancelled."""
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _assert_not_cancelled(b, b_id)
    return b


@rule("broadcast::create")
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
            "slot_accounted_ms": 0,
            "paid_slots": 0,
            "pool": 0,
            "earned": 0,
            "stakes": {},
            "total_contributed": 0,
            "next_seq": 0,
            "cancelled": False,
            "total_shares": 0,
            "holders": 0,
            "generation": 0,
            "share_shift": 0,
            "last_live_ms": x.now_ms,
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


@rule("broadcast::transmit")
def broadcast_transmit(x: Exec, b_id: str, data: bytes) -> int:
    b = _live_for_broadcaster(x, b_id)
    if len(data) > MAX_DATA_LENGTH:
        raise move_error("broadcast", "EDataTooLarge", f"{len(data)} > {MAX_DATA_LENGTH} bytes")
    _account(x, b, b_id)
    _assert_on_air(b, b_id)
    b["last_live_ms"] = x.now_ms
    seq: int = b["next_seq"]
    b["next_seq"] = seq + 1
    x.emit("broadcast", "BroadcastTransmitted", {"broadcast": b_id, "seq": seq, "data": data})
    return seq


@rule("broadcast::heartbeat")
def broadcast_heartbeat(x: Exec, b_id: str) -> None:
    b = _live_for_broadcaster(x, b_id)
    _account(x, b, b_id)
    _assert_on_air(b, b_id)
    b["last_live_ms"] = x.now_ms
    x.emit("broadcast", "BroadcastHeartbeat", {"broadcast": b_id, "at_ms": x.now_ms})


@rule("broadcast::claim")
def broadcast_claim(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _account(x, b, b_id)
    amount = x.pay_all(b, "earned", b["broadcaster"])
    x.emit(
        "broadcast",
        "BroadcastClaimed",
        {"broadcast": b_id, "amount": amount, "paid_slots": b["paid_slots"]},
    )
    return amount


@rule("broadcast::cancel")
def broadcast_cancel(x: Exec, b_id: str) -> None:
    b = _live_for_broadcaster(x, b_id)
    _account(x, b, b_id)
    b["cancelled"] = True
    x.emit(
        "broadcast",
        "BroadcastCancelled",
        {"broadcast": b_id, "at_ms": x.now_ms, "refundable": b["pool"]},
    )


@rule("broadcast::contribute")
def broadcast_contribute(x: Exec, b_id: str, amount: int) -> None:
    b = x.load(b_id, "Broadcast")
    x.take_coin(amount)
    _assert_not_cancelled(b, b_id)
    if amount == 0:
        raise move_error("broadcast", "EZeroAmount", f"broadcast {b_id}")
    _account(x, b, b_id, split=True)  # new money never pays for time past
    pool: int = b["pool"]
    if pool == 0 and (b["total_shares"] or b["holders"]):
        # spent to 0 with shares left: they are worth nothing, and new money must not
        # buy into them (at 0 MIST a share)
        b["generation"] += 1
        b["total_shares"] = b["holders"] = b["share_shift"] = 0
    old = b["stakes"].get(x.sender)
    counted = old is not None and old["generation"] == b["generation"]
    held = 0 if old is None else _shares_now(b, old)
    minted = amount * SHARE_SCALE if pool == 0 else amount * b["total_shares"] // pool
    if minted == 0:
        raise move_error(
            "broadcast",
            "EContributionTooSmall",
            f"{amount} MIST buys no share of broadcast {b_id} "
            f"({pool} MIST for {b['total_shares']} shares)",
        )
    total = b["total_shares"] + minted
    bits = _excess_bits(total)
    contribution = add_u64(0 if old is None else old["contributed"], amount)
    b["total_contributed"] = add_u64(b["total_contributed"], amount)
    b["total_shares"] = total >> bits
    b["share_shift"] += bits
    stake = {
        "contributed": contribution,
        "generation": b["generation"],
        "shift": b["share_shift"],
        "shares": (held + minted) >> bits,
    }
    b["stakes"][x.sender] = stake
    if not counted:
        b["holders"] += 1
    b["pool"] += amount
    x.emit(
        "broadcast",
        "BroadcastContributed",
        {
            "broadcast": b_id,
            "listener": x.sender,
            "amount": amount,
            "contribution": contribution,
            "pool": b["pool"],
            "shares": stake["shares"],
        },
    )


def _pay_out(x: Exec, b: dict[str, Any], b_id: str) -> int:
    """Remove the sender's stake and send it the value of its shares."""
    stake = b["stakes"].pop(x.sender)
    amount = _value_of(b, stake, b["pool"])
    if stake["generation"] == b["generation"]:
        shares = _shares_now(b, stake)
        b["holders"] -= 1
        # the last one out also takes the shares a doubling of the unit left unowned
        b["total_shares"] = 0 if b["holders"] == 0 else b["total_shares"] - shares
    b["pool"] -= amount
    x.pay(x.sender, amount)
    x.emit(
        "broadcast",
        "ContributionRefunded",
        {"broadcast": b_id, "listener": x.sender, "amount": amount},
    )
    return amount


@rule("broadcast::withdraw")
def broadcast_withdraw(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    if not b["cancelled"]:
        raise move_error("broadcast", "ENotCancelled", f"broadcast {b_id}")
    if x.sender not in b["stakes"]:
        raise move_error("broadcast", "ENoContribution", f"{x.sender} on broadcast {b_id}")
    return _pay_out(x, b, b_id)


@rule("broadcast::leave")
def broadcast_leave(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    _assert_not_cancelled(b, b_id)
    if x.sender not in b["stakes"]:
        raise move_error("broadcast", "ENoContribution", f"{x.sender} on broadcast {b_id}")
    if not _idle_at(b, x.now_ms):
        raise move_error(
            "broadcast",
            "EBroadcastLive",
            f"broadcast {b_id} was live at {b['last_live_ms']} ms; listeners may leave "
            f"{broadcast_idle_ms(b['slot_ms'])} ms after that",
        )
    _account(x, b, b_id)
    return _pay_out(x, b, b_id)
