"""A paid server billing per request (``dtp.socket.serve(..., billing="requests")``):
its handler is an :class:`~dtp.messaging.rpc.RpcServer`, and each RPC request is paid
by the receipt it carries, checked by the RPC fee engine
(:class:`~dtp.messaging.rpc.fees.RequestPayments`, docs/messaging.md §2) -- the same
rules as any paid RPC server, per-method prices included (§2.5). The paid server does
the rest as for metered bytes: admission through the ledger, the Host's firewall while
serving, the receipts kept durably in its store before the request they pay for is
served, and the settlement claiming the newest of them when the connection ends (a
crash's receipts claimed at the next start)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.rpc import RpcServer
from dtp.messaging.rpc.fees import RequestPayments

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger
    from dtp.payments.gate import ReceiptGate
    from dtp.payments.receipt_store import ReceiptStore
    from dtp.transport.blocking.socket import DTPSocket

__all__ = ["RequestBilling"]


class RequestBilling:
    """The per-request billing of a :class:`~dtp.hostid.paid.blocking_server.PaidServer`:
    the RPC server ``rpc`` (made without ``payments``: it takes this object's) serving
    each connection, with the check of its ledger connection built from the receipt
    gate the paid server made at admission (its escrow's key, deposit, SLA), resumed
    from the newest receipt ``store`` holds for it."""

    def __init__(self, rpc: object, store: ReceiptStore, ledger: Ledger) -> None:
        if not isinstance(rpc, RpcServer):
            raise TypeError(
                'billing="requests" serves RPC: the handler is an RpcServer, '
                f"not {type(rpc).__name__!r}"
            )
        if rpc.payments is not None:
            raise ValueError(
                'billing="requests": make the RpcServer without payments (the paid '
                "server hands it each connection's check)"
            )
        self.rpc = rpc
        self.store = store
        self.ledger = ledger
        self._lock = threading.Lock()
        # ledger connection -> its check, while its DTP connection is served
        self._checks: dict[str, RequestPayments] = {}
        rpc.use_payments(self.check_of)

    def check_of(self, connection_id: str | None) -> RequestPayments:
        """The RPC server's payments source: the check of a connection being served."""
        check = None
        if connection_id is not None:
            with self._lock:
                check = self._checks.get(normalize_id(connection_id, "connection ID"))
        if check is None:
            raise E.PaymentRequired("this service is paid per request: connect by host ID")
        return check

    def serve(self, sock: DTPSocket, gate: ReceiptGate, key: str) -> None:
        """Serve the admitted connection ``sock`` (ledger connection ``key``) with the
        RPC server until its first stream ends."""
        check = RequestPayments(
            gate.scope, gate.sla, gate.client_public_key, gate.deposited, on_receipt=self._keep
        )
        escrow_id = gate.escrow_id
        if escrow_id is not None:
            check.read_deposit = lambda: self.ledger.get_escrow(escrow_id).deposited
        stored = self.store.latest(key)
        if stored is not None:
            check.resume(stored.receipt)  # (its requests were served: not paid twice)
        with self._lock:
            self._checks[key] = check
        try:
            self.rpc.serve_connection(sock)
        finally:
            # (the RPC server keeps the check beyond the connection's streams, among
            # its most recent: a client reconnecting on this ledger connection carries
            # on from its count; one it forgot is resumed from the store, above)
            with self._lock:
                self._checks.pop(key, None)

    def _keep(self, receipt: object) -> None:
        """A receipt the RPC fee engine accepted: stored (durably) before the request it
        pays for is served, where the settlement finds it."""
        from dtp.ledger.receipt import Receipt

        assert isinstance(receipt, Receipt)
        self.store.keep(receipt)
