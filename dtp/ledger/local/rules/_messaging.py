"""The rules of ``dtp::mailbox`` and ``dtp::response_escrow``: sealed messages for offline
hosts and prepaid response fees."""

from __future__ import annotations

from typing import Any

from dtp.errors import move_error
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger.local.rules._common import SHARED, Exec, rule
from dtp.ledger.local.rules._escrow import verify

# -- mailbox (sealed messages for offline hosts) ------------------------------------------------


@rule("mailbox::send")
def mailbox_send(x: Exec, host_id: str, payload: bytes) -> None:
    from dtp.ledger.interface import MAX_MAIL_PAYLOAD

    x.load(host_id, "Host")
    if not payload:
        raise move_error("mailbox", "EEmptyPayload", f"mail for host {host_id}")
    if len(payload) > MAX_MAIL_PAYLOAD:
        raise move_error(
            "mailbox", "EPayloadTooLarge", f"{len(payload)} > {MAX_MAIL_PAYLOAD} bytes"
        )
    x.emit("mailbox", "MailDeposited", {"recipient_host": host_id, "payload": payload})


# -- response escrow (prepaid response fees) -----------------------------------------------------


@rule("response_escrow::deposit")
def response_escrow_deposit(
    x: Exec, server: str, request_id: bytes, public_key: bytes, deadline_ms: int, amount: int
) -> str:
    from dtp.ledger.interface import MAX_REQUEST_ID_LENGTH, RESPONSE_ESCROW_OPEN

    x.take_coin(amount)
    if len(public_key) != 32:
        raise move_error("response_escrow", "EInvalidPublicKey", f"{len(public_key)} bytes")
    if sui_address_from_public_key(public_key) != x.sender:
        raise move_error("response_escrow", "EKeyMismatch", f"sender {x.sender}")
    if amount == 0:
        raise move_error("response_escrow", "EZeroAmount", "a response fee must be positive")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise move_error(
            "response_escrow",
            "ERequestIdTooLong",
            f"{len(request_id)} > {MAX_REQUEST_ID_LENGTH} bytes",
        )
    if deadline_ms <= x.now_ms:
        raise move_error("response_escrow", "EDeadlineInPast", f"{deadline_ms} <= {x.now_ms}")
    escrow_id = x.create(
        "ResponseEscrow",
        SHARED,
        {
            "requester": x.sender,
            "requester_public_key": public_key,
            "server": server,
            "request_id": request_id,
            "deadline_ms": deadline_ms,
            "funds": amount,
            "amount": amount,
            "state": RESPONSE_ESCROW_OPEN,
        },
    )
    x.emit(
        "response_escrow",
        "ResponseFeeDeposited",
        {
            "escrow": escrow_id,
            "requester": x.sender,
            "server": server,
            "request_id": request_id,
            "amount": amount,
            "deadline_ms": deadline_ms,
        },
    )
    return escrow_id


def _open_response_escrow(x: Exec, escrow_id: str, role: str) -> dict[str, Any]:
    from dtp.ledger.interface import RESPONSE_ESCROW_OPEN

    e = x.load(escrow_id, "ResponseEscrow")
    if role == "server":
        x.require_sender(e["server"], "response_escrow", "ENotServer", escrow_id)
    if role == "requester":
        x.require_sender(e["requester"], "response_escrow", "ENotRequester", escrow_id)
    if e["state"] != RESPONSE_ESCROW_OPEN:
        raise move_error("response_escrow", "EEscrowClosed", f"response escrow {escrow_id}")
    return e


def _pay_out(x: Exec, e: dict[str, Any], to: str, state: int) -> int:
    e["state"] = state
    return x.pay_all(e, "funds", to)


@rule("response_escrow::claim")
def response_escrow_claim(x: Exec, escrow_id: str, response_hash: bytes, signature: bytes) -> int:
    from dtp.ledger.interface import RESPONSE_ESCROW_PAID, response_ack_message

    e = _open_response_escrow(x, escrow_id, "server")
    if len(response_hash) != 32:
        raise move_error("response_escrow", "EInvalidHash", f"{len(response_hash)} bytes")
    message = response_ack_message(x.package, escrow_id, response_hash)
    if not verify(e["requester_public_key"], signature, message):
        raise move_error("response_escrow", "EBadSignature", f"response escrow {escrow_id}")
    amount = _pay_out(x, e, e["server"], RESPONSE_ESCROW_PAID)
    x.emit(
        "response_escrow",
        "ResponseFeeClaimed",
        {
            "escrow": escrow_id,
            "server": e["server"],
            "amount": amount,
            "response_hash": response_hash,
        },
    )
    return amount


@rule("response_escrow::deliver")
def response_escrow_deliver(x: Exec, escrow_id: str, response: bytes) -> int:
    from dtp.ledger.interface import MAX_RESPONSE_LENGTH, RESPONSE_ESCROW_DELIVERED

    e = _open_response_escrow(x, escrow_id, "server")
    if x.now_ms > e["deadline_ms"]:
        raise move_error("response_escrow", "EDeadlinePassed", f"{x.now_ms} > {e['deadline_ms']}")
    if not response:
        # all the chain can tell of an answer: there is one (docs/escrow.md §12)
        raise move_error("response_escrow", "EEmptyResponse", f"escrow {escrow_id}")
    if len(response) > MAX_RESPONSE_LENGTH:
        raise move_error(
            "response_escrow", "EResponseTooLarge", f"{len(response)} > {MAX_RESPONSE_LENGTH}"
        )
    amount = _pay_out(x, e, e["server"], RESPONSE_ESCROW_DELIVERED)
    x.emit(
        "response_escrow",
        "ResponseDelivered",
        {
            "escrow": escrow_id,
            "requester": e["requester"],
            "request_id": e["request_id"],
            "response": response,
            "amount": amount,
        },
    )
    return amount


@rule("response_escrow::refund")
def response_escrow_refund(x: Exec, escrow_id: str) -> int:
    from dtp.ledger.interface import RESPONSE_ESCROW_REFUNDED

    e = _open_response_escrow(x, escrow_id, "requester")
    if x.now_ms <= e["deadline_ms"]:
        raise move_error(
            "response_escrow", "EDeadlineNotReached", f"{x.now_ms} <= {e['deadline_ms']}"
        )
    amount = _pay_out(x, e, e["requester"], RESPONSE_ESCROW_REFUNDED)
    x.emit(
        "response_escrow",
        "ResponseFeeRefunded",
        {"escrow": escrow_id, "requester": e["requester"], "amount": amount},
    )
    return amount
