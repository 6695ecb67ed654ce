"""An :class:`~dtp.messaging.rpc.RpcServer` or
:class:`~dtp.messaging.rpc.AsyncRpcServer` as the handler of a paid server billing per
request (``dtp.socket.serve(..., billing="requests")``, ``dtp.aio.serve(...,
billing="requests")``, :mod:`dtp.hostid.paid._request_billing`): each connection the paid
server admits is served with a :class:`~dtp.messaging.rpc._fees.RequestPayments` check
made from its bill (the RPC fee engine: docs/messaging.md §2, per-method prices §2.5).
One engine for both servers: the check made, held while its connection is served (by a
thread, or a task), dropped after."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dtp.ledger._objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.rpc._fees import RequestPayments

if TYPE_CHECKING:
    from dtp.hostid.paid._request_billing import ConnectionBill
    from dtp.messaging.rpc._server_base import ServerBase

__all__ = ["BilledConnections"]


class BilledConnections:
    """The checks of the connections a paid server hands ``rpc``, while each is served:
    the RPC server's payments source."""

    def __init__(self, rpc: ServerBase) -> None:
        if rpc.payments is not None:
            raise ValueError(
                'billing="requests": make the RpcServer without payments (the paid '
                "server hands it each connection's check)"
            )
        self.rpc = rpc
        self._lock = threading.Lock()
        self._checks: dict[str, RequestPayments] = {}
        rpc.use_payments(self.check_of)

    def check_of(self, connection_id: str | None) -> RequestPayments:
        """The check of a connection being served (PaymentRequired for any other)."""
        check = None
        if connection_id is not None:
            with self._lock:
                check = self._checks.get(normalize_id(connection_id, "connection ID"))
        if check is None:
            raise E.PaymentRequired("this service is paid per request: connect by host ID")
        return check

    @contextmanager
    def serving(self, bill: ConnectionBill) -> Iterator[RequestPayments]:
        """The check of ``bill``, the payments source's for its connection while the
        block serves it."""
        check = RequestPayments(
            bill.scope, bill.sla, bill.client_public_key, bill.deposited, on_receipt=bill.keep
        )
        check.read_deposit = bill.read_deposit
        if bill.latest is not None:
            check.resume(bill.latest)  # (its requests were served: not paid twice)
        with self._lock:
            self._checks[bill.connection_id] = check
        try:
            yield check
        finally:
            # (the RPC server keeps the check beyond the connection's streams, among its
            # most recent: a client reconnecting on this ledger connection carries on
            # from its count; one it forgot is resumed from the store's receipt)
            with self._lock:
                self._checks.pop(bill.connection_id, None)

    def serve(self, sock: object, bill: ConnectionBill) -> None:
        """Serve ``sock`` with the check of ``bill`` until its first stream ends (a
        blocking :class:`~dtp.messaging.rpc.RpcServer`'s)."""
        with self.serving(bill):
            self.rpc.serve_connection(sock)  # type: ignore[attr-defined]

    async def serve_async(self, reader: Any, writer: Any, bill: ConnectionBill) -> None:
        """Serve ``reader``/``writer`` with the check of ``bill`` until the first
        stream ends (an :class:`~dtp.messaging.rpc.AsyncRpcServer`'s)."""
        with self.serving(bill):
            await self.rpc.serve_connection(reader, writer)  # type: ignore[attr-defined]
