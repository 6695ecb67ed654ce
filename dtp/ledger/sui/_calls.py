"""SuiLedger's calls of hosts and firewalls, connections, caps, escrows and pipes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dtp.errors import InvalidArgument
from dtp.ledger._objects import OpenedConnection, Settlement, Sla, check_signer, normalize_id
from dtp.ledger.interface import Endpoint, SettleItem
from dtp.ledger.receipt import Receipt
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._effects import MissingEvent
from dtp.ledger.sui._gas import SETTLE_BATCH, SETTLE_WITH_RECEIPT
from dtp.ledger.sui._tx import SharedRef, TxContext

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
from dtp.ledger.sui._ledger import SuiLedgerCore, signer_key

# -- argument checks (as LocalLedger makes them, before any node I/O) ----------------------------


def _check_sla(sla: Sla) -> None:
    """``sla`` is an :class:`Sla` of u64 prices (a tuple failed as an AttributeError)."""
    if not isinstance(sla, Sla):
        raise InvalidArgument(f"sla must be an Sla, got {type(sla).__name__}.")
    for value, what in (
        (sla.price_per_kib, "price_per_kib"),
        (sla.price_per_request, "price_per_request"),
        (sla.min_deposit, "min_deposit"),
    ):
        sui_tx.encode_u64(value, what)


class SuiCalls(SuiLedgerCore):
    """SuiLedger's calls of hosts and firewalls, connections, spending caps, escrows and
    pipes."""

    # -- host ------------------------------------------------------------------------------

    def create_host(
        self, signer: HostIdentity, noise_static_key: bytes, endpoints: Sequence[Endpoint] = ()
    ) -> str:
        check_signer(signer)
        # converted here, before any node I/O: bytes(32) would be 32 zero bytes, and
        # list("a:1") three endpoints (as_bytes_list refuses a single value)
        key = sui_tx.as_bytes(noise_static_key, "noise_static_key")
        eps = sui_tx.as_bytes_list(endpoints)
        out = self._execute(signer, "host::create", lambda ctx: sui_tx.create_host(ctx, key, eps))
        return out.created_of("Host") or str(out.event("HostCreated")["host"])

    def _host_call(
        self,
        signer: HostIdentity,
        host_id: str,
        function: str,
        build: Callable[[TxContext, SharedRef], bytes],
    ) -> None:
        host = self._shared(host_id, "Host")
        self._execute(signer, f"host::{function}", lambda ctx: build(ctx, host))

    def set_authority(self, signer: HostIdentity, host_id: str, new_authority: str) -> None:
        check_signer(signer)
        new_authority = normalize_id(new_authority, "address")
        self._host_call(
            signer,
            host_id,
            "set_authority",
            lambda ctx, h: sui_tx.set_authority(ctx, h, new_authority),
        )

    def set_noise_static_key(self, signer: HostIdentity, host_id: str, key: bytes) -> None:
        check_signer(signer)
        raw = sui_tx.as_bytes(key, "key")
        self._host_call(
            signer,
            host_id,
            "set_noise_static_key",
            lambda ctx, h: sui_tx.set_noise_static_key(ctx, h, raw),
        )

    def set_endpoints(
        self, signer: HostIdentity, host_id: str, endpoints: Sequence[Endpoint]
    ) -> None:
        check_signer(signer)
        eps = sui_tx.as_bytes_list(endpoints)
        self._host_call(
            signer, host_id, "set_endpoints", lambda ctx, h: sui_tx.set_endpoints(ctx, h, eps)
        )

    def set_firewall_mode(self, signer: HostIdentity, host_id: str, mode: int) -> None:
        check_signer(signer)
        sui_tx.encode_u8(mode, "The firewall mode")
        self._host_call(
            signer,
            host_id,
            "set_firewall_mode",
            lambda ctx, h: sui_tx.set_firewall_mode(ctx, h, mode),
        )

    def _firewall_list(self, fn: str, signer: HostIdentity, host_id: str, client: str) -> None:
        client = normalize_id(client, "address")
        build = sui_tx.BUILDERS[fn]
        self._host_call(signer, host_id, fn, lambda ctx, h: build(ctx, h, client))

    def allow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("allow", signer, host_id, client)

    def disallow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("disallow", signer, host_id, client)

    def deny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("deny", signer, host_id, client)

    def undeny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("undeny", signer, host_id, client)

    def set_client_limits(
        self,
        signer: HostIdentity,
        host_id: str,
        max_connections_per_client: int,
        max_bytes_per_sec: int,
        max_requests_per_sec: int,
    ) -> None:
        check_signer(signer)
        limits = (max_connections_per_client, max_bytes_per_sec, max_requests_per_sec)
        for value, what in zip(
            limits,
            ("max_connections_per_client", "max_bytes_per_sec", "max_requests_per_sec"),
            strict=True,
        ):
            self._amount(value, what)
        self._host_call(
            signer,
            host_id,
            "set_client_limits",
            lambda ctx, h: sui_tx.set_client_limits(ctx, h, *limits),
        )

    def add_service(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        kind: str | bytes,
        sla: Sla,
        max_connections: int = 0,
    ) -> None:
        check_signer(signer)
        self._check_port(port)
        sui_tx.as_bytes(kind, "kind")  # the builder encodes it the same way, after I/O
        _check_sla(sla)
        self._amount(max_connections, "max_connections")
        self._host_call(
            signer,
            host_id,
            "add_service",
            lambda ctx, h: sui_tx.add_service(ctx, h, port, kind, sla, max_connections),
        )

    def update_service(
        self, signer: HostIdentity, host_id: str, port: int, sla: Sla, max_connections: int = 0
    ) -> None:
        check_signer(signer)
        self._check_port(port)
        _check_sla(sla)
        self._amount(max_connections, "max_connections")
        self._host_call(
            signer,
            host_id,
            "update_service",
            lambda ctx, h: sui_tx.update_service(ctx, h, port, sla, max_connections),
        )

    def remove_service(self, signer: HostIdentity, host_id: str, port: int) -> None:
        check_signer(signer)
        self._check_port(port)
        self._host_call(
            signer, host_id, "remove_service", lambda ctx, h: sui_tx.remove_service(ctx, h, port)
        )

    # -- spending cap ----------------------------------------------------------------------

    def create_spending_cap(self, signer: HostIdentity, max_per_epoch: int) -> str:
        check_signer(signer)
        self._amount(max_per_epoch, "max_per_epoch")
        out = self._execute(
            signer,
            "spending_cap::create",
            lambda ctx: sui_tx.create_spending_cap(ctx, max_per_epoch),
        )
        return out.created_of("SpendingCap") or str(out.event("SpendingCapCreated")["cap"])

    def set_max_per_epoch(self, signer: HostIdentity, cap_id: str, max_per_epoch: int) -> None:
        check_signer(signer)
        self._amount(max_per_epoch, "max_per_epoch")
        cap = self._shared(cap_id, "SpendingCap")
        self._execute(
            signer,
            "spending_cap::set_max_per_epoch",
            lambda ctx: sui_tx.set_max_per_epoch(ctx, cap, max_per_epoch),
        )

    # -- connections and escrow ------------------------------------------------------------

    def open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> OpenedConnection:
        check_signer(signer)
        self._check_port(port)
        self._amount(deposit, "the deposit")
        key = signer_key(signer, client_public_key, "client_public_key")
        host = self._shared(host_id, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "transport_control::open",
            lambda ctx: sui_tx.open_connection(ctx, host, port, cap, deposit, key),
            spend=deposit,
        )
        # the ConnectionOpened event: IDs, SLA and deposit, as LocalLedger reports them
        # (the created objects alone gave sla=None, deposit=None here)
        return OpenedConnection.from_event(out.event("ConnectionOpened").fields)

    def open_session_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        session_public_key: bytes,
    ) -> OpenedConnection:
        check_signer(signer)
        self._check_port(port)
        self._amount(deposit, "the deposit")
        key = sui_tx.as_bytes(session_public_key, "session_public_key")
        host = self._shared(host_id, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "transport_control::open_with_session_key",
            lambda ctx: sui_tx.open_session_connection(ctx, host, port, cap, deposit, key),
            spend=deposit,
        )
        return OpenedConnection.from_event(out.event("ConnectionOpened").fields)

    def top_up(
        self, signer: HostIdentity, escrow_id: str, amount: int, *, cap_id: str | None = None
    ) -> None:
        check_signer(signer)
        self._amount(amount, "the top-up amount")
        if cap_id is None:
            cap_id = self.get_escrow(escrow_id).spending_cap
        escrow = self._shared(escrow_id, "Escrow")
        cap = self._shared(cap_id, "SpendingCap")
        self._execute(
            signer,
            "escrow::top_up",
            lambda ctx: sui_tx.top_up(ctx, escrow, cap, amount),
            spend=amount,
        )

    @staticmethod
    def _check_receipt(receipt: Receipt) -> None:
        if not isinstance(receipt, Receipt):
            raise InvalidArgument(f"receipt must be a Receipt, got {type(receipt).__name__}.")
        sui_tx.as_bytes(receipt.signature, "signature")
        for value, what in (
            (receipt.total_bytes, "total_bytes"),
            (receipt.total_requests, "total_requests"),
            (receipt.total_amount, "total_amount"),
            (receipt.nonce, "nonce"),
        ):
            sui_tx.encode_u64(value, what)

    def claim(self, signer: HostIdentity, escrow_id: str, receipt: Receipt) -> int:
        check_signer(signer)
        self._check_receipt(receipt)
        escrow = self._shared(escrow_id, "Escrow")
        out = self._execute(signer, "escrow::claim", lambda ctx: sui_tx.claim(ctx, escrow, receipt))
        return int(out.event("ReceiptClaimed")["paid"])

    def _settle_refs(
        self, connection_id: str, escrow_id: str | None, cap_id: str | None
    ) -> tuple[SharedRef, SharedRef, SharedRef]:
        """The connection's, its escrow's and its cap's references (``escrow_id`` and
        ``cap_id`` passing others explicitly)."""
        conn = self.get_connection(connection_id)
        tc = self._shared(conn.id, "TransportControl")
        escrow = self._shared(escrow_id if escrow_id is not None else conn.escrow, "Escrow")
        cap = self._shared(cap_id if cap_id is not None else conn.spending_cap, "SpendingCap")
        return tc, escrow, cap

    def close_connection(self, signer: HostIdentity, connection_id: str) -> None:
        check_signer(signer)
        tc = self._shared(connection_id, "TransportControl")
        self._execute(
            signer, "transport_control::close", lambda ctx: sui_tx.close_connection(ctx, tc)
        )

    def finalize(self, signer: HostIdentity, connection_id: str) -> None:
        check_signer(signer)
        tc = self._shared(connection_id, "TransportControl")
        self._execute(signer, "transport_control::finalize", lambda ctx: sui_tx.finalize(ctx, tc))

    def settle(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        check_signer(signer)
        tc, escrow, cap = self._settle_refs(connection_id, escrow_id, cap_id)
        out = self._execute(
            signer,
            "transport_control::settle",
            lambda ctx: sui_tx.settle(ctx, tc, escrow, cap),
        )
        settled = out.event("ConnectionSettled")
        return Settlement(0, int(settled["claimed"]), int(settled["refunded"]))

    def settle_with_receipt(
        self,
        signer: HostIdentity,
        connection_id: str,
        receipt: Receipt,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        check_signer(signer)
        self._check_receipt(receipt)
        tc, escrow, cap = self._settle_refs(connection_id, escrow_id, cap_id)
        out = self._execute(
            signer,
            "transport_control::settle_with_receipt",
            lambda ctx: sui_tx.settle_with_receipt(ctx, tc, escrow, cap, receipt),
        )
        settled = out.event("ConnectionSettled")
        paid = int(out.event("ReceiptClaimed")["paid"])
        return Settlement(paid, int(settled["claimed"]), int(settled["refunded"]))

    def settle_batch(self, signer: HostIdentity, items: Sequence[SettleItem]) -> list[Settlement]:
        """One programmable transaction settling every item (:func:`sui_tx.settle_batch`),
        all or nothing: a ChainError means none was settled. One item is the
        transaction :meth:`settle` or :meth:`settle_with_receipt` sends. What the batch
        paid beyond one settlement, per further connection, is what
        :meth:`end_gas` gives as ``batch_claim`` from then on."""
        check_signer(signer)
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise InvalidArgument(f"items must be a sequence of SettleItem, got {items!r:.60}.")
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, SettleItem):
                raise InvalidArgument(f"a batch item must be a SettleItem, got {item!r:.60}.")
            if item.receipt is not None:
                self._check_receipt(item.receipt)
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
            done.append(Settlement(claimed, int(event["claimed"]), int(event["refunded"])))
        solo = self._gas_book.estimate(SETTLE_WITH_RECEIPT)
        if solo is not None and all(i.receipt is not None for i in items):
            self._gas_book.sample(SETTLE_BATCH, (out.gas_cost - solo) // (len(items) - 1))
        return done

    # -- pipes -----------------------------------------------------------------------------

    def create_pipe(self, signer: HostIdentity, connection_id: str, inner_count: int) -> str:
        check_signer(signer)
        self._amount(inner_count, "inner_count")
        tc = self._shared(connection_id, "TransportControl")
        out = self._execute(
            signer, "pipe::create", lambda ctx: sui_tx.create_pipe(ctx, tc, inner_count)
        )
        return out.created_of("Pipe") or str(out.event("PipeCreated")["pipe"])

    def pipe_send(self, signer: HostIdentity, pipe_id: str, inner: int, data: bytes) -> int:
        check_signer(signer)
        self._amount(inner, "inner")
        payload = sui_tx.as_bytes(data, "data")
        pipe = self._owned(signer, pipe_id, "Pipe")
        out = self._execute(
            signer, "pipe::send", lambda ctx: sui_tx.pipe_send(ctx, pipe, inner, payload)
        )
        return int(out.event("PipeDataSent")["seq"])

    def pipe_sync(self, signer: HostIdentity, pipe_id: str, inner: int, acked: int) -> None:
        check_signer(signer)
        self._amount(inner, "inner")
        self._amount(acked, "acked")
        pipe = self._owned(signer, pipe_id, "Pipe")
        self._execute(signer, "pipe::sync", lambda ctx: sui_tx.pipe_sync(ctx, pipe, inner, acked))

    def destroy_pipe(self, signer: HostIdentity, pipe_id: str) -> None:
        check_signer(signer)
        pipe = self._owned(signer, pipe_id, "Pipe")
        self._execute(signer, "pipe::destroy", lambda ctx: sui_tx.destroy_pipe(ctx, pipe))
