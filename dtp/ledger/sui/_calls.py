"""SuiLedger's settlement of many connections in one transaction (its other calls are
:mod:`dtp.ledger._calls`' and the Ledger mixins', sent by ``SuiLedgerCore._move``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dtp.errors import InvalidArgument
from dtp.ledger._calls import LedgerCalls
from dtp.ledger._move_call import check_receipt
from dtp.ledger._objects import Settlement, check_signer, normalize_id
from dtp.ledger.interface import SettleItem, settle_items
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._effects import MissingEvent
from dtp.ledger.sui._gas import SETTLE_BATCH, SETTLE_WITH_RECEIPT
from dtp.ledger.sui._ledger import SuiLedgerCore
from dtp.ledger.sui._tx import SharedRef

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity


class SuiCalls(LedgerCalls, SuiLedgerCore):
    """SuiLedger's own calls: settlements in one programmable transaction."""

    def _settle_refs(
        self, connection_id: str, escrow_id: str | None, cap_id: str | None
    ) -> tuple[SharedRef, SharedRef, SharedRef]:
        """The connection's, its escrow's and its cap's references (``escrow_id`` and
        ``cap_id`` passing others explicitly)."""
        tc, escrow, cap = self._settled(connection_id, escrow_id, cap_id)
        return (
            self._shared(tc.value, "TransportControl"),
            self._shared(escrow.value, "Escrow"),
            self._shared(cap.value, "SpendingCap"),
        )

    def settle_batch(self, signer: HostIdentity, items: Sequence[SettleItem]) -> list[Settlement]:
        """One programmable transaction settling every item (:func:`sui_tx.settle_batch`),
        all or nothing: a ChainError means none was settled. One item is the
        transaction :meth:`settle` or :meth:`settle_with_receipt` sends. What the batch
        paid beyond one settlement, per further connection, is what
        :meth:`end_gas` gives as ``batch_claim`` from then on."""
        check_signer(signer)
        seen: set[str] = set()
        for item in settle_items(items):
            if item.receipt is not None:
                check_receipt(item.receipt)
            key = normalize_id(item.connection_id, "connection ID")
            if key in seen:
                raise InvalidArgument(f"Connection {key} is twice in one batch of settlements.")
            seen.add(key)
        if len(items) > sui_tx.MAX_SETTLE_BATCH:
            raise InvalidArgument(
                f"A batch settles at most {sui_tx.MAX_SETTLE_BATCH} connections, not {len(items)}."
            )
        if len(items) <= 1:
            return super().settle_batch(signer, items)
        calls = [
            (*self._settle_refs(i.connection_id, i.escrow_id, i.cap_id), i.receipt) for i in items
        ]
        out = self._execute(signer, SETTLE_BATCH, lambda ctx: sui_tx.settle_batch(ctx, calls))
        settled = {str(e["connection"]): e for e in out.events if e.name == "ConnectionSettled"}
        paid = {
            str(e["connection"]): int(e["paid"]) for e in out.events if e.name == "ReceiptClaimed"
        }
        done: list[Settlement] = []
        for (tc, _, _, _), item in zip(calls, items, strict=True):
            event = settled.get(tc.object_id)
            if event is None:
                raise MissingEvent(
                    f"Transaction {out.digest} succeeded, but the node's answer has no "
                    f"ConnectionSettled event of {tc.object_id}.",
                    name="MissingEvent",
                    module="sui",
                )
            claimed = paid.get(tc.object_id, 0) if item.receipt is not None else 0
            done.append(Settlement.from_event(event, claimed))
        solo = self._gas_book.estimate(SETTLE_WITH_RECEIPT)
        if solo is not None and all(i.receipt is not None for i in items):
            self._gas_book.sample(SETTLE_BATCH, (out.gas_cost - solo) // (len(items) - 1))
        return done
