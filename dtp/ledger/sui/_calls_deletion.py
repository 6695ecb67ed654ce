"""SuiLedger's own deleting calls (:class:`~dtp.ledger._deletion.Deletions`, which states the
others): a settlement or a refund and the deletion in one
transaction of the builders in :mod:`dtp.ledger.sui._tx_deletion`, the sender credited
the deleted objects' storage rebate in its gas; and what a deletion would give back,
read from the objects' storage on the node (:meth:`DeletionCalls.storage_rebate`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from dtp.identity.keys import HostIdentity
from dtp.ledger._deletion import StorageRebate
from dtp.ledger._objects import Settlement, check_signer, normalize_id
from dtp.ledger.sui import _tx_deletion as tx
from dtp.ledger.sui._calls import SuiCalls
from dtp.ledger.sui._calls_apps import SuiAppCalls
from dtp.ledger.sui._effects import MissingEvent
from dtp.ledger.sui._gas import COIN_STORAGE, TX_UNITS

__all__ = ["REBATE_BPS", "DeletionCalls", "deletion_gas"]

#: Share of a deleted object's storage fee Sui pays back (``storage_rebate_rate``, basis
#: points); the rest is its non-refundable storage fee.
REBATE_BPS: Final = 9_900


def _rebate(storage_fee: int) -> int:
    """What Sui pays back of an object's ``storage_fee`` when it is deleted or rewritten."""
    return storage_fee * REBATE_BPS // 10_000


def deletion_gas(price: int) -> int:
    """What a transaction deleting objects costs its sender besides their rebate, at gas
    price ``price``: one transaction's minimum computation, and its gas coin rewritten
    (the new version's storage less the old one's rebate)."""
    return price * TX_UNITS + COIN_STORAGE - _rebate(COIN_STORAGE)


class DeletionCalls(SuiAppCalls, SuiCalls):
    """``transport_control::destroy`` and ``sponsor::reimburse_and_destroy`` after the
    client's own ``settle`` in one transaction, ``response_escrow::destroy`` after its
    ``refund``; a reimbursement with nothing left to pay."""

    def _reimburse_and_destroy(
        self, signer: HostIdentity, pool_id: str, lane_id: str, connection_id: str, escrow_id: str
    ) -> int:
        try:
            return super()._reimburse_and_destroy(
                signer, pool_id, lane_id, connection_id, escrow_id
            )
        except MissingEvent:
            return 0  # no SponsorReimbursed: the pledge was released before

    def settle_and_destroy(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        check_signer(signer)
        conn = self.get_connection(connection_id)
        tc, escrow, cap = self._settle_refs(connection_id, escrow_id, cap_id)
        if conn.sponsor is None:
            out = self._execute(
                signer,
                "transport_control::settle_and_destroy",
                lambda ctx: tx.settle_and_destroy(ctx, tc, escrow, cap),
            )
        else:
            lane = self._shared(conn.sponsor, "SponsorLane")
            pool = self._shared(self.get_sponsor_lane(conn.sponsor).pool, "SponsorPool")
            out = self._execute(
                signer,
                "sponsor::settle_reimburse_and_destroy",
                lambda ctx: tx.settle_reimburse_and_destroy(ctx, tc, escrow, cap, pool, lane),
            )
        return Settlement.from_event(out.event("ConnectionSettled"))

    def refund_and_destroy_response_escrow(self, signer: HostIdentity, escrow_id: str) -> int:
        check_signer(signer)
        e = self._shared(escrow_id, "ResponseEscrow")
        out = self._execute(
            signer,
            "response_escrow::refund_and_destroy",
            lambda ctx: tx.refund_and_destroy_response_escrow(ctx, e),
        )
        return int(out.event("ResponseFeeRefunded")["amount"])

    def storage_rebate(self, object_ids: Sequence[str]) -> StorageRebate:
        """The rebate Sui pays for deleting ``object_ids`` (each object's storage fee, as
        the node reports it, less the non-refundable part), and :func:`deletion_gas` at
        the network's gas price. Raises ObjectNotFound for an object not there."""
        paid = [self._node.storage_paid(normalize_id(i)) for i in object_ids]
        rebate = sum(_rebate(fee) for fee in paid)
        return StorageRebate(rebate, deletion_gas(self._price.get()))
