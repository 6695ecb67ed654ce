"""LocalLedger: the embedded ledger's class, with the calls of hosts, firewalls,
connections, spending caps, escrows and pipes (the applications' calls are its mixins)."""

from __future__ import annotations

from collections.abc import Sequence

from dtp.errors import InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import (
    OpenedConnection,
    Settlement,
    Sla,
    as_bytes,
    as_bytes_list,
    check_signer,
)
from dtp.ledger.interface import Endpoint, PendingOpen
from dtp.ledger.local._call_arguments import u64
from dtp.ledger.local._calls_apps import BroadcastCalls, MessagingCalls, PaymentModelCalls
from dtp.ledger.local._calls_coordination import CoordinationCalls
from dtp.ledger.local._reads import LedgerReads
from dtp.ledger.local._store import LocalStore
from dtp.ledger.local._tx import Address, TxValue, derive_object_id, tx_digest
from dtp.ledger.receipt import Receipt


def _endpoints(values: Sequence[Endpoint]) -> list[TxValue]:
    return list[TxValue](as_bytes_list(values))


class LocalLedger(
    BroadcastCalls, MessagingCalls, PaymentModelCalls, CoordinationCalls, LedgerReads, LocalStore
):
    """The embedded ledger (see :mod:`dtp.ledger.local`). ``path`` is a file (created if missing)
    or ``":memory:"``: a ``str`` or ``os.PathLike`` (TypeError otherwise);
    ``clock_ms`` freezes the clock at that time when given. Bad arguments are refused
    before anything is created.

    A handle may be used from many threads. It also survives ``fork()``: in the child, a
    file ledger opens a connection of its own at its first use (SQLite connections must
    not cross a fork, so the inherited one is left untouched) and draws fresh nonces,
    so parent and child keep sharing the file as any two processes do. A ``:memory:``
    ledger's child goes on with its own copy, which diverges from the parent's from
    then on. After :meth:`close` every call raises :class:`~dtp.errors.LedgerUnavailable`.

    A file that is not a ledger (not SQLite, or another program's SQLite database, left
    untouched), that a newer schema wrote, or that fails under the handle (damaged, a
    writer holding it past the busy timeout) raises
    :class:`~dtp.errors.LedgerUnavailable` naming it, never a bare sqlite3 error."""

    def create_host(
        self, signer: HostIdentity, noise_static_key: bytes, endpoints: Sequence[Endpoint] = ()
    ) -> str:
        key = as_bytes(noise_static_key, "noise_static_key")
        result = self._call(signer, "host", "create", key, _endpoints(endpoints))
        return str(result.value)

    def set_authority(self, signer: HostIdentity, host_id: str, new_authority: str) -> None:
        self._call(
            signer, "host", "set_authority", self._id(host_id), self._id(new_authority, "address")
        )

    def set_noise_static_key(self, signer: HostIdentity, host_id: str, key: bytes) -> None:
        self._call(signer, "host", "set_noise_static_key", self._id(host_id), as_bytes(key, "key"))

    def set_endpoints(
        self, signer: HostIdentity, host_id: str, endpoints: Sequence[Endpoint]
    ) -> None:
        self._call(signer, "host", "set_endpoints", self._id(host_id), _endpoints(endpoints))

    def set_firewall_mode(self, signer: HostIdentity, host_id: str, mode: int) -> None:
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0xFF:
            raise InvalidArgument(f"The firewall mode is a u8, got {mode!r}.")
        self._call(signer, "host", "set_firewall_mode", self._id(host_id), int(mode))

    def _firewall_list(self, fn: str, signer: HostIdentity, host_id: str, client: str) -> None:
        self._call(signer, "host", fn, self._id(host_id), self._id(client, "address"))

    def allow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        self._firewall_list("allow", signer, host_id, client)

    def disallow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        self._firewall_list("disallow", signer, host_id, client)

    def deny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        self._firewall_list("deny", signer, host_id, client)

    def undeny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        self._firewall_list("undeny", signer, host_id, client)

    def set_client_limits(
        self,
        signer: HostIdentity,
        host_id: str,
        max_connections_per_client: int,
        max_bytes_per_sec: int,
        max_requests_per_sec: int,
    ) -> None:
        self._call(
            signer,
            "host",
            "set_client_limits",
            self._id(host_id),
            u64(max_connections_per_client, "max_connections_per_client"),
            u64(max_bytes_per_sec, "max_bytes_per_sec"),
            u64(max_requests_per_sec, "max_requests_per_sec"),
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
        self._call(
            signer,
            "host",
            "add_service",
            self._id(host_id),
            self._port(port),
            as_bytes(kind, "kind"),
            *self._sla_args(sla),
            u64(max_connections, "max_connections"),
        )

    def update_service(
        self, signer: HostIdentity, host_id: str, port: int, sla: Sla, max_connections: int = 0
    ) -> None:
        self._call(
            signer,
            "host",
            "update_service",
            self._id(host_id),
            self._port(port),
            *self._sla_args(sla),
            u64(max_connections, "max_connections"),
        )

    def remove_service(self, signer: HostIdentity, host_id: str, port: int) -> None:
        self._call(signer, "host", "remove_service", self._id(host_id), self._port(port))

    # -- spending cap ----------------------------------------------------------------------------

    def create_spending_cap(self, signer: HostIdentity, max_per_epoch: int) -> str:
        result = self._call(signer, "spending_cap", "create", u64(max_per_epoch, "max_per_epoch"))
        return str(result.value)

    def set_max_per_epoch(self, signer: HostIdentity, cap_id: str, max_per_epoch: int) -> None:
        self._call(
            signer,
            "spending_cap",
            "set_max_per_epoch",
            self._id(cap_id),
            u64(max_per_epoch, "max_per_epoch"),
        )

    # -- connections -----------------------------------------------------------------------------

    def open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> OpenedConnection:
        pending = self.prepare_open_connection(
            signer, host_id, port, cap_id, deposit, client_public_key
        )
        return pending.execute()

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
        result = self._call(
            signer,
            "transport_control",
            "open_with_session_key",
            self._id(host_id),
            self._port(port),
            self._id(cap_id),
            as_bytes(session_public_key, "session_public_key"),
            u64(deposit, "the deposit"),
        )
        opened = next(e for e in result.events if e.name == "ConnectionOpened")
        return OpenedConnection(
            str(result.value),
            str(opened["escrow"]),
            Sla.from_fields(opened["sla"]),
            int(opened["deposit"]),
        )

    def prepare_open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> PendingOpen:
        check_signer(signer)
        key = (
            signer.ed25519_public
            if client_public_key is None
            else as_bytes(client_public_key, "client_public_key")
        )
        signed = self._signed(
            signer,
            "transport_control",
            "open",
            self._id(host_id),
            self._port(port),
            self._id(cap_id),
            key,
            u64(deposit, "the deposit"),
        )

        def run() -> OpenedConnection:
            result = self._execute(*signed)
            opened = next(e for e in result.events if e.name == "ConnectionOpened")
            return OpenedConnection(
                str(result.value),
                str(opened["escrow"]),
                Sla.from_fields(opened["sla"]),
                int(opened["deposit"]),
            )

        # transport_control::open creates the connection first, then its escrow
        digest = tx_digest(signed[1])
        return PendingOpen(derive_object_id(digest, 0), derive_object_id(digest, 1), run)

    def top_up(
        self, signer: HostIdentity, escrow_id: str, amount: int, *, cap_id: str | None = None
    ) -> None:
        if cap_id is None:
            cap_id = self.get_escrow(escrow_id).spending_cap
        self._call(
            signer,
            "escrow",
            "top_up",
            self._id(escrow_id),
            self._id(cap_id),
            u64(amount, "the top-up amount"),
        )

    def claim(self, signer: HostIdentity, escrow_id: str, receipt: Receipt) -> int:
        result = self._call(
            signer, "escrow", "claim", self._id(escrow_id), *self._receipt_args(receipt)
        )
        return int(result.value)

    def _escrow_and_cap(
        self, connection_id: str, escrow_id: str | None, cap_id: str | None
    ) -> tuple[Address, Address, Address]:
        # the connection is read only for what the caller did not give (the rule loads
        # and checks every object itself; a missing connection fails there, ObjectNotFound
        # alike)
        if escrow_id is None or cap_id is None:
            tc = self.get_connection(connection_id)
            escrow_id = tc.escrow if escrow_id is None else escrow_id
            cap_id = tc.spending_cap if cap_id is None else cap_id
        return self._id(connection_id), self._id(escrow_id), self._id(cap_id)

    def close_connection(self, signer: HostIdentity, connection_id: str) -> None:
        self._call(signer, "transport_control", "close", self._id(connection_id))

    def finalize(self, signer: HostIdentity, connection_id: str) -> None:
        self._call(signer, "transport_control", "finalize", self._id(connection_id))

    def settle(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        tc, escrow, cap = self._escrow_and_cap(connection_id, escrow_id, cap_id)
        result = self._call(signer, "transport_control", "settle", tc, escrow, cap)
        return self._settlement(result, 0)

    def settle_with_receipt(
        self,
        signer: HostIdentity,
        connection_id: str,
        receipt: Receipt,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        tc, escrow, cap = self._escrow_and_cap(connection_id, escrow_id, cap_id)
        result = self._call(
            signer,
            "transport_control",
            "settle_with_receipt",
            tc,
            escrow,
            cap,
            *self._receipt_args(receipt),
        )
        return self._settlement(result, int(result.value))

    # -- pipes -----------------------------------------------------------------------------------

    def create_pipe(self, signer: HostIdentity, connection_id: str, inner_count: int) -> str:
        result = self._call(
            signer,
            "pipe",
            "create",
            self._id(connection_id),
            u64(inner_count, "inner_count"),
        )
        return str(result.value)

    def pipe_send(self, signer: HostIdentity, pipe_id: str, inner: int, data: bytes) -> int:
        result = self._call(
            signer, "pipe", "send", self._id(pipe_id), u64(inner, "inner"), as_bytes(data, "data")
        )
        return int(result.value)

    def pipe_sync(self, signer: HostIdentity, pipe_id: str, inner: int, acked: int) -> None:
        self._call(
            signer,
            "pipe",
            "sync",
            self._id(pipe_id),
            u64(inner, "inner"),
            u64(acked, "acked"),
        )

    def destroy_pipe(self, signer: HostIdentity, pipe_id: str) -> None:
        self._call(signer, "pipe", "destroy", self._id(pipe_id))
