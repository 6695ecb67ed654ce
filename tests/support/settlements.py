"""A connection's settlement as the ledger tells it after the fact: its client deletes a
settled connection's objects (docs/escrow.md §7, "Deletion"), so a test that checks a
connection ended reads its ``ConnectionSettled`` event, which outlives them."""

from __future__ import annotations

from dataclasses import dataclass

from dtp.errors import ObjectNotFound
from dtp.ledger._objects import Escrow, EventFilter
from dtp.ledger.interface import Ledger


@dataclass(frozen=True)
class Settled:
    """What a connection's ``ConnectionSettled`` event says."""

    claimed: int
    refunded: int
    deleted: bool
    """Its objects are gone (deleted by its client)."""

    @property
    def deposited(self) -> int:
        """Everything paid in: at settlement it was claimed or refunded."""
        return self.claimed + self.refunded

    balance = 0
    settled = True


def settlement(ledger: Ledger, connection_id: str) -> Settled | None:
    """``connection_id``'s settlement (None: not settled yet)."""
    try:
        if not ledger.get_connection(connection_id).settled:
            return None
        deleted = False
    except ObjectNotFound:
        deleted = True
    events, _ = ledger.events(None, EventFilter(type="ConnectionSettled", object_id=connection_id))
    if not events:
        return None
    last = events[-1]
    return Settled(int(last["claimed"]), int(last["refunded"]), deleted)


def settled_escrow(ledger: Ledger, connection_id: str) -> Escrow | Settled:
    """``connection_id``'s escrow as read, or -- once its client deleted it -- what its
    settlement said (``claimed``, ``refunded``, ``deposited``, ``balance``)."""
    try:
        return ledger.get_escrow(ledger.get_connection(connection_id).escrow)
    except ObjectNotFound:
        done = settlement(ledger, connection_id)
        if done is None:
            raise
        return done


def is_settled(ledger: Ledger, connection_id: str) -> bool:
    """Whether ``connection_id`` is settled (deleted since, or not)."""
    return settlement(ledger, connection_id) is not None
