"""Deleting what is over, so that the storage it holds goes back to whoever paid for it
(docs/escrow.md §7, §12, §15).

Every object on Sui pays for its storage when it is written, and a deleted object's
storage rebate is credited to the gas payer of the transaction that deletes it. So each
deletion is the payer's own: a connection's client deletes its settled TransportControl
and Escrow (its open paid for them; a sponsored one's with its lane's pledge reimbursed
first, :meth:`Deletions.reimburse_and_destroy`), a requester its paid or refunded ResponseEscrow, a
ticket buyer its holder entry once the event went on air, an organizer its ended, empty
TicketSale. :class:`Deletions` is the part of :class:`~dtp.ledger.interface.Ledger` that
makes those calls; :class:`StorageRebate` says whether one is worth its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from dtp.errors import move_error
from dtp.ledger._move_call import Id, MoveCall, MoveCaller
from dtp.ledger._objects import check_signer

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._economics import SponsorLane
    from dtp.ledger._objects import Settlement, TransportControl

__all__ = ["Deletions", "StorageRebate"]


@dataclass(frozen=True)
class StorageRebate:
    """What deleting some objects gives back to the deleter, and what the deleting
    transaction costs it otherwise (:meth:`Deletions.storage_rebate`)."""

    rebate: int
    """MIST of storage rebate the deletion credits to the sender (0 where the ledger
    charges no gas)."""
    gas: int
    """MIST the deleting transaction costs its sender besides: its computation and its
    gas coin's storage (net of that coin's own rebate)."""
    charged: bool = True
    """Whether the ledger charges gas at all."""

    @classmethod
    def free(cls) -> StorageRebate:
        """A ledger that charges no gas (LocalLedger): nothing comes back, nothing is
        spent, and deleting is always worth it (it frees the ledger's rows)."""
        return cls(0, 0, charged=False)

    @property
    def worth(self) -> bool:
        """Whether deleting gains the sender more than it costs (always on a ledger
        that charges no gas)."""
        return not self.charged or self.rebate > self.gas

    @property
    def net(self) -> int:
        """What the sender gains by deleting, in MIST (negative: it loses)."""
        return self.rebate - self.gas


class _Settles(Protocol):
    """The calls of :class:`~dtp.ledger.interface.Ledger` the two-step defaults make."""

    def settle(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement: ...

    def response_escrow_refund(self, signer: HostIdentity, escrow_id: str) -> int: ...

    def get_connection(self, connection_id: str) -> TransportControl: ...

    def get_sponsor_lane(self, lane_id: str) -> SponsorLane: ...


class Deletions(MoveCaller):
    """The deleting calls of a :class:`~dtp.ledger.interface.Ledger`. Not abstract: a
    ledger written before them keeps working (without ``_move`` each raises
    NotImplementedError), and a client's refunds then leave what is settled on the
    ledger, as before."""

    def destroy_connection(
        self, signer: HostIdentity, connection_id: str, *, escrow_id: str | None = None
    ) -> None:
        """``transport_control::destroy``: the connection's client deletes it and its
        escrow once settled (``escrow_id`` defaults to the connection's). Only the client
        may (``ENotClient``: its open paid for both objects, and the rebate goes to the
        deleting transaction's gas payer), only once settled (``ENotSettled``), and not a
        sponsored connection (``ESponsored``: :meth:`reimburse_and_destroy` deletes it)."""
        check_signer(signer)
        if escrow_id is None:
            # (read only when not given: the call loads and checks both objects itself)
            escrow_id = cast(_Settles, self).get_connection(connection_id).escrow
        args = (Id(connection_id), Id(escrow_id))
        self._move(signer, MoveCall("transport_control", "destroy", args))

    def reimburse_and_destroy(
        self, signer: HostIdentity, connection_id: str, *, escrow_id: str | None = None
    ) -> int:
        """``sponsor::reimburse_and_destroy``: the client deletes its settled sponsored
        connection and its escrow, the lane's pledge to it reimbursed first if the lane
        still holds it, through the lane and pool the connection records. Returns the
        MIST reimbursed (0 when someone's ``reimburse`` came first). A connection that
        was not sponsored raises WrongObject ``ENotSponsored`` before any transaction
        (it has no lane to name)."""
        ledger = cast(_Settles, self)
        tc = ledger.get_connection(connection_id)
        if tc.sponsor is None:
            raise move_error("sponsor", "ENotSponsored", f"connection {tc.id} is not sponsored")
        pool = ledger.get_sponsor_lane(tc.sponsor).pool
        escrow = tc.escrow if escrow_id is None else escrow_id
        return self._reimburse_and_destroy(signer, pool, tc.sponsor, tc.id, escrow)

    def settle_and_destroy(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        """The client's own settlement (``settle``) and its deletion: :meth:`destroy_connection`,
        or :meth:`reimburse_and_destroy` for a sponsored connection. Where the ledger can,
        one transaction (SuiLedger: one programmable transaction, ``settle`` taking the
        objects ``&mut`` and the deletion by value), else one after the other (this
        default; a settlement whose deletion then fails stays settled, and is deleted
        later). Returns the settlement."""
        ledger = cast(_Settles, self)
        settlement = ledger.settle(signer, connection_id, escrow_id=escrow_id, cap_id=cap_id)
        if ledger.get_connection(connection_id).sponsor is not None:
            self.reimburse_and_destroy(signer, connection_id, escrow_id=escrow_id)
        else:
            self.destroy_connection(signer, connection_id, escrow_id=escrow_id)
        return settlement

    def _reimburse_and_destroy(
        self, signer: HostIdentity, pool_id: str, lane_id: str, connection_id: str, escrow_id: str
    ) -> int:
        """``sponsor::reimburse_and_destroy(&pool, &mut lane, tc, escrow)``."""
        check_signer(signer)
        lane = (Id(pool_id), Id(lane_id))
        args = (*lane, Id(connection_id), Id(escrow_id))
        call = MoveCall("sponsor", "reimburse_and_destroy", args, 0, "SponsorReimbursed.amount")
        return int(self._move(signer, call))

    def destroy_response_escrow(self, signer: HostIdentity, escrow_id: str) -> None:
        """``response_escrow::destroy``: the requester deletes its escrow once paid,
        delivered or refunded (``EEscrowOpen`` before)."""
        check_signer(signer)
        args = (Id(escrow_id),)
        self._move(signer, MoveCall("response_escrow", "destroy", args))

    def refund_and_destroy_response_escrow(self, signer: HostIdentity, escrow_id: str) -> int:
        """The requester's ``response_escrow::refund`` after the deadline and
        :meth:`destroy_response_escrow`: one transaction where the ledger can, else one
        after the other (this default). Returns the refund."""
        ledger = cast(_Settles, self)
        refunded = ledger.response_escrow_refund(signer, escrow_id)
        self.destroy_response_escrow(signer, escrow_id)
        return refunded

    def leave_ticket_sale(self, signer: HostIdentity, sale_id: str) -> int:
        """``tickets::leave``: a holder gives its tickets back once the event went on air,
        its entry deleted (it is admitted no more). Returns the tickets given back."""
        check_signer(signer)
        sale = (Id(sale_id),)
        return int(
            self._move(signer, MoveCall("tickets", "leave", sale, 0, "TicketsGivenBack.count"))
        )

    def destroy_ticket_sale(self, signer: HostIdentity, sale_id: str) -> None:
        """``tickets::destroy``: the organizer deletes a sale that is over (on air,
        cancelled or past its deadline) and whose every holder is refunded or left."""
        check_signer(signer)
        self._move(signer, MoveCall("tickets", "destroy", (Id(sale_id),)))

    def storage_rebate(self, object_ids: Sequence[str]) -> StorageRebate:
        """What deleting ``object_ids`` in one transaction would give back to its sender,
        and what that transaction costs it otherwise. May read the network (the objects'
        storage, the gas price): blocking. This default: a ledger that charges no gas."""
        return StorageRebate.free()
