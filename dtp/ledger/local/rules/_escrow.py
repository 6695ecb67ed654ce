"""The rules of ``dtp::spending_cap`` and ``dtp::escrow``: a client's cap per epoch, and a
connection's deposit, claimed by receipt."""

from __future__ import annotations

from typing import Any

from dtp.errors import move_error
from dtp.ledger.local.rules._common import SHARED, Exec, add_u64, rule

# -- spending cap ------------------------------------------------------------------------------


@rule("spending_cap::create")
def cap_create(x: Exec, max_per_epoch: int) -> str:
    data = {
        "owner": x.sender,
        "max_per_epoch": max_per_epoch,
        "claimed": 0,
        "outstanding": 0,
        "epoch": x.epoch,
    }
    cap_id = x.create("SpendingCap", SHARED, data)
    x.emit(
        "spending_cap",
        "SpendingCapCreated",
        {"cap": cap_id, "owner": x.sender, "max_per_epoch": max_per_epoch},
    )
    return cap_id


@rule("spending_cap::set_max_per_epoch")
def cap_set_max_per_epoch(x: Exec, cap_id: str, max_per_epoch: int) -> None:
    cap = x.load(cap_id, "SpendingCap")
    if x.sender != cap["owner"]:
        raise move_error("spending_cap", "ENotCapOwner", f"cap {cap_id} belongs to {cap['owner']}")
    cap["max_per_epoch"] = max_per_epoch
    x.emit("spending_cap", "SpendingCapChanged", {"cap": cap_id, "max_per_epoch": max_per_epoch})


def _counts(cap: dict[str, Any]) -> dict[str, Any]:
    """The cap's counts (``claimed``, ``outstanding``). A cap a LocalLedger file kept from
    before outstanding deposits were counted has ``spent`` (reserved in its epoch): it
    becomes that epoch's ``claimed``, the conservative reading, with nothing outstanding
    (its escrows then hold nothing of it either, see :func:`_escrow_counts`)."""
    if "outstanding" not in cap:
        cap["claimed"] = cap.pop("spent", 0)
        cap["outstanding"] = 0
    return cap


def _roll_epoch(x: Exec, cap: dict[str, Any]) -> None:
    if x.epoch != cap["epoch"]:
        cap["epoch"] = x.epoch
        cap["claimed"] = 0


def _cap_event(x: Exec, name: str, cap: dict[str, Any], cap_id: str, **fields: int) -> None:
    x.emit(
        "spending_cap",
        name,
        {
            "cap": cap_id,
            "epoch": cap["epoch"],
            **fields,
            "claimed": cap["claimed"],
            "outstanding": cap["outstanding"],
        },
    )


def reserve(x: Exec, cap: dict[str, Any], cap_id: str, amount: int) -> None:
    """``spending_cap::reserve``: ``claimed + outstanding + amount`` may not pass
    ``max_per_epoch``; a reservation of 0 is never refused (docs/escrow.md §4)."""
    _counts(cap)
    _roll_epoch(x, cap)
    used = cap["claimed"] + cap["outstanding"]
    if amount and used + amount > cap["max_per_epoch"]:
        raise move_error(
            "spending_cap",
            "ESpendingCapExceeded",
            f"cap {cap_id} has {cap['claimed']} claimed in epoch {cap['epoch']} and "
            f"{cap['outstanding']} outstanding of {cap['max_per_epoch']}; {amount} more asked",
        )
    cap["outstanding"] += amount
    _cap_event(x, "SpendingCapReserved", cap, cap_id, amount=amount)


def _count_claims(
    x: Exec, cap: dict[str, Any], cap_id: str, amount: int, claim_epoch: int, in_epoch: int
) -> None:
    """``spending_cap::count_claims``: ``amount`` leaves ``outstanding``; the part claimed
    in the current epoch (up to ``in_epoch`` when ``claim_epoch`` is it) joins
    ``claimed``. Never refuses."""
    _counts(cap)
    _roll_epoch(x, cap)
    if not amount:
        return
    taken: int = min(amount, cap["outstanding"])
    cap["outstanding"] -= taken
    counted = min(taken, in_epoch) if claim_epoch == cap["epoch"] else 0
    cap["claimed"] += counted
    _cap_event(x, "SpendingCapClaimsCounted", cap, cap_id, amount=taken, in_epoch=counted)


def _release(x: Exec, cap: dict[str, Any], cap_id: str, amount: int) -> int:
    """``spending_cap::release``: up to ``amount`` off ``outstanding``. Returns what was
    released."""
    _counts(cap)
    _roll_epoch(x, cap)
    released: int = min(amount, cap["outstanding"])
    if released:
        cap["outstanding"] -= released
        _cap_event(x, "SpendingCapReleased", cap, cap_id, amount=released)
    return released


# -- escrow ------------------------------------------------------------------------------------


def fee(sla: dict[str, int], total_bytes: int, total_requests: int) -> int:
    """``host::fee``: exact, like Move's u256 arithmetic."""
    result: int = (total_bytes * sla["price_per_kib"] + 1023) // 1024 + total_requests * sla[
        "price_per_request"
    ]
    return result


def receipt_message(
    package: str, escrow: str, connection: str, b: int, r: int, amount: int, nonce: int
) -> bytes:
    """``escrow::receipt_message``: the bytes a receipt for ``escrow`` of ``package``
    paying for ``connection`` is signed over."""
    from dtp.ledger.receipt import ReceiptScope
    from dtp.ledger.receipt import receipt_message as message

    return message(ReceiptScope(package, escrow, connection), b, r, amount, nonce)


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from dtp.identity._ed25519 import verify_memoized

    return verify_memoized(public_key, signature, message)


@rule("escrow::claim")
def escrow_claim(x: Exec, escrow_id: str, *receipt: Any) -> int:
    """``escrow::claim`` of ``receipt`` (its five fields, as :func:`claim_loaded` takes
    them): the cap is not involved (the deposit was reserved on it); the escrow notes the
    claim's epoch for its next report to the cap."""
    return claim_loaded(x, x.load(escrow_id, "Escrow"), escrow_id, *receipt)


def claim_loaded(
    x: Exec,
    escrow: dict[str, Any],
    escrow_id: str,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
    signature: bytes,
) -> int:
    """:func:`escrow_claim` of the escrow ``escrow_id`` loaded already as ``escrow``."""
    if x.sender != escrow["server"]:
        raise move_error(
            "escrow", "ENotServer", f"{x.sender} is not the server of escrow {escrow_id}"
        )
    if escrow["settled"]:
        raise move_error("escrow", "EEscrowSettled", f"escrow {escrow_id}")
    # (nonces start at 1: latest_nonce is 0 before any claim, so nonce 0 fails here)
    if nonce <= escrow["latest_nonce"]:
        raise move_error(
            "escrow",
            "EReplayedReceipt",
            f"nonce {nonce} <= {escrow['latest_nonce']} on escrow {escrow_id}",
        )
    # signed for this package, this escrow and its connection (Move: its own original
    # package ID and object ID), so no receipt of another escrow, deployment or chain
    # verifies here
    message = receipt_message(
        x.package, escrow_id, escrow["connection"], total_bytes, total_requests, total_amount, nonce
    )
    if not verify(escrow["client_public_key"], signature, message):
        raise move_error(
            "escrow", "EBadSignature", f"connection {escrow['connection']}, nonce {nonce}"
        )
    expected = fee(escrow["sla"], total_bytes, total_requests)
    if total_amount != expected:
        raise move_error(
            "escrow", "EAmountMismatch", f"receipt says {total_amount} MIST, the fee is {expected}"
        )
    if total_amount > escrow["deposited"]:
        raise move_error(
            "escrow",
            "EReceiptExceedsDeposit",
            f"{total_amount} MIST against {escrow['deposited']} deposited in escrow {escrow_id}",
        )
    if total_amount < escrow["claimed"]:
        raise move_error(
            "escrow",
            "EReceiptNotCumulative",
            f"{total_amount} MIST, {escrow['claimed']} already claimed from escrow {escrow_id}",
        )
    paid: int = total_amount - escrow["claimed"]
    escrow["claimed"] = total_amount
    escrow["latest_nonce"] = nonce
    _note_claim(x, escrow, paid)
    escrow["funds"] -= paid
    x.pay(escrow["server"], paid)
    x.emit(
        "escrow",
        "ReceiptClaimed",
        {
            "escrow": escrow_id,
            "connection": escrow["connection"],
            "server": escrow["server"],
            "nonce": nonce,
            "total_bytes": total_bytes,
            "total_requests": total_requests,
            "total_amount": total_amount,
            "paid": paid,
        },
    )
    return paid


def _escrow_counts(escrow: dict[str, Any]) -> dict[str, Any]:
    """The escrow's part of its cap's counts. An escrow a LocalLedger file kept from
    before them (``reserved_epoch``, or no reservation at all) has nothing outstanding on
    its cap: it reports and releases nothing."""
    if "claim_epoch" not in escrow:
        escrow.pop("reserved_epoch", None)
        escrow["reserved"] = 0
        escrow["claim_epoch"] = 0
        escrow["claimed_in_epoch"] = 0
    return escrow


def _note_claim(x: Exec, escrow: dict[str, Any], paid: int) -> None:
    """``escrow::note_claim``: ``paid`` MIST claimed in the current epoch."""
    _escrow_counts(escrow)
    if escrow["claim_epoch"] != x.epoch:
        escrow["claim_epoch"] = x.epoch
        escrow["claimed_in_epoch"] = 0
    escrow["claimed_in_epoch"] += paid


def _report_claims(x: Exec, escrow: dict[str, Any], cap: dict[str, Any], cap_id: str) -> None:
    """``escrow::report_claims``: the claims not yet reported (``reserved - funds``) are
    counted on the cap, the latest of them (up to ``claimed_in_epoch``) as made in
    ``claim_epoch``."""
    _escrow_counts(escrow)
    unreported = escrow["reserved"] - escrow["funds"]
    if unreported <= 0:
        return
    _count_claims(x, cap, cap_id, unreported, escrow["claim_epoch"], escrow["claimed_in_epoch"])
    escrow["reserved"] = escrow["funds"]


def assert_spending_cap(escrow: dict[str, Any], escrow_id: str, cap_id: str) -> None:
    if cap_id != escrow["spending_cap"]:
        raise move_error(
            "escrow",
            "EWrongSpendingCap",
            f"escrow {escrow_id} is bound to {escrow['spending_cap']}",
        )


@rule("escrow::top_up")
def escrow_top_up(x: Exec, escrow_id: str, cap_id: str, amount: int) -> None:
    escrow = x.load(escrow_id, "Escrow")
    cap = x.load(cap_id, "SpendingCap")
    x.take_coin(amount)
    if x.sender != escrow["client"]:
        raise move_error(
            "escrow", "ENotClient", f"{x.sender} is not the client of escrow {escrow_id}"
        )
    if escrow["settled"]:
        raise move_error("escrow", "EEscrowSettled", f"escrow {escrow_id}")
    assert_spending_cap(escrow, escrow_id, cap_id)
    # the claims since the last report first: those of past epochs take no room then
    _report_claims(x, escrow, cap, cap_id)
    reserve(x, cap, cap_id, amount)
    escrow["reserved"] += amount
    escrow["funds"] += amount
    escrow["deposited"] = add_u64(escrow["deposited"], amount)
    x.emit(
        "escrow",
        "EscrowToppedUp",
        {
            "escrow": escrow_id,
            "connection": escrow["connection"],
            "amount": amount,
            "deposited": escrow["deposited"],
        },
    )


def refund_remainder(
    x: Exec, escrow: dict[str, Any], escrow_id: str, cap: dict[str, Any], cap_id: str
) -> int:
    if escrow["settled"]:
        raise move_error("escrow", "EEscrowSettled", f"escrow {escrow_id}")
    assert_spending_cap(escrow, escrow_id, cap_id)
    escrow["settled"] = True
    amount: int = escrow["funds"]
    # what was claimed counts in the epoch it was claimed in; the refund leaves the cap
    _report_claims(x, escrow, cap, cap_id)
    escrow["reserved"] -= _release(x, cap, cap_id, min(amount, escrow["reserved"]))
    escrow["refunded"] += amount
    escrow["funds"] = 0
    x.pay(escrow["client"], amount)
    x.emit(
        "escrow",
        "EscrowRefunded",
        {
            "escrow": escrow_id,
            "connection": escrow["connection"],
            "client": escrow["client"],
            "amount": amount,
        },
    )
    return amount
