"""What a connection's receipts are bound to and judged by, and receipts made for it
(:class:`ReceiptTerms`), on :mod:`dtp.ledger.receipt`'s public API only -- its
``Receipt`` and, where the receipt format binds a receipt to its escrow and package as
well as its connection, its ``ReceiptScope`` -- so that receipts made here follow the
wire format as it changes. The strategies (:mod:`dtp.testing.strategies._money`) and the
ledger world build on it; it needs no hypothesis."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import dtp.ledger.receipt as _wire
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt, fee

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger

__all__ = ["DEFAULT_PACKAGE", "SCOPED_RECEIPTS", "ReceiptTerms"]

#: Whether receipts are bound to their escrow and package as well as their connection
#: (receipt format version 2, ``ReceiptScope``), or to the connection alone.
SCOPED_RECEIPTS: Final = hasattr(_wire, "ReceiptScope")
# (typed Any: the constructor's first parameter is a scope or a connection ID, by format)
_RECEIPT: Any = Receipt
_SCOPE: Any = getattr(_wire, "ReceiptScope", None)
#: The package ID a :class:`ReceiptTerms` names when none is given (LocalLedger's own
#: stands for it wherever the ledger does not say).
DEFAULT_PACKAGE: Final = "0x" + "d7" * 32


@dataclass(frozen=True)
class ReceiptTerms:
    """What one connection's receipts are bound to and judged by: its IDs, its client's
    key, the SLA and the escrow's state (``deposited``, ``claimed``, ``latest_nonce``).
    ``package`` is the dtp package the escrow belongs to (receipt format version 2 signs
    it; :data:`DEFAULT_PACKAGE` when not given)."""

    connection_id: str
    escrow_id: str
    client: HostIdentity
    sla: Sla
    deposited: int
    claimed: int = 0
    latest_nonce: int = 0
    package: str = DEFAULT_PACKAGE
    #: The usage (bytes, requests) of the receipt claimed last (None: not known, as read
    #: from a ledger, which keeps only its amount).
    claimed_usage: tuple[int, int] | None = (0, 0)

    @classmethod
    def of(cls, ledger: Ledger, connection_id: str, client: HostIdentity) -> ReceiptTerms:
        """The terms of ``connection_id`` as ``ledger`` holds them now (two reads)."""
        escrow = ledger.get_escrow(ledger.get_connection(connection_id).escrow)
        return cls(
            connection_id,
            escrow.id,
            client,
            escrow.sla,
            escrow.deposited,
            escrow.claimed,
            escrow.latest_nonce,
            str(getattr(ledger, "package_id", DEFAULT_PACKAGE)),
            (0, 0) if escrow.claimed == 0 else None,
        )

    def receipt(
        self,
        total_bytes: int,
        total_requests: int,
        total_amount: int | None = None,
        nonce: int | None = None,
        *,
        signer: HostIdentity | None = None,
    ) -> Receipt:
        """A receipt for this connection, signed by ``signer`` (the client by default):
        ``total_amount`` defaults to the fee of the usage, ``nonce`` to the next one."""
        amount = (
            fee(self.sla, total_bytes, total_requests) if total_amount is None else total_amount
        )
        unsigned = self._unsigned(
            self.connection_id,
            self.escrow_id,
            self.package,
            total_bytes,
            total_requests,
            amount,
            self.latest_nonce + 1 if nonce is None else nonce,
        )
        signed: Receipt = unsigned.sign(signer or self.client)
        return signed

    def after(self, receipt: Receipt) -> ReceiptTerms:
        """The terms once ``receipt`` was claimed."""
        return replace(
            self,
            claimed=receipt.total_amount,
            latest_nonce=receipt.nonce,
            claimed_usage=(receipt.total_bytes, receipt.total_requests),
        )

    @staticmethod
    def _unsigned(
        connection_id: str,
        escrow_id: str,
        package: str,
        total_bytes: int,
        total_requests: int,
        total_amount: int,
        nonce: int,
    ) -> Receipt:
        if _SCOPE is not None:
            head: Any = _SCOPE(package, escrow_id, connection_id)
        else:
            head = connection_id
        made: Receipt = _RECEIPT(head, total_bytes, total_requests, total_amount, nonce)
        return made
