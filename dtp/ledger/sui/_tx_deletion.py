"""Offline builders of the deleting entry functions (docs/escrow.md §7, §12, §15), rows of
:data:`dtp.ledger.sui._tx.MOVE_CALLS` like every other builder's. A shared object taken
by value is a mutable shared input, and the call deletes it; a programmable transaction
may borrow an input ``&mut`` in one command and move it in a later one, which lets a
client's own settlement and the deletion be one transaction (:func:`settle_and_destroy`;
a sponsored connection's, :func:`settle_reimburse_and_destroy`),
and a requester's refund and the deletion (:func:`refund_and_destroy_response_escrow`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from dtp.ledger.sui._tx import MOVE_CALL_BUILDERS, MOVE_CALLS, SharedRef, TxContext, _add_call, _Tx

#: The deletions of one Move call each, rows of MOVE_CALLS: ``transport_control::destroy(tc,
#: escrow)``; ``sponsor::reimburse_and_destroy(&pool, &mut lane, tc, escrow)``, a sponsored
#: connection's pledge reimbursed (if the lane still holds it) and its objects deleted;
#: ``response_escrow::destroy(e)``; ``tickets::leave(&mut sale)``; ``tickets::destroy(sale,
#: &clock)``.
destroy_connection = MOVE_CALL_BUILDERS["destroy_connection"]
reimburse_and_destroy = MOVE_CALL_BUILDERS["reimburse_and_destroy"]
destroy_response_escrow = MOVE_CALL_BUILDERS["destroy_response_escrow"]
leave_ticket_sale = MOVE_CALL_BUILDERS["leave_ticket_sale"]
destroy_ticket_sale = MOVE_CALL_BUILDERS["destroy_ticket_sale"]

__all__ = [
    "DELETION_BUILDERS",
    "DELETION_TARGETS",
    "VARIANTS",
    "destroy_connection",
    "destroy_response_escrow",
    "destroy_ticket_sale",
    "leave_ticket_sale",
    "refund_and_destroy_response_escrow",
    "reimburse_and_destroy",
    "settle_and_destroy",
    "settle_reimburse_and_destroy",
]


def settle_and_destroy(
    ctx: TxContext, connection: SharedRef, escrow: SharedRef, cap: SharedRef
) -> bytes:
    """``transport_control::settle(&mut tc, &mut escrow, &mut cap, &clock)`` then
    ``transport_control::destroy(tc, escrow)``: the client's own settlement, and its
    connection's objects deleted, in one transaction (all or nothing)."""
    tx = _Tx(ctx)
    _add_call(tx, "settle", connection, escrow, cap)
    _add_call(tx, "destroy_connection", connection, escrow)
    return tx.finish()


def settle_reimburse_and_destroy(
    ctx: TxContext,
    connection: SharedRef,
    escrow: SharedRef,
    cap: SharedRef,
    pool: SharedRef,
    lane: SharedRef,
) -> bytes:
    """``transport_control::settle(&mut tc, &mut escrow, &mut cap, &clock)`` then
    ``sponsor::reimburse_and_destroy(&pool, &mut lane, tc, escrow)``: a sponsored
    connection's client settles, is reimbursed and deletes it, in one transaction."""
    tx = _Tx(ctx)
    _add_call(tx, "settle", connection, escrow, cap)
    _add_call(tx, "reimburse_and_destroy", pool, lane, connection, escrow)
    return tx.finish()


def refund_and_destroy_response_escrow(ctx: TxContext, escrow: SharedRef) -> bytes:
    """``response_escrow::refund(&mut e, &clock)`` then ``response_escrow::destroy(e)``:
    the requester's refund and the escrow deleted, in one transaction."""
    tx = _Tx(ctx)
    _add_call(tx, "response_escrow_refund", escrow)
    _add_call(tx, "destroy_response_escrow", escrow)
    return tx.finish()


#: The builders that stand for a Ledger method of another name: ``settle_and_destroy`` of a
#: sponsored connection.
VARIANTS: Final = {"settle_reimburse_and_destroy": "settle_and_destroy"}

#: Ledger method name (or :data:`VARIANTS` key) -> builder, for the deletions (apart from
#: :data:`~dtp.ledger.sui._tx.BUILDERS`, which lists exactly the abstract methods of
#: :class:`~dtp.ledger.interface.Ledger`).
DELETION_BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    fn.__name__: fn
    for fn in (
        destroy_connection,
        reimburse_and_destroy,
        settle_and_destroy,
        settle_reimburse_and_destroy,
        destroy_response_escrow,
        refund_and_destroy_response_escrow,
        leave_ticket_sale,
        destroy_ticket_sale,
    )
}

#: The builders of two calls -> the row of MOVE_CALLS their transaction calls last.
_LAST_CALLS: Final = {
    "settle_and_destroy": "destroy_connection",
    "settle_reimburse_and_destroy": "reimburse_and_destroy",
    "refund_and_destroy_response_escrow": "destroy_response_escrow",
}

#: Ledger method name -> the Move function its transaction calls last.
DELETION_TARGETS: Final[dict[str, tuple[str, str]]] = {
    name: MOVE_CALLS[_LAST_CALLS.get(name, name)][:2] for name in DELETION_BUILDERS
}
