"""A paid server billing per request (``serve(..., billing="requests")``): its handler
is an RpcServer (AsyncRpcServer on asyncio) whose requests are each paid by the receipt
they carry (docs/messaging.md §2, §2.5), billed through one engine
(:mod:`dtp.messaging.rpc._billed`); admission, firewall, durable receipts and
settlement are as for metered bytes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from dtp.ledger._objects import Sla
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt, ReceiptScope
    from dtp.payments._gate import ReceiptGate
    from dtp.payments.receipt_store import ReceiptStore
    from dtp.transport.blocking._socket import DTPSocket

__all__ = [
    "AsyncRequestServer",
    "Billing",
    "ConnectionBill",
    "RequestServer",
    "bill_for",
    "checked_billing",
    "request_server",
]

#: How a paid server bills: by the bytes its transport meters, or per request
Billing = Literal["bytes", "requests"]


@dataclass(frozen=True)
class ConnectionBill:
    """One admitted connection's terms, for the per-request check of its requests."""

    connection_id: str
    """The ledger connection (normalized)."""
    scope: ReceiptScope
    """What its receipts are bound to (package, escrow, connection)."""
    sla: Sla
    client_public_key: bytes
    """The client's Ed25519 key, which signs the receipts."""
    deposited: int
    """The escrow's deposit as admission read it."""
    latest: Receipt | None
    """The newest receipt stored for the connection (its requests were served)."""
    keep: Callable[[Receipt], None]
    """Stores an accepted receipt durably: called before the request it pays for is
    served; the settlement claims the newest stored."""
    read_deposit: Callable[[], int] | None
    """Reads the escrow's deposit again (a client that topped up)."""


class RequestServer(Protocol):
    """What a handler of ``billing="requests"`` is (``RpcServer`` is one)."""

    def bill_per_request(self) -> None:
        """Take the paid server's checks as the fee source (raises TypeError or
        ValueError when the server cannot: made with fees of its own)."""

    def serve_billed(self, sock: DTPSocket, bill: ConnectionBill) -> None:
        """Serve the admitted connection ``sock``, its requests checked against
        ``bill``, until its first stream ends."""


class AsyncRequestServer(Protocol):
    """What a handler of ``dtp.aio.serve(..., billing="requests")`` is
    (``AsyncRpcServer`` is one)."""

    def bill_per_request(self) -> None:
        """As :meth:`RequestServer.bill_per_request`."""

    async def serve_billed(self, reader: Any, writer: Any, bill: ConnectionBill) -> None:
        """Serve the admitted connection ``reader``/``writer``, its requests checked
        against ``bill``, until its first stream ends."""


def checked_billing(billing: object) -> Billing:
    """``billing`` as the paid servers take it (ValueError for anything but "bytes" or
    "requests")."""
    if billing not in ("bytes", "requests"):
        raise ValueError(f'billing is "bytes" or "requests", not {billing!r}')
    return billing


def request_server(handler: object, *, asynchronous: bool) -> Any:
    """The handler of ``billing="requests"``, made ready (:meth:`bill_per_request`
    called): an RpcServer for the blocking paid server, an AsyncRpcServer for the
    asyncio one (``asynchronous``). TypeError for a handler that serves no requests, or
    the other kind's; ValueError for one that has fees of its own."""
    serve_billed = getattr(handler, "serve_billed", None)
    wanted = "an AsyncRpcServer" if asynchronous else "an RpcServer"
    if not (callable(getattr(handler, "bill_per_request", None)) and callable(serve_billed)):
        raise TypeError(
            f'billing="requests" serves RPC: the handler is {wanted}, '
            f"not {type(handler).__name__!r}"
        )
    if inspect.iscoroutinefunction(serve_billed) != asynchronous:
        raise TypeError(
            f'billing="requests" on this server takes {wanted}, not {type(handler).__name__!r}'
        )
    handler.bill_per_request()  # type: ignore[attr-defined]
    return handler


def bill_for(
    gate: ReceiptGate,
    connection_id: str,
    store: ReceiptStore,
    ledger: Ledger,
    kept: Callable[[Receipt], None] | None = None,
) -> ConnectionBill:
    """The bill of a connection from its receipt gate and the store's newest receipt;
    ``kept(receipt)`` is told of each receipt once stored."""
    stored = store.latest(connection_id)
    escrow_id = gate.escrow_id

    def keep(receipt: Receipt) -> None:
        if store.keep(receipt) and kept is not None:
            kept(receipt)

    return ConnectionBill(
        connection_id,
        gate.scope,
        gate.sla,
        gate.client_public_key,
        gate.deposited,
        None if stored is None else stored.receipt,
        keep,
        None if escrow_id is None else (lambda: ledger.get_escrow(escrow_id).deposited),
    )
