"""LocalLedger rules that delete what is over: a settled connection's TransportControl and
Escrow (``transport_control::destroy``; a sponsored one's by
``sponsor::reimburse_and_destroy``, its pledge released first), a paid or refunded ResponseEscrow
(``response_escrow::destroy``), a ticket holder's entry once the event went on air and an
ended, empty TicketSale (``tickets::leave``, ``tickets::destroy``), with the checks in the
order of the ``.move`` files (docs/escrow.md §7, §12, §15). Each joins
:data:`dtp.ledger.local.rules.FUNCTIONS` (``@rule``) as :mod:`dtp.ledger.local._store`
imports this module.

Each is sent by whoever paid for the object's storage, to whom Sui credits the rebate of
a deleted object (the deleting transaction's gas payer); LocalLedger charges no gas, so
here the rows simply go, and no MIST moves.
"""

from __future__ import annotations

from typing import Any

from dtp.errors import ChainError, move_error
from dtp.ledger.local.rules._common import Exec, rule
from dtp.ledger.local.rules._economics import check_lane, pay_pledge

__all__ = [
    "response_escrow_destroy",
    "sponsor_reimburse_and_destroy",
    "tc_destroy",
    "tickets_destroy",
    "tickets_leave",
]


def _not_empty(what: str, object_id: str, funds: int) -> ChainError:
    # ``balance::destroy_zero`` of a balance that is not empty: the rules above keep
    # every deleted object empty, so only damaged data gets here
    return ChainError(
        f"{what} {object_id} still holds {funds} MIST (balance::ENonZero)",
        name="ENonZero",
        module="balance",
    )


@rule("transport_control::destroy")
def tc_destroy(x: Exec, tc_id: str, escrow_id: str) -> None:
    """``transport_control::destroy``: the client deletes its settled connection and the
    connection's escrow; a sponsored one only through :func:`sponsor_reimburse_and_destroy`."""
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    _assert_deletable(x, tc_id, tc, escrow_id)
    if tc.get("sponsor") is not None:  # (a file's connection from before: none)
        raise move_error(
            "transport_control",
            "ESponsored",
            f"connection {tc_id} was opened through sponsor lane {tc['sponsor']}",
        )
    _delete_connection(x, tc_id, tc, escrow_id, escrow)


@rule("sponsor::reimburse_and_destroy")
def sponsor_reimburse_and_destroy(
    x: Exec, pool_id: str, lane_id: str, tc_id: str, escrow_id: str
) -> int:
    """``sponsor::reimburse_and_destroy``: the client deletes its settled sponsored
    connection, the lane's pledge to it reimbursed first if the lane still holds it."""
    pool = x.load(pool_id, "SponsorPool")
    lane = x.load(lane_id, "SponsorLane")
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    check_lane(pool_id, lane_id, lane)
    if tc.get("sponsor") != lane_id:
        raise move_error(
            "sponsor",
            "ENotSponsored",
            f"connection {tc_id} was not opened through lane {lane_id}",
        )
    _assert_deletable(x, tc_id, tc, escrow_id)
    amount = 0
    if tc_id in lane["pledges"]:
        amount = pay_pledge(x, pool, pool_id, lane, lane_id, tc, tc_id, escrow)
    _delete_connection(x, tc_id, tc, escrow_id, escrow)
    return amount


def _assert_deletable(x: Exec, tc_id: str, tc: dict[str, Any], escrow_id: str) -> None:
    """``transport_control::assert_deletable``: the sender is the client, the connection
    settled, the escrow its own."""
    x.require_sender(tc["client"], "transport_control", "ENotClient", f"connection {tc_id}")
    if not tc["settled"]:
        raise move_error("transport_control", "ENotSettled", f"connection {tc_id}")
    if escrow_id != tc["escrow"]:
        raise move_error(
            "transport_control", "EWrongEscrow", f"connection {tc_id} uses escrow {tc['escrow']}"
        )


def _delete_connection(
    x: Exec, tc_id: str, tc: dict[str, Any], escrow_id: str, escrow: dict[str, Any]
) -> None:
    """``transport_control::delete``: both objects go."""
    if escrow["funds"]:
        raise _not_empty("escrow", escrow_id, escrow["funds"])
    x.delete(escrow_id)
    x.delete(tc_id)
    x.emit(
        "transport_control",
        "ConnectionDeleted",
        {"connection": tc_id, "escrow": escrow_id, "client": tc["client"]},
    )


@rule("response_escrow::destroy")
def response_escrow_destroy(x: Exec, escrow_id: str) -> None:
    """``response_escrow::destroy``: the requester deletes its escrow once paid,
    delivered or refunded."""
    e = x.load(escrow_id, "ResponseEscrow")
    x.require_sender(
        e["requester"], "response_escrow", "ENotRequester", f"response escrow {escrow_id}"
    )
    if e["state"] == 0:
        raise move_error("response_escrow", "EEscrowOpen", f"response escrow {escrow_id}")
    if e["funds"]:
        raise _not_empty("response escrow", escrow_id, e["funds"])
    x.delete(escrow_id)
    x.emit(
        "response_escrow",
        "ResponseEscrowDeleted",
        {"escrow": escrow_id, "requester": e["requester"], "state": e["state"]},
    )


@rule("tickets::leave")
def tickets_leave(x: Exec, sale_id: str) -> int:
    """``tickets::leave``: a holder gives its tickets back once the event went on air
    (its entry goes; ``sold`` stays)."""
    sale = x.load(sale_id, "TicketSale")
    if not sale["on_air"]:
        raise move_error("tickets", "ENotOnAir", f"sale {sale_id}")
    if x.sender not in sale["holders"]:
        raise move_error("tickets", "ENoTickets", f"{x.sender} on sale {sale_id}")
    count: int = sale["holders"].pop(x.sender)
    x.emit("tickets", "TicketsGivenBack", {"sale": sale_id, "buyer": x.sender, "count": count})
    return count


@rule("tickets::destroy")
def tickets_destroy(x: Exec, sale_id: str) -> None:
    """``tickets::destroy``: the organizer deletes a sale that is over and holds no
    entry."""
    sale = x.load(sale_id, "TicketSale")
    x.require_sender(sale["organizer"], "tickets", "ENotOrganizer", f"sale {sale_id}")
    over = sale["on_air"] or sale["cancelled"] or x.now_ms > sale["deadline_ms"]
    if not over:
        raise move_error(
            "tickets",
            "ESaleNotOver",
            f"sale {sale_id} sells until {sale['deadline_ms']} ms, now {x.now_ms} ms",
        )
    if sale["holders"]:
        raise move_error(
            "tickets", "ETicketsHeld", f"{len(sale['holders'])} holders of sale {sale_id}"
        )
    if sale["funds"]:
        raise _not_empty("ticket sale", sale_id, sale["funds"])
    x.delete(sale_id)
    x.emit("tickets", "TicketSaleDeleted", {"sale": sale_id, "organizer": sale["organizer"]})
