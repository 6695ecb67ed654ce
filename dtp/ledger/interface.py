"""The ledger interface: one method per entry point of the ``move/dtp`` package.

Two implementations follow it: :class:`dtp.ledger.local.LocalLedger` (embedded, SQLite)
and ``SuiLedger`` (real Sui through pysui). Both execute the rules of docs/escrow.md with
the same checks, in the same order, raising the same :class:`dtp.errors.ChainError`
subclasses with the same ``.name`` (the Move error constant; see
``dtp.errors.MOVE_ERRORS``).

Conventions:

- The first argument of every state-changing method is the *signer*, the
  :class:`~dtp.identity.keys.HostIdentity` whose address is the transaction sender (Move's
  ``ctx.sender()``). The ledger builds the transaction, signs it with
  ``signer.sign_transaction`` and executes it (``LocalLedger``, running it in this
  process with the signer's key in hand, runs a plain ``HostIdentity``'s as its address
  without the signature; its ``execute`` of raw bytes checks one).
- Object IDs and addresses are ``0x`` + 64 hex digits (a shorter hex form is padded like
  Sui does; anything else raises :class:`~dtp.errors.InvalidObjectId`).
- Money: SUI balances per address, in MIST. Deposits, top-ups and contributions are taken
  from the signer's balance; payments and refunds are added to the receiver's balance.
  Gas is paid on top (``SuiLedger`` from the signer's gas coins; ``LocalLedger`` charges
  none): :meth:`Ledger.end_gas` estimates what a connection's end costs, and
  :meth:`Ledger.gas_spent` tells what an address has paid (dtp.ledger._gas).
- Where Move takes several related objects (a connection's escrow, its cap) the method
  takes the main ID and looks the others up; the optional keyword arguments
  ``escrow_id`` / ``cap_id`` pass a different object explicitly, which is exactly what
  Move would receive (and refuses with ``EWrongEscrow`` / ``EWrongSpendingCap``).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, cast

from dtp.errors import (
    ChainError,
    InvalidArgument,
    InvalidTransaction,
    ObjectNotFound,
    ZkLoginUnsupported,
)
from dtp.ledger._coordination import Coordination
from dtp.ledger._deletion import Deletions
from dtp.ledger._economics import PaymentModels
from dtp.ledger._gas import EndGas, GasSpent
from dtp.ledger._move_call import Id, MoveCall, check_receipt, check_sla, signer_key, u64
from dtp.ledger._objects import (
    MAX_PURE_BYTES,
    Broadcast,
    ChainObject,
    ConnectionState,
    Escrow,
    Event,
    EventFilter,
    EventRead,
    Host,
    OpenedConnection,
    Pipe,
    Service,
    Settlement,
    Sla,
    SpendingCap,
    TransportControl,
    as_bytes,
    as_bytes_list,
    check_port,
    check_signer,
    from_move_fields,
    is_whole,
    normalize_id,
)
from dtp.ledger._versions import Versions

if TYPE_CHECKING:
    from dtp.identity._zklogin import ZkLoginCheck
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.receipt import Receipt, ReceiptScope

__all__ = [
    "MAX_MAIL_PAYLOAD",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_RESPONSE_LENGTH",
    "RESPONSE_ACK_DOMAIN",
    "RESPONSE_ESCROW_DELIVERED",
    "RESPONSE_ESCROW_OPEN",
    "RESPONSE_ESCROW_PAID",
    "RESPONSE_ESCROW_REFUNDED",
    "ConnectionView",
    "Endpoint",
    "Ledger",
    "PendingOpen",
    "ResponseEscrow",
    "SettleItem",
    "TypedReads",
    "check_event_read",
    "response_ack_message",
    "settle_items",
]

_T = TypeVar("_T")

# where SuiLedger reads the calls' results (MoveCall.result), named more than once
_REFUNDED: Final = "ContributionRefunded.amount"
_SETTLED: Final = "ConnectionSettled"
_OPENED: Final = "ConnectionOpened"
_MAX: Final = "max_connections"

#: An endpoint as given by callers: bytes, or text encoded as UTF-8.
Endpoint = bytes | str

# -- messaging: mailbox and response escrow (move/dtp/sources/mailbox.move,
# -- response_escrow.move; docs/escrow.md "Mailbox and response escrow") ----------------------

#: Largest sealed message one ``mailbox::send`` may carry (bytes).
MAX_MAIL_PAYLOAD: Final = MAX_PURE_BYTES
#: Largest response ``response_escrow::deliver`` may post (bytes).
MAX_RESPONSE_LENGTH: Final = MAX_PURE_BYTES
#: Longest request id a ResponseEscrow records (bytes).
MAX_REQUEST_ID_LENGTH: Final = 64
#: ``ResponseEscrow.state`` values.
RESPONSE_ESCROW_OPEN: Final = 0
RESPONSE_ESCROW_PAID: Final = 1
RESPONSE_ESCROW_DELIVERED: Final = 2
RESPONSE_ESCROW_REFUNDED: Final = 3
#: Domain tag of response acknowledgements (version 2: the package is signed too).
RESPONSE_ACK_DOMAIN: Final = b"DTP-RESPONSE-V2"


def response_ack_message(package: str, escrow_id: str, response_hash: bytes) -> bytes:
    """The 112 bytes a requester signs (raw Ed25519) to acknowledge a response: BCS of
    ``RESPONSE_ACK_DOMAIN`` (length-prefixed) || package (32: the dtp package's original
    ID, ``Ledger.package_id``) || escrow ID (32) || response hash (32). The tag and the
    package are its domain, as a receipt's (docs/escrow.md §6, §12): an acknowledgement
    verifies for one escrow of one deployment of the package."""
    from dtp.ledger.receipt import object_id_bytes

    if len(response_hash) != 32:
        raise ValueError("a response hash is 32 bytes")
    return (
        bytes([len(RESPONSE_ACK_DOMAIN)])
        + RESPONSE_ACK_DOMAIN
        + object_id_bytes(package)
        + object_id_bytes(escrow_id)
        + bytes(response_hash)
    )


@dataclass(frozen=True)
class ResponseEscrow:
    """A prepaid response fee (``dtp::response_escrow::ResponseEscrow``)."""

    object_id: str
    version: int
    #: Who prepaid and gets the fee back after the deadline.
    requester: str
    #: The requester's Ed25519 key: acknowledgements verify against it.
    requester_public_key: bytes
    #: The server's address: the only one that can claim or deliver.
    server: str
    #: Opaque id chosen by the requester (at most 64 bytes).
    request_id: bytes
    #: Ledger clock (ms) after which the requester may take the fee back.
    deadline_ms: int
    #: MIST held (0 once paid or refunded).
    funds: int
    #: MIST deposited.
    amount: int
    #: RESPONSE_ESCROW_OPEN / _PAID / _DELIVERED / _REFUNDED.
    state: int
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @classmethod
    def from_fields(cls, object_id: str, version: int, d: Mapping[str, Any]) -> ResponseEscrow:
        """The escrow from its Move fields by name (decoded BCS or stored JSON); KeyError
        for a field missing."""
        return from_move_fields(cls, object_id, version, d)


@dataclass(frozen=True)
class ConnectionView:
    """A connection and what deciding on it takes (:meth:`Ledger.connection_view`)."""

    connection: TransportControl
    escrow: Escrow
    host: Host
    cap: SpendingCap | None = None
    """The escrow's SpendingCap (None unless asked for)."""
    epoch: int | None = None
    """The epoch, read with the cap."""


def _connection_view(
    tc: TransportControl, found: Sequence[ChainObject], host_id: str, epoch: int | None
) -> ConnectionView:
    """A :class:`ConnectionView` from the objects read for ``tc``: its escrow, the host
    and maybe its cap, in that order (each checked to be of its type)."""
    escrow, host = found[0], found[1]
    cap = found[2] if len(found) > 2 else None
    if not isinstance(escrow, Escrow):
        raise ObjectNotFound(f"Object {tc.escrow} is not an Escrow.")
    if not isinstance(host, Host):
        raise ObjectNotFound(f"Object {host_id} is not a Host.")
    if cap is not None and not isinstance(cap, SpendingCap):
        raise ObjectNotFound(f"Object {tc.spending_cap} is not a SpendingCap.")
    return ConnectionView(tc, escrow, host, cap, epoch)


@dataclass(frozen=True)
class SettleItem:
    """One connection of :meth:`Ledger.settle_batch`: its ID, the receipt to claim
    (None: nothing), and its escrow and spending cap when the caller knows them (else
    read from the connection)."""

    connection_id: str
    receipt: Receipt | None = None
    escrow_id: str | None = None
    cap_id: str | None = None


class PendingOpen:
    """A signed ``transport_control::open`` not yet executed, with the IDs it creates
    (derived from the transaction's digest, as Sui derives them): a client can name the
    connection in its handshake while the open lands (:meth:`execute`, once)."""

    def __init__(
        self, connection_id: str, escrow_id: str, run: Callable[[], OpenedConnection]
    ) -> None:
        self.connection_id = connection_id
        self.escrow_id = escrow_id
        self._run: Callable[[], OpenedConnection] | None = run
        self._failed: BaseException | None = None
        self.opened: OpenedConnection | None = None
        """What :meth:`execute` returned (None before it succeeded)."""

    def execute(self) -> OpenedConnection:
        """Execute the open (the ledger's errors as ``open_connection`` raises them);
        the IDs are checked to be the ones announced (ChainError otherwise). Once only:
        after a failure, a further call raises InvalidTransaction (the signed
        transaction is spent or stale; prepare a new open)."""
        if self.opened is not None:
            return self.opened
        run, self._run = self._run, None
        if run is None:
            raise InvalidTransaction(
                f"this open was executed already and failed ({self._failed!r}): prepare a new one"
            )
        try:
            opened = run()
        except BaseException as exc:
            self._failed = exc
            raise
        if (opened.connection_id, opened.escrow_id) != (self.connection_id, self.escrow_id):
            self._failed = ChainError(
                f"the open created {opened.connection_id}, not the {self.connection_id} "
                "it announced"
            )
            raise self._failed
        self.opened = opened
        return opened


class Ledger(PaymentModels, Coordination, Deletions, Versions, abc.ABC):
    """A DTP control-plane ledger (see the module docs for the conventions; the payment
    models' methods come from :class:`~dtp.ledger._economics.PaymentModels`, the
    registry's from :class:`~dtp.ledger._coordination.Coordination`, the deletions of
    what is over from :class:`~dtp.ledger._deletion.Deletions`). Each state-changing
    method states the built-in ledgers' argument checks and Move call, made through
    ``_move``; an abstract one is still for each ledger to implement (or to take)."""

    # -- receipts (docs/escrow.md §6) ----------------------------------------------------

    @property
    @abc.abstractmethod
    def package_id(self) -> str:
        """The dtp package's original ID (its first version's, which its types keep
        across upgrades: what ``type_name::get_with_original_ids`` gives in Move). Every
        receipt names it, so that one signed for another deployment of the package --
        on this chain or another -- is refused (docs/escrow.md §6)."""

    def receipt_scope(self, connection_id: str) -> ReceiptScope:
        """What ``connection_id``'s receipts are bound to: this ledger's package, the
        connection's escrow (one read) and the connection."""
        from dtp.ledger.receipt import ReceiptScope

        tc = self.get_connection(connection_id)
        return ReceiptScope(self.package_id, tc.escrow, tc.id)

    # -- host (dtp::host) -----------------------------------------------------------------

    @abc.abstractmethod
    def create_host(
        self, signer: HostIdentity, noise_static_key: bytes, endpoints: Sequence[Endpoint] = ()
    ) -> str:
        """``host::create``: a shared Host with authority = signer. Returns the host ID.

        The Noise key must be 32 bytes and not a low-order X25519 point (the all-zero key,
        say), with which no handshake could succeed: ``HostConfigError``
        (``EInvalidNoiseKey``)."""
        check_signer(signer)
        # converted here: bytes(32) would be 32 zero bytes, and list("a:1") three
        # endpoints (as_bytes_list refuses a single value)
        args = (as_bytes(noise_static_key, "noise_static_key"), as_bytes_list(endpoints))
        call = MoveCall("host", "create", args, 0, "HostCreated.host", "Host")
        return str(self._move(signer, call))

    @abc.abstractmethod
    def set_authority(self, signer: HostIdentity, host_id: str, new_authority: str) -> None:
        """``host::set_authority`` (authority only)."""
        check_signer(signer)
        authority = Id(normalize_id(new_authority, "address"))
        self._on_host(signer, host_id, "set_authority", authority)

    @abc.abstractmethod
    def set_noise_static_key(self, signer: HostIdentity, host_id: str, key: bytes) -> None:
        """``host::set_noise_static_key`` (authority only; 32 bytes, not a low-order
        point: ``EInvalidNoiseKey``)."""
        check_signer(signer)
        self._on_host(signer, host_id, "set_noise_static_key", as_bytes(key, "key"))

    @abc.abstractmethod
    def set_endpoints(
        self, signer: HostIdentity, host_id: str, endpoints: Sequence[Endpoint]
    ) -> None:
        """``host::set_endpoints`` (authority only; at most 16, each at most 256 bytes)."""
        check_signer(signer)
        self._on_host(signer, host_id, "set_endpoints", as_bytes_list(endpoints))

    @abc.abstractmethod
    def set_firewall_mode(self, signer: HostIdentity, host_id: str, mode: int) -> None:
        """``host::set_firewall_mode``: 0 allow-all, 1 allow-listed."""
        check_signer(signer)
        if not is_whole(mode, 0, 0xFF):
            raise InvalidArgument(f"The firewall mode is a u8, got {mode!r}.")
        self._on_host(signer, host_id, "set_firewall_mode", mode)

    @abc.abstractmethod
    def allow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        """``host::allow``: add ``client`` to the allow list (idempotent)."""
        self._firewall_list("allow", signer, host_id, client)

    @abc.abstractmethod
    def disallow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        """``host::disallow``: remove ``client`` from the allow list (idempotent)."""
        self._firewall_list("disallow", signer, host_id, client)

    @abc.abstractmethod
    def deny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        """``host::deny``: add ``client`` to the deny list (idempotent)."""
        self._firewall_list("deny", signer, host_id, client)

    @abc.abstractmethod
    def undeny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        """``host::undeny``: remove ``client`` from the deny list (idempotent)."""
        self._firewall_list("undeny", signer, host_id, client)

    # the lists as they are read: Tables on Sui, so one client is one lookup, and the
    # Host itself carries only their sizes (Host.firewall.allow_count, deny_count)

    @abc.abstractmethod
    def is_allowed(self, host_id: str, client: str) -> bool:
        """``host::is_allowed``: whether ``client`` is on the Host's allow list now (one
        lookup in its Table, whatever the list's length)."""

    @abc.abstractmethod
    def is_denied(self, host_id: str, client: str) -> bool:
        """``host::is_denied``: whether ``client`` is on the Host's deny list now."""

    @abc.abstractmethod
    def firewall_list(self, host_id: str, which: str) -> tuple[str, ...]:
        """Every address on the Host's ``"allow"`` or ``"deny"`` list, sorted (at most
        :data:`~dtp.ledger._objects.MAX_FIREWALL_ENTRIES`; on Sui, the Table's dynamic
        fields read page by page)."""

    def permits(self, host: Host, client: str) -> bool:
        """``host::permits`` for the Host ``host`` as read: deny wins, then allow-all or
        the allow list. Looks ``client`` up only in the lists that can decide (none for
        an allow-all firewall with an empty deny list), each as it is now."""
        client = normalize_id(client, "address")
        look_deny, look_allow = host.firewall.lookups()
        denied = look_deny and self.is_denied(host.id, client)
        allowed = not denied and look_allow and self.is_allowed(host.id, client)
        return host.firewall.decide(allowed=allowed, denied=denied)

    def refused(self, host: Host, clients: Iterable[str]) -> frozenset[str]:
        """Of ``clients``, those :meth:`permits` refuses for the Host ``host`` as read
        (what a server re-reading its Host closes): each client decided once."""
        return frozenset(c for c in set(clients) if not self.permits(host, c))

    @abc.abstractmethod
    def set_client_limits(
        self,
        signer: HostIdentity,
        host_id: str,
        max_connections_per_client: int,
        max_bytes_per_sec: int,
        max_requests_per_sec: int,
    ) -> None:
        """``host::set_client_limits`` (0 = unlimited)."""
        check_signer(signer)
        limits = (
            u64(max_connections_per_client, "max_connections_per_client"),
            u64(max_bytes_per_sec, "max_bytes_per_sec"),
            u64(max_requests_per_sec, "max_requests_per_sec"),
        )
        self._on_host(signer, host_id, "set_client_limits", *limits)

    @abc.abstractmethod
    def add_service(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        kind: str | bytes,
        sla: Sla,
        max_connections: int = 0,
    ) -> None:
        """``host::add_service`` on ``port`` (u16). ``kind`` is text, or bytes taken as
        given: the Move call gets a ``vector<u8>`` and makes it a String with
        ``string::utf8``, which aborts on bytes that are not UTF-8 (``std::string``'s
        ``EInvalidUTF8``, a :class:`~dtp.errors.ChainError` named ``"MoveAbort"``)."""
        check_signer(signer)
        args = (check_port(port), as_bytes(kind, "kind"), check_sla(sla))
        self._on_host(signer, host_id, "add_service", *args, u64(max_connections, _MAX))

    @abc.abstractmethod
    def update_service(
        self, signer: HostIdentity, host_id: str, port: int, sla: Sla, max_connections: int = 0
    ) -> None:
        """``host::update_service``: new terms for connections opened afterwards."""
        check_signer(signer)
        args = (check_port(port), check_sla(sla), u64(max_connections, _MAX))
        self._on_host(signer, host_id, "update_service", *args)

    @abc.abstractmethod
    def remove_service(self, signer: HostIdentity, host_id: str, port: int) -> None:
        """``host::remove_service``: no new connections; open ones go on under their SLA."""
        check_signer(signer)
        self._on_host(signer, host_id, "remove_service", check_port(port))

    # -- spending cap (dtp::spending_cap) ---------------------------------------------------

    @abc.abstractmethod
    def create_spending_cap(self, signer: HostIdentity, max_per_epoch: int) -> str:
        """``spending_cap::create``: a shared cap owned by the signer. Returns its ID."""
        check_signer(signer)
        args = (u64(max_per_epoch, "max_per_epoch"),)
        call = MoveCall("spending_cap", "create", args, 0, "SpendingCapCreated.cap", "SpendingCap")
        return str(self._move(signer, call))

    @abc.abstractmethod
    def set_max_per_epoch(self, signer: HostIdentity, cap_id: str, max_per_epoch: int) -> None:
        """``spending_cap::set_max_per_epoch`` (owner only; binds the opens and top-ups of
        more than 0 from now on: what is outstanding stays claimable, docs/escrow.md §4)."""
        check_signer(signer)
        args = (Id(cap_id), u64(max_per_epoch, "max_per_epoch"))
        self._move(signer, MoveCall("spending_cap", "set_max_per_epoch", args))

    # -- connections and escrow (dtp::transport_control, dtp::escrow) -----------------------

    @abc.abstractmethod
    def open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> OpenedConnection:
        """``transport_control::open``: ``deposit`` MIST leave the signer's balance into a
        new escrow, and are reserved on the spending cap ``cap_id``, outstanding there
        until claimed or refunded (docs/escrow.md §4; the Host is only read).
        ``client_public_key`` defaults to the signer's Ed25519 key."""
        call = self._client_open(signer, (host_id, port, cap_id), deposit, client_public_key)
        return cast(OpenedConnection, self._move(signer, call))

    @abc.abstractmethod
    def open_session_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        session_public_key: bytes,
    ) -> OpenedConnection:
        """``transport_control::open_with_session_key``: :meth:`open_connection` whose
        receipts are signed by ``session_public_key`` (32 bytes, any Ed25519 key: a key
        the signer's page holds, docs/escrow.md §6.2) rather than by the signer's key. The
        connection's client is the signer."""
        key = lambda: as_bytes(session_public_key, "session_public_key")  # noqa: E731
        service = (host_id, port, cap_id)
        call = self._open_call(signer, "open_with_session_key", service, deposit, key)
        return cast(OpenedConnection, self._move(signer, call))

    def prepare_open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> PendingOpen | None:
        """:meth:`open_connection` signed now and executed later
        (:meth:`PendingOpen.execute`), its connection and escrow IDs known at once; None
        where the ledger does not tell them ahead (then call :meth:`open_connection`)."""
        return None

    @abc.abstractmethod
    def top_up(
        self, signer: HostIdentity, escrow_id: str, amount: int, *, cap_id: str | None = None
    ) -> None:
        """``escrow::top_up`` (client only): the escrow's claims are counted on the
        spending cap (``cap_id``, by default the escrow's), then ``amount`` MIST from the
        signer's balance are reserved on it (0 always fits)."""
        check_signer(signer)
        u64(amount, "the top-up amount")
        if cap_id is None:
            cap_id = self.get_escrow(escrow_id).spending_cap
        args = (Id(escrow_id), Id(cap_id), amount)
        self._move(signer, MoveCall("escrow", "top_up", args, amount))

    @abc.abstractmethod
    def claim(self, signer: HostIdentity, escrow_id: str, receipt: Receipt) -> int:
        """``escrow::claim`` (server only): returns the MIST paid to the server. The
        spending cap is not involved: the deposit was reserved on it (the escrow counts
        the claim on it at its next top-up or its settlement)."""
        check_signer(signer)
        args = (Id(escrow_id), check_receipt(receipt))
        return int(self._move(signer, MoveCall("escrow", "claim", args, 0, "ReceiptClaimed.paid")))

    @abc.abstractmethod
    def close_connection(self, signer: HostIdentity, connection_id: str) -> None:
        """``transport_control::close``: half-close, or complete the peer's half-close."""
        check_signer(signer)
        args = (Id(connection_id),)
        self._move(signer, MoveCall("transport_control", "close", args))

    @abc.abstractmethod
    def finalize(self, signer: HostIdentity, connection_id: str) -> None:
        """``transport_control::finalize``: close a half-closed connection after the timeout."""
        check_signer(signer)
        args = (Id(connection_id),)
        self._move(signer, MoveCall("transport_control", "finalize", args))

    @abc.abstractmethod
    def settle(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        """``transport_control::settle``: refund the escrow's remainder to the client, count
        the escrow's claims on the spending cap and release the refund from it
        (``escrow_id`` and ``cap_id`` default to the connection's)."""
        check_signer(signer)
        args = self._settled(connection_id, escrow_id, cap_id)
        call = MoveCall("transport_control", "settle", args, 0, _SETTLED)
        return cast(Settlement, self._move(signer, call))

    @abc.abstractmethod
    def settle_with_receipt(
        self,
        signer: HostIdentity,
        connection_id: str,
        receipt: Receipt,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        """``transport_control::settle_with_receipt``: claim ``receipt``, then settle."""
        check_signer(signer)
        check_receipt(receipt)
        args = (*self._settled(connection_id, escrow_id, cap_id), receipt)
        call = MoveCall("transport_control", "settle_with_receipt", args, 0, _SETTLED)
        return cast(Settlement, self._move(signer, call))

    def settle_batch(self, signer: HostIdentity, items: Sequence[SettleItem]) -> list[Settlement]:
        """Several connections' settlements, each claiming its receipt first when it has
        one (``settle_with_receipt``, else ``settle``): one :class:`Settlement` per item,
        in order. Where the ledger can, they are one transaction, all or nothing
        (SuiLedger: one programmable transaction, whose base gas they share:
        docs/escrow.md §7.1); this default settles them one after the other, so that a
        ChainError leaves the ones before the failing one settled. Either way a caller
        whose batch failed settles each connection on its own (which finds the ones
        settled already)."""
        done: list[Settlement] = []
        for item in settle_items(items):
            if item.receipt is None:
                done.append(
                    self.settle(
                        signer, item.connection_id, escrow_id=item.escrow_id, cap_id=item.cap_id
                    )
                )
            else:
                done.append(
                    self.settle_with_receipt(
                        signer,
                        item.connection_id,
                        item.receipt,
                        escrow_id=item.escrow_id,
                        cap_id=item.cap_id,
                    )
                )
        return done

    #: Whether a transaction this ledger refuses costs its sender nothing (no gas): a
    #: paid server's settlement then acts on the connection it knows, the settlement's
    #: own checks of its state refusing it if it moved (read again then), rather than
    #: reading it first. False (Sui: an aborted transaction pays its gas): read first.
    free_refusals: ClassVar[bool] = False

    def end_gas(self) -> EndGas:
        """What each transaction of a connection's end is expected to cost its sender in
        gas (:class:`~dtp.ledger._gas.EndGas`); a ledger that charges none (this default,
        LocalLedger) says 0 for each. May read the network (the gas price): blocking."""
        return EndGas.free()

    def gas_spent(self, address: str) -> GasSpent:
        """The gas ``address`` has paid through this ledger object so far (this process's
        transactions), by kind; nothing on a ledger that charges none."""
        return GasSpent()

    # -- pipes (dtp::pipe, dtp::inner_pipe) -------------------------------------------------

    @abc.abstractmethod
    def create_pipe(self, signer: HostIdentity, connection_id: str, inner_count: int) -> str:
        """``pipe::create``: a Pipe owned by the signer. Returns its ID."""
        check_signer(signer)
        args = (Id(connection_id), u64(inner_count, "inner_count"))
        call = MoveCall("pipe", "create", args, 0, "PipeCreated.pipe", "Pipe")
        return str(self._move(signer, call))

    @abc.abstractmethod
    def pipe_send(self, signer: HostIdentity, pipe_id: str, inner: int, data: bytes) -> int:
        """``pipe::send`` (owner only): emits ``PipeDataSent``; returns the record's seq."""
        check_signer(signer)
        args = (Id(pipe_id), u64(inner, "inner"), as_bytes(data, "data"))
        return int(self._move(signer, MoveCall("pipe", "send", args, 0, "PipeDataSent.seq")))

    @abc.abstractmethod
    def pipe_sync(self, signer: HostIdentity, pipe_id: str, inner: int, acked: int) -> None:
        """``pipe::sync`` (owner only): every seq below ``acked`` was received."""
        check_signer(signer)
        args = (Id(pipe_id), u64(inner, "inner"), u64(acked, "acked"))
        self._move(signer, MoveCall("pipe", "sync", args))

    @abc.abstractmethod
    def destroy_pipe(self, signer: HostIdentity, pipe_id: str) -> None:
        """``pipe::destroy`` (owner only)."""
        check_signer(signer)
        self._move(signer, MoveCall("pipe", "destroy", (Id(pipe_id),)))

    # -- broadcast (dtp::broadcast) ---------------------------------------------------------

    @abc.abstractmethod
    def create_broadcast(
        self, signer: HostIdentity, channel: str | bytes, slot_price: int, slot_ms: int
    ) -> str:
        """``broadcast::create``: slot 0 starts now. Returns the broadcast ID.
        ``channel`` is text, or bytes taken as given: ``string::utf8`` aborts on bytes
        that are not UTF-8, as for :meth:`add_service`'s ``kind``."""
        check_signer(signer)
        args = (as_bytes(channel, "channel"), u64(slot_price, "slot_price"))
        result, created = "BroadcastCreated.broadcast", "Broadcast"
        call = MoveCall("broadcast", "create", (*args, u64(slot_ms, "slot_ms")), 0, result, created)
        return str(self._move(signer, call))

    @abc.abstractmethod
    def broadcast_contribute(self, signer: HostIdentity, broadcast_id: str, amount: int) -> None:
        """``broadcast::contribute``: ``amount`` MIST from the signer's balance to the pool."""
        check_signer(signer)
        args = (Id(broadcast_id), u64(amount, "the contribution"))
        self._move(signer, MoveCall("broadcast", "contribute", args, amount))

    @abc.abstractmethod
    def broadcast_transmit(self, signer: HostIdentity, broadcast_id: str, data: bytes) -> int:
        """``broadcast::transmit`` (broadcaster, on air): returns the message's seq."""
        check_signer(signer)
        args = (Id(broadcast_id), as_bytes(data, "data"))
        call = MoveCall("broadcast", "transmit", args, 0, "BroadcastTransmitted.seq")
        return int(self._move(signer, call))

    @abc.abstractmethod
    def broadcast_claim(self, signer: HostIdentity, broadcast_id: str) -> int:
        """``broadcast::claim`` (broadcaster): returns the MIST paid out."""
        return int(self._on_broadcast(signer, broadcast_id, "claim", "BroadcastClaimed.amount"))

    @abc.abstractmethod
    def broadcast_cancel(self, signer: HostIdentity, broadcast_id: str) -> None:
        """``broadcast::cancel`` (broadcaster)."""
        self._on_broadcast(signer, broadcast_id, "cancel")

    @abc.abstractmethod
    def broadcast_withdraw(self, signer: HostIdentity, broadcast_id: str) -> int:
        """``broadcast::withdraw`` (a listener, after cancel): returns the refund, the
        value of the signer's shares."""
        return int(self._on_broadcast(signer, broadcast_id, "withdraw", _REFUNDED))

    @abc.abstractmethod
    def broadcast_leave(self, signer: HostIdentity, broadcast_id: str) -> int:
        """``broadcast::leave`` (a listener of an idle broadcast, not cancelled: no
        ``transmit`` or ``heartbeat`` for ``Broadcast.idle_ms``, else ``EBroadcastLive``):
        completed, covered slots are paid first; returns the refund, the value of the
        signer's shares."""
        return int(self._on_broadcast(signer, broadcast_id, "leave", _REFUNDED))

    @abc.abstractmethod
    def broadcast_heartbeat(self, signer: HostIdentity, broadcast_id: str) -> None:
        """``broadcast::heartbeat`` (broadcaster, on air): records that it is transmitting
        off the ledger, which keeps its listeners from leaving for ``Broadcast.idle_ms``."""
        self._on_broadcast(signer, broadcast_id, "heartbeat")

    # -- payment (dtp::payment) -----------------------------------------------------------------
    # Not abstract, as the messaging calls below: made through ``_move`` (NotImplementedError
    # for a ledger without one).

    def pay(self, signer: HostIdentity, recipient: str, amount: int, memo: bytes = b"") -> None:
        """``payment::pay``: send ``amount`` MIST (> 0) from the signer's balance to the
        address ``recipient``, with a ``memo`` of at most ``MAX_PAYMENT_MEMO`` (256) bytes
        carried by its ``PaymentSent`` event: a tip, a reward, a bounty."""
        check_signer(signer)
        u64(amount, "the amount")
        to = Id(normalize_id(recipient, "recipient address"))
        self._move(signer, MoveCall("payment", "pay", (amount, to, as_bytes(memo, "memo")), amount))

    # -- plain transfers (Sui's, no dtp package call) ------------------------------------------
    # Not abstract either; both built-in ledgers implement it.

    def transfer(self, signer: HostIdentity, recipient: str, amount: int) -> None:
        """Move ``amount`` MIST (1 to 2**64-1) of the signer's SUI to the address
        ``recipient``: on Sui a plain transfer (``SplitCoins`` of the gas coin and
        ``TransferObjects``, as ``sui client transfer-sui``; no Move call, no event), its
        gas paid by the signer besides; on LocalLedger the balance moves, nothing else.
        Raises :class:`~dtp.errors.InvalidObjectId` for a malformed ``recipient``,
        :class:`~dtp.errors.InvalidArgument` for an amount outside that range and
        :class:`~dtp.errors.InsufficientFunds` when the signer's balance cannot cover it
        (and the gas, on Sui); nothing moves then. ``dtp transfer`` is its command."""
        raise NotImplementedError(f"{type(self).__name__} has no transfer call")

    # -- mailbox and response escrow (dtp::mailbox, dtp::response_escrow) ---------------------
    # Not abstract: ledgers written before these modules keep working.

    def mailbox_send(self, signer: HostIdentity, host_id: str, payload: bytes) -> None:
        """``mailbox::send``: emit ``MailDeposited { recipient_host, payload }`` for the Host
        ``host_id`` (1..MAX_MAIL_PAYLOAD bytes; anyone may send)."""
        check_signer(signer)
        args = (Id(host_id), as_bytes(payload, "payload"))
        self._move(signer, MoveCall("mailbox", "send", args))

    def response_escrow_deposit(
        self,
        signer: HostIdentity,
        server: str,
        request_id: bytes,
        amount: int,
        deadline_ms: int,
        requester_public_key: bytes | None = None,
    ) -> str:
        """``response_escrow::deposit``: prepay ``amount`` MIST for a response from
        ``server`` by ``deadline_ms`` (ledger clock). Returns the ResponseEscrow ID."""
        check_signer(signer)
        args = (
            Id(normalize_id(server, "address")),
            as_bytes(request_id, "request_id"),
            signer_key(signer, requester_public_key, "requester_public_key"),
            u64(deadline_ms, "the deadline"),
            u64(amount, "the response fee"),
        )
        result = "ResponseFeeDeposited.escrow"
        return str(self._move(signer, MoveCall("response_escrow", "deposit", args, amount, result)))

    def response_escrow_claim(
        self, signer: HostIdentity, escrow_id: str, response_hash: bytes, signature: bytes
    ) -> int:
        """``response_escrow::claim`` (server): paid with the requester's acknowledgement
        (signature over :func:`response_ack_message` for this ledger's ``package_id``).
        Returns the MIST paid."""
        check_signer(signer)
        proof = (as_bytes(response_hash, "response_hash"), as_bytes(signature, "signature"))
        args = (Id(escrow_id), *proof)
        call = MoveCall("response_escrow", "claim", args, 0, "ResponseFeeClaimed.amount")
        return int(self._move(signer, call))

    def response_escrow_deliver(self, signer: HostIdentity, escrow_id: str, response: bytes) -> int:
        """``response_escrow::deliver`` (server, before the deadline): post the response
        as an event and take the fee. Returns the MIST paid."""
        check_signer(signer)
        args = (Id(escrow_id), as_bytes(response, "response"))
        call = MoveCall("response_escrow", "deliver", args, 0, "ResponseDelivered.amount")
        return int(self._move(signer, call))

    def response_escrow_refund(self, signer: HostIdentity, escrow_id: str) -> int:
        """``response_escrow::refund`` (requester, after the deadline). Returns the refund."""
        check_signer(signer)
        args = (Id(escrow_id),)
        call = MoveCall("response_escrow", "refund", args, 0, "ResponseFeeRefunded.amount")
        return int(self._move(signer, call))

    def get_response_escrow(self, escrow_id: str) -> ResponseEscrow:
        """The ResponseEscrow ``escrow_id``."""
        raise NotImplementedError(f"{type(self).__name__} has no response escrow")

    # -- the calls' shared steps ----------------------------------------------------------

    def _on_host(self, signer: HostIdentity, host_id: str, function: str, *args: Any) -> None:
        self._move(signer, MoveCall("host", function, (Id(host_id), *args)))

    def _firewall_list(self, fn: str, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._on_host(signer, host_id, fn, Id(normalize_id(client, "address")))

    def _open_call(
        self,
        signer: HostIdentity,
        function: str,
        service: tuple[str, int, str],
        deposit: int,
        key: Callable[[], bytes],
    ) -> MoveCall:
        """``transport_control::open`` or ``open_with_session_key`` to the service
        ``(host, port)`` with the spending cap ``cap`` (``key`` gives the public key,
        checked after the other arguments)."""
        host_id, port, cap_id = service
        check_signer(signer)
        check_port(port)
        u64(deposit, "the deposit")
        raw = key()
        objects = (Id(host_id), port, Id(cap_id))
        return MoveCall("transport_control", function, (*objects, raw, deposit), deposit, _OPENED)

    def _client_open(
        self,
        signer: HostIdentity,
        service: tuple[str, int, str],
        deposit: int,
        client_public_key: bytes | None,
    ) -> MoveCall:
        """``transport_control::open``, the client's key the signer's by default."""
        what = "client_public_key"
        key = lambda: signer_key(signer, client_public_key, what)  # noqa: E731
        return self._open_call(signer, "open", service, deposit, key)

    def _settled(
        self, connection_id: str, escrow_id: str | None, cap_id: str | None
    ) -> tuple[Id, Id, Id]:
        """The connection, its escrow and its cap (``escrow_id`` and ``cap_id`` passing
        others explicitly): the connection is read only for what the caller did not give
        (the call checks every object itself; a missing connection fails there,
        ObjectNotFound alike)."""
        if escrow_id is None or cap_id is None:
            tc = self.get_connection(connection_id)
            escrow_id = tc.escrow if escrow_id is None else escrow_id
            cap_id = tc.spending_cap if cap_id is None else cap_id
        return (
            Id(connection_id),
            Id(escrow_id),
            Id(cap_id),
        )

    def _on_broadcast(
        self, signer: HostIdentity, broadcast_id: str, function: str, result: str = ""
    ) -> Any:
        check_signer(signer)
        args = (Id(broadcast_id),)
        return self._move(signer, MoveCall("broadcast", function, args, 0, result))

    # -- reading -----------------------------------------------------------------------------

    @abc.abstractmethod
    def get_object(self, object_id: str) -> ChainObject:
        """Any object by ID, typed (raises :class:`~dtp.errors.ObjectNotFound`)."""

    def connection_view(
        self, connection_id: str, host_id: str, *, with_cap: bool = False
    ) -> ConnectionView | None:
        """The connection ``connection_id`` with its escrow and the Host ``host_id`` (and,
        ``with_cap``, its SpendingCap and the epoch), read together where the ledger can
        (LocalLedger: one statement, one snapshot). None when there is no such connection;
        :class:`~dtp.errors.ObjectNotFound` when one of the others is missing."""
        try:
            tc = self.get_connection(connection_id)
        except ObjectNotFound:
            return None
        wanted = [tc.escrow, host_id] + ([tc.spending_cap] if with_cap else [])
        found = self.get_objects(wanted)
        return _connection_view(tc, found, host_id, self.epoch() if with_cap else None)

    def subscription_over(self, subscription_id: str, host: Host | None = None) -> str | None:
        """Why the Subscription ``subscription_id`` no longer covers connections (its
        offer withdrawn, or the current epoch outside it: ``subscription::is_over``; or
        its offer's provider no longer the host's authority, whose offer earns nothing
        though the chain holds it over only once withdrawn), or None while it does.
        What a paid server checks of a connection opened with a subscription, at
        admission and while serving it (docs/escrow.md §13). ``host``: the offer's Host
        as the caller read it (a server's, just now), else read here."""
        sub = self.get_subscription(subscription_id)
        offer = self.get_subscription_offer(sub.offer)
        epoch = self.epoch()
        why = sub.over(offer, epoch)
        if why is not None:
            return why
        if host is None or normalize_id(host.id, "host ID") != normalize_id(offer.host, "host ID"):
            host = self.get_host(offer.host)
        return sub.over(offer, epoch, host.authority)

    def get_objects(self, object_ids: Sequence[str]) -> list[ChainObject]:
        """Several objects by ID, typed, in the order asked (raises
        :class:`~dtp.errors.ObjectNotFound` for a missing one). One read where the ledger
        can (LocalLedger: one statement, one snapshot); here: one :meth:`get_object` each."""
        return [self.get_object(object_id) for object_id in object_ids]

    @abc.abstractmethod
    def get_host(self, host_id: str) -> Host:
        """The Host ``host_id``."""

    def get_service(self, host_id: str, port: int) -> Service | None:
        """``host::service`` without its abort: the service the Host ``host_id`` publishes
        on ``port`` now, None if none. The services are a Table on Sui, so this is one
        lookup whatever their number (SuiLedger: one read of the entry's dynamic field);
        here, a read of the Host."""
        return self.get_host(host_id).services.get(check_port(port))

    @abc.abstractmethod
    def get_cap(self, cap_id: str) -> SpendingCap:
        """The SpendingCap ``cap_id``."""

    @abc.abstractmethod
    def get_connection(self, connection_id: str) -> TransportControl:
        """The TransportControl ``connection_id``."""

    def connection_state(self, connection_id: str) -> ConnectionState:
        """The state of the TransportControl ``connection_id`` alone (a paid client's
        close asks only this: whether the server settled). Ledgers that can read one
        field for less than the whole object override it."""
        return self.get_connection(connection_id).state

    @abc.abstractmethod
    def get_escrow(self, escrow_id: str) -> Escrow:
        """The Escrow ``escrow_id``."""

    @abc.abstractmethod
    def get_pipe(self, pipe_id: str) -> Pipe:
        """The Pipe ``pipe_id``."""

    @abc.abstractmethod
    def get_broadcast(self, broadcast_id: str) -> Broadcast:
        """The Broadcast ``broadcast_id`` (pool and earnings as last accounted)."""

    @abc.abstractmethod
    def balance(self, address: str) -> int:
        """The SUI balance of ``address``, in MIST."""

    def gas_coin_count(self, address: str) -> int | None:
        """How many SUI coins ``address`` owns (on Sui, a transaction pays its gas from
        them); None on a ledger that keeps balances, not coin objects (LocalLedger)."""
        return None

    @abc.abstractmethod
    def clock_ms(self) -> int:
        """The ledger clock (Sui's ``Clock``), in milliseconds."""

    @abc.abstractmethod
    def epoch(self) -> int:
        """The current epoch."""

    def verify_zklogin(self, check: ZkLoginCheck) -> None:
        """Have this ledger's Sui node confirm a zkLogin identity proof (docs/protocol.md
        8.4), as a server's ``ConnectionConfig.zklogin_verifier``: return once it did;
        :class:`~dtp.errors.ZkLoginRefused` when it did not. A ledger without a Sui node
        (LocalLedger) cannot: :class:`~dtp.errors.ZkLoginUnsupported`."""
        raise ZkLoginUnsupported(
            f"{type(self).__name__} cannot verify the zkLogin proof of {check.address}: "
            "a zkLogin proof is verified by a Sui node, and this ledger has none"
        )

    # -- events ------------------------------------------------------------------------------

    @abc.abstractmethod
    def events(
        self,
        cursor: str | None = None,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        """Events after ``cursor`` (from the start when None), oldest first, at most
        ``limit``. Returns them and the cursor to pass next time (unchanged if none)."""

    def read_events(
        self,
        cursor: str | None = None,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> EventRead:
        """:meth:`events`, and whether the read got to the end (:class:`EventRead`), which
        a reader of a busy ledger cannot tell from the cursor: it moves over the events
        (on Sui, the checkpoints) the filter leaves out as long as they are made. This
        default says so only once the cursor stops moving; the ledgers know better."""
        events, after = self.events(cursor, filter, limit)
        return EventRead(events, after, after == cursor)

    @abc.abstractmethod
    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        """Like :meth:`events`, but block up to ``timeout`` seconds until at least one
        matching event exists; returns an empty list on timeout."""

    def head_cursor(self) -> str | None:
        """The cursor after the newest event now on the ledger (None: no events yet):
        reading from it returns only events that come later."""
        never = EventFilter(type="\x00no event has this type")
        cursor: str | None = None
        while True:
            _, after = self.events(cursor, never, 1000)
            if after == cursor:
                return cursor
            cursor = after

    async def wait_events_async(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        """:meth:`wait_events` for asyncio code (runs it in a worker thread)."""
        return await asyncio.to_thread(self.wait_events, cursor, timeout, filter, limit)

    def close(self) -> None:  # optional hook: nothing to release by default
        """Release resources (database handles, network clients)."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_event_read(filter: EventFilter | None, limit: int) -> None:
    """The arguments of :meth:`Ledger.read_events` after the cursor, checked as both
    ledgers check them (a str ``limit`` would raise TypeError, a str ``filter``
    AttributeError at the first event)."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise InvalidArgument(f"limit must be an integer, got {limit!r}.")
    if filter is not None and not isinstance(filter, EventFilter):
        raise InvalidArgument(f"filter must be an EventFilter or None, got {filter!r}.")


def settle_items(items: Sequence[SettleItem]) -> Iterator[SettleItem]:
    """The items of :meth:`Ledger.settle_batch`, each checked as it is reached, as both
    ledgers check them (InvalidArgument for a batch that is not a sequence, or an item
    that is not a SettleItem)."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidArgument(f"items must be a sequence of SettleItem, got {items!r:.60}.")
    for item in items:
        if not isinstance(item, SettleItem):
            raise InvalidArgument(f"a batch item must be a SettleItem, got {item!r:.60}.")
        yield item


class TypedReads(Ledger):
    """The typed getters and the reads of events as both ledgers write them, over the
    ledger's own ``_get`` (one object of a struct, checked to be of its class) and
    ``_read_after`` (LocalLedger and SuiLedger both know where a read ends)."""

    @abc.abstractmethod
    def _get(self, object_id: str, struct: str, cls: type[_T]) -> _T:
        """The object ``object_id``, which must be a ``struct`` (a ``cls``)."""

    def get_host(self, host_id: str) -> Host:
        return self._get(host_id, "Host", Host)

    def get_cap(self, cap_id: str) -> SpendingCap:
        return self._get(cap_id, "SpendingCap", SpendingCap)

    def get_connection(self, connection_id: str) -> TransportControl:
        return self._get(connection_id, "TransportControl", TransportControl)

    def get_escrow(self, escrow_id: str) -> Escrow:
        return self._get(escrow_id, "Escrow", Escrow)

    def get_pipe(self, pipe_id: str) -> Pipe:
        return self._get(pipe_id, "Pipe", Pipe)

    def get_broadcast(self, broadcast_id: str) -> Broadcast:
        return self._get(broadcast_id, "Broadcast", Broadcast)

    def events(
        self,
        cursor: str | None = None,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        read = self.read_events(cursor, filter, limit)
        return read.events, read.cursor

    def read_events(
        self,
        cursor: str | None = None,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> EventRead:
        position = self._event_position(cursor)  # the cursor first, then filter and limit
        check_event_read(filter, limit)
        if limit <= 0:
            # nothing, and the cursor stays (a read takes an event before it compares
            # with limit)
            return EventRead([], cursor, False)
        return self._read_after(position, cursor, filter, limit)

    @abc.abstractmethod
    def _event_position(self, cursor: str | None) -> Any:
        """Where ``cursor`` is, in the ledger's own terms (InvalidArgument for a cursor
        it does not hand out)."""

    @abc.abstractmethod
    def _read_after(
        self, position: Any, cursor: str | None, filter: EventFilter | None, limit: int
    ) -> EventRead:
        """:meth:`read_events` from ``position`` (``cursor``'s), its arguments checked
        and ``limit`` above 0."""

    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout != timeout:
            # NaN would never pass the deadline check: the call would not return
            raise InvalidArgument(f"timeout must be a number of seconds, got {timeout!r}.")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            events, cursor = self.events(cursor, filter, limit)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events, cursor
            self._await_events(remaining)

    @abc.abstractmethod
    def _await_events(self, remaining: float) -> None:
        """Wait, at most ``remaining`` seconds, for events to be read again (each ledger
        its own way: woken by a commit, or a poll's interval)."""
