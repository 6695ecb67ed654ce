"""Typed, immutable views of the ledger's objects and events (docs/escrow.md §1, §11).

Every ledger implementation (``LocalLedger``, ``SuiLedger``) returns these. Field names are
those of the Move structs. IDs and addresses are ``0x`` + 64 lowercase hex digits; amounts
are MIST; times are Sui clock milliseconds.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeGuard, TypeVar

from dtp.errors import InvalidArgument, InvalidObjectId, WrongSigner, move_error
from dtp.ledger._airtime import AirTime, air_time_due, slot_part
from dtp.ledger._versions import stored_version

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# The argument checks both ledgers make before anything else (a test holds the two to
# the same answers): a call Sui would refuse must not succeed on LocalLedger, and no bad
# argument may surface as an AttributeError, or be signed and sent, after node I/O.


def check_signer(signer: object) -> None:
    """A signer is a HostIdentity (or anything that signs like one): None or a str given
    in its place failed as an AttributeError from deep inside, not as a bad argument."""
    for attribute in ("sui_address", "ed25519_public", "sign_transaction"):
        if not hasattr(signer, attribute):
            raise InvalidArgument(f"signer must be a HostIdentity, got {type(signer).__name__}.")


def owned_by_another(
    struct: str, object_id: str, owner: str, sender: str, use: str = "use it"
) -> WrongSigner:
    """Sui's refusal of an input object owned by another address than the sender (both
    ledgers, before any Move code runs)."""
    return WrongSigner(
        f"{struct} {object_id} is owned by {owner}; only its owner can {use} (sender {sender}).",
        name="ObjectOwnedByAnother",
    )


#: The largest Move ``u64``.
U64_MAX: Final = 2**64 - 1


def is_whole(value: object, low: int, high: int) -> TypeGuard[int]:
    """Whether ``value`` is an int from ``low`` to ``high``, a bool not counting as one:
    what a Move integer argument can stand for (a float or a bool would give a value no
    Move call can take). Each check that uses it says its own words."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_port(port: object) -> int:
    """A port: a u16 (both ledgers' words, before anything is read or signed)."""
    if not is_whole(port, 0, 0xFFFF):
        raise InvalidArgument(f"A port is a u16 (0..65535), got {port!r}.")
    return port


def check_transfer_amount(amount: object) -> int:
    """A plain transfer's amount (:meth:`~dtp.ledger.interface.Ledger.transfer`): MIST,
    from 1 to 2**64-1 (a transfer of nothing would make an empty coin, or nothing, and
    still cost gas: refused on both ledgers before anything is signed)."""
    if type(amount) is not int or not 1 <= amount <= 2**64 - 1:
        raise InvalidArgument(
            f"A transfer's amount must be an integer of MIST from 1 to 2**64-1, got {amount!r}."
        )
    return amount


def as_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    """The bytes a ``vector<u8>`` argument carries (both ledgers' rule): those of a
    ``bytes``, ``bytearray`` or ``memoryview`` (all of them: a view of wider items gives
    every byte; wrap another buffer, an ``array``, in a memoryview), text as UTF-8.
    Anything else is :class:`InvalidArgument`: ``bytes(n)`` would turn an int into
    ``n`` zero bytes, signed and sent."""
    if type(value) is bytes:  # (the common case, no call: bytes() would return it)
        return value
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError:
            # lone surrogates: what Python makes of a command-line argument that is not
            # UTF-8; a bad argument, not a traceback
            raise InvalidArgument(f"{what} is not valid UTF-8.") from None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidArgument(f"{what} must be bytes or text, got {type(value).__name__}.")


def as_bytes_list(values: Iterable[bytes | str], what: str = "endpoint") -> list[bytes]:
    """Each of ``values`` through :func:`as_bytes`: the items of a ``vector<vector<u8>>``.
    A single str or bytes value is refused (iterated, it would give one item per
    character or byte), and so is anything that is not iterable (None)."""
    if isinstance(values, str | bytes | bytearray | memoryview):
        raise InvalidArgument(f"Expected a sequence of {what}s, got a single value.")
    try:
        items = iter(values)
    except TypeError:
        raise InvalidArgument(
            f"Expected a sequence of {what}s, got {type(values).__name__}."
        ) from None
    return [as_bytes(v, what) for v in items]


__all__ = [
    "BROADCAST_IDLE_SLOTS",
    "BROADCAST_MAX_IDLE_MS",
    "BROADCAST_MIN_IDLE_MS",
    "FIREWALL_LISTS",
    "HALF_CLOSE_TIMEOUT_MS",
    "MAX_DATA_LENGTH",
    "MAX_ENDPOINTS",
    "MAX_ENDPOINT_LENGTH",
    "MAX_FIREWALL_ENTRIES",
    "MAX_HALF_CLOSE_TIMEOUT_MS",
    "MAX_INNERS",
    "MAX_PURE_BYTES",
    "MIN_HALF_CLOSE_TIMEOUT_MS",
    "U64_MAX",
    "U128",
    "Broadcast",
    "BroadcastStake",
    "ChainObject",
    "ConnectionState",
    "Escrow",
    "Event",
    "EventFilter",
    "EventRead",
    "Firewall",
    "FirewallMode",
    "Host",
    "InnerPipe",
    "ObjectRef",
    "OpenedConnection",
    "Pipe",
    "Service",
    "Settlement",
    "Sla",
    "SpendingCap",
    "TransportControl",
    "as_bytes",
    "as_bytes_list",
    "broadcast_idle_ms",
    "check_fields",
    "check_firewall_list",
    "check_half_close_timeout",
    "check_port",
    "check_signer",
    "firewall_entries",
    "from_move_fields",
    "is_low_order_noise_key",
    "is_whole",
    "service_from_fields",
]

#: The default half-close timeout of a service's connections (``host::new_sla``): how
#: long a half-closed connection waits for the peer, and the server has from the first
#: close to claim before the client may settle alone. A connection's own is its SLA's
#: (:attr:`TransportControl.half_close_timeout_ms`), which a provider may set longer.
HALF_CLOSE_TIMEOUT_MS: Final = 600_000
#: The bounds of a half-close timeout a provider chooses (``host::EInvalidHalfCloseTimeout``,
#: docs/escrow.md §2): never less time to claim than the default gives, never a client's
#: deposit locked more than a week after its half-close.
MIN_HALF_CLOSE_TIMEOUT_MS: Final = 600_000
MAX_HALF_CLOSE_TIMEOUT_MS: Final = 604_800_000
#: Largest pure byte-string argument a Sui transaction can carry: Sui refuses a pure
#: argument of 16384 bytes or more before any Move code runs, and a ``vector<u8>``
#: of this size takes 2 bytes of length (docs/escrow.md §8).
MAX_PURE_BYTES: Final = 16_381
#: Largest record (pipe) or broadcast message, in bytes.
MAX_DATA_LENGTH: Final = MAX_PURE_BYTES
#: Most addresses on a Host's allow list, and on its deny list (``host::EFirewallListFull``).
MAX_FIREWALL_ENTRIES: Final = 1024
#: The names of a Host's two firewall lists (``Firewall.allow`` and ``Firewall.deny``).
FIREWALL_LISTS: Final = ("allow", "deny")
#: Endpoint limits of a Host.
MAX_ENDPOINTS: Final = 16
MAX_ENDPOINT_LENGTH: Final = 256

#: The Curve25519 u-coordinates of small order (0, 1, the two of order 8, p - 1, p, p + 1;
#: libsodium's list), as ``host::assert_noise_key`` lists them.
_LOW_ORDER_POINTS: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def is_low_order_noise_key(key: bytes) -> bool:
    """Whether the 32-byte X25519 key ``key`` is a point of small order: X25519 with it
    gives the all-zero shared secret, which the Noise handshake refuses, so a host
    publishing it can never be reached (``host::EInvalidNoiseKey``)."""
    # X25519 ignores the top bit of the last byte, so both encodings of a point count
    return len(key) == 32 and key[:31] + bytes([key[31] & 0x7F]) in _LOW_ORDER_POINTS


#: Most inner pipes per Pipe.
MAX_INNERS: Final = 8


class FirewallMode(enum.IntEnum):
    """``Firewall.mode``."""

    ALLOW_ALL = 0
    ALLOW_LISTED = 1


class ConnectionState(enum.IntEnum):
    """``TransportControl.state_code``."""

    OPEN = 0
    HALF_CLOSED = 1
    CLOSED = 2

    @property
    def label(self) -> str:
        """The Move variant name: ``"Open"``, ``"HalfClosed"`` or ``"Closed"``."""
        return ("Open", "HalfClosed", "Closed")[self.value]


@dataclass(frozen=True)
class ObjectRef:
    """Where an object stands: its ID, current version, owner and Move type."""

    object_id: str
    #: Incremented by every transaction that mutates the object.
    version: int
    #: ``"shared"`` or the owning address.
    owner: str
    #: Short Move type, e.g. ``"dtp::host::Host"``.
    type: str


def check_half_close_timeout(ms: object) -> int:
    """A half-close timeout a provider may choose: an int of ms from
    :data:`MIN_HALF_CLOSE_TIMEOUT_MS` to :data:`MAX_HALF_CLOSE_TIMEOUT_MS`, else the
    Move abort ``host::EInvalidHalfCloseTimeout`` (both ledgers' check, before anything
    is signed or read: on Sui the abort would still cost the transaction's gas)."""
    if type(ms) is not int or not MIN_HALF_CLOSE_TIMEOUT_MS <= ms <= MAX_HALF_CLOSE_TIMEOUT_MS:
        raise move_error(
            "host",
            "EInvalidHalfCloseTimeout",
            f"got {ms!r:.40} ms; from {MIN_HALF_CLOSE_TIMEOUT_MS} (10 minutes) to "
            f"{MAX_HALF_CLOSE_TIMEOUT_MS} (7 days)",
        )
    return ms


@dataclass(frozen=True)
class Sla:
    """The terms of a service, copied into each connection when it opens: its fees, and
    how long its server has to claim after the connection's first close."""

    #: MIST per KiB (1024 bytes), charged per byte rounded up.
    price_per_kib: int
    #: MIST per request.
    price_per_request: int
    #: Smallest deposit accepted at open, MIST.
    min_deposit: int
    #: From a connection's first close, how long the server has to claim before the
    #: client may settle alone (docs/escrow.md §7); the provider's choice, from
    #: :data:`MIN_HALF_CLOSE_TIMEOUT_MS` to :data:`MAX_HALF_CLOSE_TIMEOUT_MS`.
    half_close_timeout_ms: int = HALF_CLOSE_TIMEOUT_MS

    @property
    def paid(self) -> bool:
        """Whether the terms charge for anything (bytes or requests): a free service's
        connections carry no receipts, and its server has nothing to claim."""
        return self.price_per_kib > 0 or self.price_per_request > 0

    def to_fields(self) -> dict[str, int]:
        """The Move struct's fields as a dict."""
        return {
            "price_per_kib": self.price_per_kib,
            "price_per_request": self.price_per_request,
            "min_deposit": self.min_deposit,
            "half_close_timeout_ms": self.half_close_timeout_ms,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Sla:
        """Inverse of :meth:`to_fields`. The values are taken as they are, not converted:
        int() would read text, a float or a bool as a number, hiding damaged data from
        :func:`check_fields`. Terms a LocalLedger file kept from before the timeout was
        a term have the default one, under which they were made."""
        return cls(
            fields["price_per_kib"],
            fields["price_per_request"],
            fields["min_deposit"],
            fields.get("half_close_timeout_ms", HALF_CLOSE_TIMEOUT_MS),
        )


@dataclass(frozen=True)
class Service:
    """A service published on a port."""

    #: Free-form kind, e.g. ``"raw"``, ``"http"``, ``"jsonrpc"``.
    kind: str
    sla: Sla
    #: Concurrent connections the host's admission serves (off-chain); 0 means unlimited.
    max_connections: int


@dataclass(frozen=True)
class Firewall:
    """A host's firewall policy.

    The allow and deny lists are Tables on Sui (dynamic fields of the Host, up to
    :data:`MAX_FIREWALL_ENTRIES` each): the Host carries their sizes, not their entries.
    Whether a client is on a list is one lookup (:meth:`Ledger.is_allowed
    <dtp.ledger.interface.Ledger.is_allowed>`, ``is_denied``), and the firewall's decision
    :meth:`Ledger.permits <dtp.ledger.interface.Ledger.permits>` (docs/escrow.md §2)."""

    mode: FirewallMode
    #: Addresses on the allow list (``host::allow_count``).
    allow_count: int
    #: Addresses on the deny list, which always wins (``host::deny_count``).
    deny_count: int
    #: Concurrent connections per client the host's admission serves (off-chain); 0 means
    #: unlimited.
    max_connections_per_client: int
    #: Per-client rate limits, enforced off-chain; 0 means unlimited.
    max_bytes_per_sec: int
    max_requests_per_sec: int

    def lookups(self) -> tuple[bool, bool]:
        """Which lists ``permits`` must look a client up in, as ``(deny, allow)``: the
        deny list if it has entries; the allow list in allow-listed mode if it has any
        (an empty one admits nobody, an allow-all firewall needs none)."""
        return (
            self.deny_count > 0,
            self.mode == FirewallMode.ALLOW_LISTED and self.allow_count > 0,
        )

    def decide(self, *, allowed: bool, denied: bool) -> bool:
        """``host::permits`` once the lists were looked up: deny wins, then allow-all or
        the allow list."""
        if denied:
            return False
        return self.mode == FirewallMode.ALLOW_ALL or allowed


@dataclass(frozen=True)
class Host:
    """A DTP host (shared)."""

    id: str
    version: int
    authority: str
    #: X25519 Noise static public key, 32 bytes.
    noise_static_key: bytes
    endpoints: tuple[bytes, ...]
    services: Mapping[int, Service]
    firewall: Firewall
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1


@dataclass(frozen=True)
class SpendingCap:
    """A client's spending limit per epoch (shared, changed only by ``owner``)."""

    id: str
    version: int
    owner: str
    #: Most MIST that may be claimed in one epoch, every deposit not yet claimed or
    #: refunded counted as claimable in it (docs/escrow.md §4).
    max_per_epoch: int
    #: Claims counted during :attr:`epoch`.
    claimed: int
    #: Deposits and top-ups paid in and not yet counted as claimed or released, of any
    #: epoch.
    outstanding: int
    epoch: int
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @property
    def spent(self) -> int:
        """``claimed + outstanding``: what counts against the limit in :attr:`epoch` (the
        name earlier versions gave it; :meth:`used` tells it for any epoch)."""
        return self.claimed + self.outstanding

    def used(self, current_epoch: int) -> int:
        """What counts against the limit in ``current_epoch``: its counted claims (none
        yet in a new epoch) and what is outstanding."""
        claimed = self.claimed if current_epoch == self.epoch else 0
        return claimed + self.outstanding

    def remaining(self, current_epoch: int) -> int:
        """MIST that an open or a top-up may still reserve in ``current_epoch``
        (docs/escrow.md §4; a reservation of 0 always fits)."""
        return max(0, self.max_per_epoch - self.used(current_epoch))


@dataclass(frozen=True)
class TransportControl:
    """One connection's control object (shared); its ID is the connection ID."""

    id: str
    version: int
    host: str
    port: int
    client: str
    #: The host's authority when the connection opened; receives the payments.
    server: str
    sla: Sla
    escrow: str
    spending_cap: str
    state: ConnectionState
    #: Who half-closed (HalfClosed only).
    half_closed_by: str | None
    #: When the first close happened (HalfClosed and Closed).
    half_closed_at_ms: int | None
    #: When the connection became Closed.
    closed_at_ms: int | None
    opened_at_ms: int
    settled: bool
    #: The Subscription a prepaid connection was opened with (None: a metered one).
    #: Once it is over, the connection is ended: by anyone on the ledger
    #: (``subscription::end_connection``), by a paid server while serving it
    #: (docs/escrow.md §13).
    subscription: str | None = None
    #: The SponsorLane a sponsored connection was opened through (None: any other). Its
    #: client deletes it with ``sponsor::reimburse_and_destroy`` alone, which releases
    #: the lane's pledge first (docs/escrow.md §7, §14).
    sponsor: str | None = None
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @property
    def connection_id(self) -> str:
        """Same as :attr:`id`."""
        return self.id

    @property
    def half_close_timeout_ms(self) -> int:
        """The connection's half-close timeout, fixed when it opened (its SLA's:
        ``transport_control::half_close_timeout_ms``): the server's time to claim from
        the first close, after which the client may settle alone."""
        return self.sla.half_close_timeout_ms

    @property
    def client_settles_at_ms(self) -> int | None:
        """The ledger time from which the client may settle alone (the first close plus
        the half-close timeout); None while Open, when the client must half-close first."""
        if self.half_closed_at_ms is None:
            return None
        return self.half_closed_at_ms + self.sla.half_close_timeout_ms

    @property
    def state_code(self) -> int:
        """0 Open, 1 HalfClosed, 2 Closed."""
        return int(self.state)


@dataclass(frozen=True)
class Escrow:
    """One connection's deposit (shared)."""

    id: str
    version: int
    connection: str
    client: str
    client_public_key: bytes
    server: str
    spending_cap: str
    sla: Sla
    #: MIST currently held: ``deposited - claimed - refunded``.
    balance: int
    deposited: int
    claimed: int
    refunded: int
    latest_nonce: int
    settled: bool
    #: This escrow's part of its spending cap's ``outstanding``: MIST paid in and not yet
    #: reported to the cap as claimed, nor released by the settlement (docs/escrow.md §4).
    reserved: int = 0
    #: The epoch of the latest claim (the open's before any).
    claim_epoch: int = 0
    #: MIST claimed during :attr:`claim_epoch`.
    claimed_in_epoch: int = 0
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1


@dataclass(frozen=True)
class InnerPipe:
    """One lane of a pipe."""

    index: int
    next_seq: int
    acked: int

    @property
    def in_flight(self) -> int:
        """Records sent and not yet acknowledged."""
        return self.next_seq - self.acked


@dataclass(frozen=True)
class Pipe:
    """The sending side's pipe (owned by :attr:`owner`)."""

    id: str
    version: int
    connection: str
    owner: str
    inners: tuple[InnerPipe, ...]


#: A Move ``u128`` field (a broadcast's shares): an int from 0 to 2**128-1, which the
#: views' check holds to that range rather than a u64's.
U128 = typing.NewType("U128", int)

#: A listener may leave a broadcast once its broadcaster has shown no sign of transmitting
#: for this many slots (``broadcast::IDLE_SLOTS``), but never less than
#: :data:`BROADCAST_MIN_IDLE_MS` nor more than :data:`BROADCAST_MAX_IDLE_MS`
#: (docs/escrow.md §9).
BROADCAST_IDLE_SLOTS: Final = 3
BROADCAST_MIN_IDLE_MS: Final = 600_000
BROADCAST_MAX_IDLE_MS: Final = 86_400_000


def broadcast_idle_ms(slot_ms: int) -> int:
    """``broadcast::idle_ms`` of a broadcast with slots of ``slot_ms``."""
    if slot_ms >= BROADCAST_MAX_IDLE_MS // BROADCAST_IDLE_SLOTS:
        return BROADCAST_MAX_IDLE_MS
    return max(slot_ms * BROADCAST_IDLE_SLOTS, BROADCAST_MIN_IDLE_MS)


@dataclass(frozen=True)
class BroadcastStake:
    """One listener's part of a broadcast (``broadcast::Stake``)."""

    #: What the listener has paid in and not taken back.
    contributed: int
    #: The share generation of :attr:`shares`: those of an earlier one are worth nothing.
    generation: int
    #: The broadcast's ``share_shift`` when :attr:`shares` was written.
    shift: int
    shares: U128


@dataclass(frozen=True)
class Broadcast:
    """A broadcast channel and its listeners' pool (shared), held in shares
    (docs/escrow.md §9)."""

    id: str
    version: int
    broadcaster: str
    channel: str
    slot_price: int
    slot_ms: int
    start_ms: int
    #: First slot not yet accounted for (paid or skipped) to its end.
    next_slot: int
    #: How much of slot :attr:`next_slot` (ms from its start) is accounted for already: the
    #: time before a contribution made in it.
    slot_accounted_ms: int
    #: Slots paid to their end (one a contribution put on air part way counts).
    paid_slots: int
    #: Listeners' money not yet earned (as last accounted): the value of every share of
    #: the current generation.
    pool: int
    #: Earned and not yet claimed (as last accounted).
    earned: int
    #: Each listener's stake, until it withdraws or leaves.
    stakes: Mapping[str, BroadcastStake]
    total_contributed: int
    next_seq: int
    cancelled: bool
    #: Shares of the current generation (in the unit of :attr:`share_shift`).
    total_shares: U128
    #: Listeners holding shares of the current generation.
    holders: int
    generation: int
    #: How many times this generation's share unit has doubled.
    share_shift: int
    #: When the broadcaster last showed it was transmitting (``transmit``, ``heartbeat``;
    #: the creation time at first).
    last_live_ms: int
    #: The TicketSale whose holders alone may listen (``create_ticketed``); None for an
    #: open broadcast.
    ticket_sale: str | None = None
    #: The package version the object records (the Move field ``version``: the one
    #: that made it or last migrated it; docs/escrow.md "Versions").
    package_version: int = 1

    @property
    def contributions(self) -> dict[str, int]:
        """What each listener holding a stake has paid in (what its tips are checked
        against)."""
        return {address: stake.contributed for address, stake in self.stakes.items()}

    @property
    def idle_ms(self) -> int:
        """How long the broadcaster may show no sign of transmitting before its
        listeners may leave."""
        return broadcast_idle_ms(self.slot_ms)

    @property
    def leave_opens_ms(self) -> int:
        """When listeners may leave unless the broadcaster shows it is live before."""
        return self.last_live_ms + self.idle_ms

    def is_idle(self, now_ms: int) -> bool:
        """Whether a listener may ``leave`` at ``now_ms``."""
        return not self.cancelled and now_ms >= self.leave_opens_ms

    def slot_at(self, now_ms: int) -> int:
        """Index of the slot in progress at ``now_ms``."""
        return 0 if now_ms < self.start_ms else (now_ms - self.start_ms) // self.slot_ms

    def air_time_due(self, now_ms: int, *, split: bool = False) -> AirTime:
        """What accounting the air time up to ``now_ms`` would pay and skip
        (``broadcast::due``; ``split``: as a contribution then would, the part of the
        slot in progress gone by too)."""
        return air_time_due(
            start_ms=self.start_ms,
            slot_ms=self.slot_ms,
            slot_price=self.slot_price,
            next_slot=self.next_slot,
            slot_accounted_ms=self.slot_accounted_ms,
            pool=self.pool,
            cancelled=self.cancelled,
            now_ms=now_ms,
            split=split,
        )

    def pool_at(self, now_ms: int) -> int:
        """The pool once the slots completed by ``now_ms`` are paid (what the next call
        on the broadcast would find)."""
        return self.pool - self.air_time_due(now_ms).amount

    def is_on_air(self, now_ms: int) -> bool:
        """Whether the pool covers what is left of the slot in progress at ``now_ms``
        (after accrual)."""
        if self.cancelled:
            return False
        due = self.air_time_due(now_ms)
        rest = self.slot_price - slot_part(self.slot_price, self.slot_ms, due.slot_accounted_ms)
        return self.pool - due.amount >= rest

    def shares_of(self, listener: str) -> int:
        """``listener``'s shares of the current generation, in the current unit."""
        stake = self.stakes.get(listener)
        if stake is None or stake.generation != self.generation:
            return 0
        doublings = self.share_shift - stake.shift
        return 0 if doublings >= 128 else stake.shares >> doublings

    def refund_value(self, listener: str, now_ms: int) -> int:
        """What ``withdraw`` or ``leave`` would pay ``listener`` at ``now_ms``, completed
        covered slots paid first (``broadcast::refund_value``)."""
        stake = self.stakes.get(listener)
        if stake is None or stake.generation != self.generation:
            return 0
        pool = self.pool_at(now_ms)
        if self.holders == 1:
            return pool
        shares = self.shares_of(listener)
        return 0 if shares == 0 else shares * pool // self.total_shares


#: Any object a ledger returns from ``get_object``.
ChainObject = Host | SpendingCap | TransportControl | Escrow | Pipe | Broadcast


@dataclass(frozen=True)
class OpenedConnection:
    """What ``open_connection`` creates."""

    connection_id: str
    escrow_id: str
    sla: Sla | None = None
    """The SLA the connection opened with (its ``ConnectionOpened`` event), when the
    ledger reports it: a client metering the connection need not read it back."""
    deposit: int | None = None
    """The MIST deposited into the new escrow (same event), when reported."""

    @classmethod
    def from_event(cls, fields: Mapping[str, Any]) -> OpenedConnection:
        """From a ``ConnectionOpened`` event's fields (``transport_control``; the
        subscription's and sponsor's opens emit it too): IDs, SLA and deposit, on every
        ledger alike."""
        sla = fields["sla"]
        return cls(
            str(fields["connection"]),
            str(fields["escrow"]),
            Sla(
                int(sla["price_per_kib"]),
                int(sla["price_per_request"]),
                int(sla["min_deposit"]),
                int(sla.get("half_close_timeout_ms", HALF_CLOSE_TIMEOUT_MS)),
            ),
            int(fields["deposit"]),
        )


@dataclass(frozen=True)
class Settlement:
    """The outcome of ``settle`` / ``settle_with_receipt``."""

    #: Paid to the server by this call (the final receipt; 0 for ``settle``).
    paid: int
    #: Total paid to the server over the connection's life.
    claimed: int
    #: Returned to the client by this settlement.
    refunded: int

    @classmethod
    def from_event(cls, settled: Event, paid: int = 0) -> Settlement:
        """From the ``ConnectionSettled`` event ``settled`` and what the call's receipt
        paid the server (``paid``), on every ledger alike."""
        return cls(paid, int(settled["claimed"]), int(settled["refunded"]))


@dataclass(frozen=True)
class Event:
    """One Move event, as emitted (docs/escrow.md §11)."""

    #: Opaque position; pass it to ``events`` / ``wait_events`` to read what follows.
    cursor: str
    #: Full type, e.g. ``"dtp::escrow::ReceiptClaimed"``.
    type: str
    #: The Move struct's fields: IDs/addresses as ``0x`` hex strings, integers as int,
    #: ``vector<u8>`` as bytes, ``String`` as str, nested structs (``Sla``) as dicts.
    fields: Mapping[str, Any]
    #: Transaction sender.
    sender: str
    #: Transaction digest (base58, as Sui shows digests).
    tx_digest: str
    #: Clock time of the transaction.
    timestamp_ms: int

    @property
    def name(self) -> str:
        """The struct name alone, e.g. ``"ReceiptClaimed"``."""
        return self.type.rsplit("::", 1)[-1]

    @property
    def module(self) -> str:
        """The module, e.g. ``"escrow"``."""
        return self.type.split("::")[1]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


@dataclass(frozen=True)
class EventFilter:
    """Which events to return; every given criterion must match (None matches all)."""

    #: Struct name (``"ReceiptClaimed"``) or full type (``"dtp::escrow::ReceiptClaimed"``).
    type: str | None = None
    #: Module (``"escrow"``).
    module: str | None = None
    sender: str | None = None
    #: An ID or address that must appear as one of the event's field values.
    object_id: str | None = None

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes this filter."""
        if self.type is not None and self.type not in (event.type, event.name):
            return False
        if self.module is not None and self.module != event.module:
            return False
        if self.sender is not None and self.sender != event.sender:
            return False
        return self.object_id is None or self.object_id in event.fields.values()


@dataclass(frozen=True)
class EventRead:
    """One read of events (``Ledger.read_events``): what ``Ledger.events`` returns, and
    whether the read got to the end."""

    #: The events read, oldest first.
    events: list[Event]
    #: The cursor to pass next time (unchanged if none).
    cursor: str | None
    #: The read got to the newest event the ledger held when it was made: every event
    #: the filter matches up to then is in ``events`` or before the cursor passed in.
    at_end: bool


def object_from_fields(
    name: str,
    object_id: str,
    version: int,
    d: Mapping[str, Any],
    table_entries: Mapping[str, Any],
    table_sizes: Mapping[str, int] | None = None,
) -> ChainObject:
    """The typed view of a dtp object from its Move fields, as both ledgers hold them.

    ``table_entries`` are the entries of the object's ``Table`` (a Broadcast's stakes,
    each as the fields of a ``Stake``), which Sui keeps outside the object.
    ``table_sizes``: the sizes of a Host's firewall Tables (``"allow"``, ``"deny"``) as
    Sui's contents carry them; None when ``d`` holds the lists' entries (LocalLedger).
    Raises ValueError for a struct name that is not a dtp object, and KeyError, TypeError
    or ValueError for
    fields that are missing or not of their Move type (:func:`check_fields`): a ledger's
    stored data can be damaged.
    """
    obj = _object_from_fields(name, object_id, version, d, table_entries, table_sizes)
    check_fields(obj)
    return obj


_D = TypeVar("_D", bound="DataclassInstance")
#: Per typed object class: the Move fields :func:`from_move_fields` reads by name (all
#: after the ID and version but ``package_version``), and whether it has that one.
_MOVE_FIELDS: dict[type, tuple[tuple[str, ...], bool]] = {}


def from_move_fields(
    cls: type[_D], object_id: str, version: int, d: Mapping[str, Any], **given: Any
) -> _D:
    """``cls``, a typed object (its ID and version, then its Move fields), from the fields
    ``d`` by name but for those ``given`` (read otherwise); its ``package_version``, where
    it has one, the Move field ``version``. KeyError for a field missing."""
    found = _MOVE_FIELDS.get(cls)
    if found is None:
        # (made once per class: dataclasses.fields walks every field at each call)
        names = tuple(f.name for f in dataclasses.fields(cls)[2:])
        found = _MOVE_FIELDS[cls] = (
            tuple(n for n in names if n != "package_version"),
            "package_version" in names,
        )
    moved, versioned = found
    values = {n: given[n] if n in given else d[n] for n in moved}
    if versioned:
        values["package_version"] = stored_version(d)
    make: Callable[..., _D] = cls
    return make(object_id, version, **values)


_ADDRESS_TEXT: Final = re.compile(r"0x[0-9a-f]{64}")


def firewall_entries(value: Any, what: str) -> Iterable[str]:
    """The addresses of a firewall list as LocalLedger stores it: a mapping of each
    address (``0x`` and 64 lowercase hex) to ``true``, as the Move Table maps it (a list
    of addresses in files written before the lists were Tables). Anything else is
    damaged data: TypeError or ValueError naming ``what``."""
    if isinstance(value, Mapping):
        if any(flag is not True for flag in value.values()):
            raise TypeError(f"{what} maps an address to something other than true")
        entries: Iterable[Any] = value.keys()
    elif type(value) is list:
        entries = value
    else:
        raise TypeError(f"{what} is a {type(value).__name__}, not a table of addresses")
    for entry in entries:
        if type(entry) is not str or not _ADDRESS_TEXT.fullmatch(entry):
            raise ValueError(f"{what} holds {entry!r:.70}, which is not an address")
    return entries


def check_firewall_list(which: object) -> None:
    """``which`` names a firewall list (``"allow"`` or ``"deny"``): InvalidArgument if not."""
    if which not in FIREWALL_LISTS:
        raise InvalidArgument(f"A firewall list is 'allow' or 'deny', got {which!r:.40}.")


def _list_count(value: Any, what: str) -> int:
    entries = firewall_entries(value, what)
    count = len(set(entries))
    if count > MAX_FIREWALL_ENTRIES:
        raise ValueError(f"{what} holds {count} addresses, over {MAX_FIREWALL_ENTRIES}")
    return count


def _object_from_fields(
    name: str,
    object_id: str,
    version: int,
    d: Mapping[str, Any],
    table_entries: Mapping[str, Any],
    table_sizes: Mapping[str, int] | None = None,
) -> ChainObject:
    """:func:`object_from_fields` before its check. Values are copied, never converted
    (a conversion would hide a damaged value from the check), except those that become
    an enum or a tuple, which are checked first here."""
    if name == "Host":
        fw = d["firewall"]
        if table_sizes is None:
            sizes = {which: _list_count(fw[which], f"firewall.{which}") for which in FIREWALL_LISTS}
        else:
            sizes = dict(table_sizes)
        # read-only: a ledger may hand the same Host to every reader (LocalLedger does)
        services = types.MappingProxyType(
            {_port(port): _service(s) for port, s in d["services"].items()}
        )
        firewall = Firewall(
            FirewallMode(_integer(fw["mode"], "firewall.mode")),
            sizes["allow"],
            sizes["deny"],
            fw["max_connections_per_client"],
            fw["max_bytes_per_sec"],
            fw["max_requests_per_sec"],
        )
        endpoints = _sequence(d["endpoints"], "endpoints")
        return from_move_fields(
            Host, object_id, version, d, endpoints=endpoints, services=services, firewall=firewall
        )
    if name == "SpendingCap":
        if "outstanding" not in d:
            # kept by a LocalLedger file from before outstanding deposits were counted
            # (rules/_escrow.py reads it so too)
            old = {"claimed": d["spent"], "outstanding": 0}
            return from_move_fields(SpendingCap, object_id, version, d, **old)
        return from_move_fields(SpendingCap, object_id, version, d)
    if name == "TransportControl":
        state = d["state"]
        kind = state["kind"]
        if kind not in _STATES:
            # any other value read as Closed would end a connection nobody closed
            raise ValueError(f"state.kind {kind!r:.40} is not a connection state")
        return from_move_fields(
            TransportControl,
            object_id,
            version,
            d,
            sla=Sla.from_fields(d["sla"]),
            state=_STATES[kind],
            half_closed_by=state.get("by"),
            half_closed_at_ms=state.get("at_ms", state.get("half_closed_at_ms")),
            closed_at_ms=state.get("closed_at_ms"),
            # (a LocalLedger file written before connections recorded them has none)
            subscription=d.get("subscription"),
            sponsor=d.get("sponsor"),
        )
    if name == "Escrow":
        # an escrow a LocalLedger file kept from before the cap's counts has nothing
        # outstanding on its cap (rules/_escrow.py reads it so too)
        counts = {} if "claim_epoch" in d else dict.fromkeys(_ESCROW_COUNTS, 0)
        sla = Sla.from_fields(d["sla"])
        return from_move_fields(
            Escrow, object_id, version, d, sla=sla, balance=d["funds"], **counts
        )
    if name == "Pipe":
        inners = tuple(
            InnerPipe(i["index"], i["next_seq"], i["acked"])
            for i in _sequence(d["inners"], "inners")
        )
        return from_move_fields(Pipe, object_id, version, d, inners=inners)
    if name == "Broadcast":
        stakes = {
            address: BroadcastStake(
                stake["contributed"], stake["generation"], stake["shift"], stake["shares"]
            )
            for address, stake in _table(table_entries).items()
        }
        return from_move_fields(
            Broadcast,
            object_id,
            version,
            d,
            # (a broadcast a LocalLedger file kept from before contributions accounted for
            # the slot in progress: nothing of its slot accounted yet)
            slot_accounted_ms=d.get("slot_accounted_ms", 0),
            stakes=stakes,
            ticket_sale=d.get("ticket_sale"),
        )
    raise ValueError(f"{name} is not a dtp object type")


#: An Escrow's counts on its cap (none in one a LocalLedger file kept from before them).
_ESCROW_COUNTS: Final = ("reserved", "claim_epoch", "claimed_in_epoch")

_STATES: Final = {
    "Open": ConnectionState.OPEN,
    "HalfClosed": ConnectionState.HALF_CLOSED,
    "Closed": ConnectionState.CLOSED,
}


def _integer(value: Any, what: str) -> int:
    """``value`` if it is an int (not a bool): an enum made from it would take True or
    1.0 for 1."""
    if type(value) is not int:
        raise TypeError(f"{what} is {value!r:.40}, not an integer")
    return value


def _service(fields: Mapping[str, Any]) -> Service:
    return Service(fields["kind"], Sla.from_fields(fields["sla"]), fields["max_connections"])


def service_from_fields(fields: Mapping[str, Any]) -> Service:
    """The typed view of a ``host::Service`` from its Move fields (one entry of a Host's
    services Table, read alone); KeyError, TypeError or ValueError for damaged fields,
    as :func:`object_from_fields`."""
    service = _service(fields)
    check_fields(service)
    return service


def _port(key: Any) -> int:
    """A port as a key of ``services``: an int (decoded BCS) or its decimal text (JSON
    keys are text); int() alone would also take " 7", "+7" and "7_0"."""
    if type(key) is str and key.isascii() and key.isdecimal():
        return int(key)
    return _integer(key, "a services key")


def _sequence(value: Any, what: str) -> tuple[Any, ...]:
    """A vector's items: tuple() of a text or a dict would make one of its characters or
    keys (which could pass as addresses)."""
    if type(value) not in (list, tuple):
        raise TypeError(f"{what} is a {type(value).__name__}, not a list")
    return tuple(value)


def _table(entries: Any) -> dict[str, Any]:
    """A table's entries as a dict: dict() of a list of pairs would make one."""
    if not isinstance(entries, Mapping):
        raise TypeError(f"a table is a {type(entries).__name__}, not a mapping")
    return dict(entries)


# -- checking the fields of a typed view ---------------------------------------------------

#: Whether a value is of the type it checks.
_Check = Callable[[Any], bool]
#: Per dataclass: its fields, each with the check of its declared type and, for a field
#: holding a nested view, that view's class (to name the field within it on failure).
_PLANS: dict[type, tuple[tuple[str, _Check, type | None], ...]] = {}
#: Per dataclass: the check of a value of it.
_CHECKS: dict[type, _Check] = {}


def check_fields(obj: Any) -> None:
    """Raise TypeError unless every field of the frozen dataclass ``obj`` holds a value of
    its declared type, as the Move field it mirrors would: an ``int`` is an int (not a
    bool) from 0 to 2**64-1, a ``bool`` a bool, nested views, tuples and mappings checked
    item by item. The message names the field (``"Escrow.sla.min_deposit"``).

    The views copy fields as stored, so this is where data of the wrong type (a ledger
    file damaged or edited by something else) is caught. It runs on every read (the
    connect path): one type test per value, the field's name only worded on failure.
    """
    if not _dataclass_check(type(obj))(obj):
        raise TypeError(_wrong_field(obj, type(obj).__name__))


def _wrong_field(obj: Any, where: str) -> str:
    """Which field of ``obj`` (known to fail its check) is wrong, and its value."""
    for name, check, nested in _plan(type(obj)):
        value = getattr(obj, name)
        if not check(value):
            if nested is not None and type(value) is nested:
                return _wrong_field(value, f"{where}.{name}")
            return f"{where}.{name} is {value!r:.40}, not of its Move type"
    return f"{where} is not a {type(obj).__name__}"


def _plan(cls: type) -> tuple[tuple[str, _Check, type | None], ...]:
    """The fields of the dataclass ``cls`` with their checks (made once per class)."""
    plan = _PLANS.get(cls)
    if plan is None:
        # the annotations are text (postponed evaluation): resolved once per class
        hints = typing.get_type_hints(cls)
        plan = tuple(
            (
                f.name,
                _compile(hints[f.name]),
                hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None,
            )
            for f in dataclasses.fields(cls)
        )
        _PLANS[cls] = plan
    return plan


def _dataclass_check(cls: type) -> _Check:
    """The check of a value of the dataclass ``cls`` (made once per class)."""
    check = _CHECKS.get(cls)
    if check is None:
        check = _CHECKS[cls] = _make_dataclass_check(cls)
    return check


def _make_dataclass_check(cls: type) -> _Check:
    """The check of a value of the dataclass ``cls``."""
    # the fields grouped by kind of check, so most take a type test in the loop itself
    # rather than a call (this runs on every read)
    ints: list[str] = []
    exact: list[tuple[str, type]] = []
    other: list[tuple[str, _Check]] = []
    hints = typing.get_type_hints(cls)
    for name, check, _nested in _plan(cls):
        hint = hints[name]
        if hint is int:
            ints.append(name)
        elif hint in (bool, str, bytes):
            exact.append((name, hint))
        else:
            other.append((name, check))

    def check_dataclass(value: Any) -> bool:
        if type(value) is not cls:
            return False
        fields = value.__dict__
        for name in ints:
            x = fields[name]
            if type(x) is not int or not 0 <= x <= U64_MAX:
                return False
        for name, kind in exact:
            if type(fields[name]) is not kind:
                return False
        # a loop, not all() of a generator: no frame made per field
        for name, check in other:  # noqa: SIM110
            if not check(fields[name]):
                return False
        return True

    return check_dataclass


def _compile(hint: Any) -> _Check:
    """The check of a value of the type ``hint``."""
    if hint is int:
        return lambda value: type(value) is int and 0 <= value <= U64_MAX
    if hint is U128:
        return lambda value: type(value) is int and 0 <= value < 1 << 128
    if hint in (bool, str, bytes) or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return lambda value: type(value) is hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_check(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _compile(next(a for a in args if a is not type(None)))
        return lambda value: value is None or inner(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_check(_compile(args[0]))
    if origin is Mapping and len(args) == 2:
        return _mapping_check(_compile(args[0]), _compile(args[1]))
    raise TypeError(f"no check for fields of type {hint!r}")


def _tuple_check(item: _Check) -> _Check:
    """The check of a ``tuple[X, ...]`` whose items pass ``item``."""

    def check_tuple(value: Any) -> bool:
        return type(value) is tuple and all(item(x) for x in value)

    return check_tuple


def _mapping_check(key: _Check, item: _Check) -> _Check:
    """The check of a ``Mapping[K, V]`` whose keys pass ``key`` and values ``item``."""

    def check_mapping(value: Any) -> bool:
        return isinstance(value, Mapping) and all(key(k) and item(x) for k, x in value.items())

    return check_mapping


_HEX_ID = re.compile(r"0[xX]([0-9a-fA-F]{1,64})")


#: Texts :func:`normalize_id` took, each with its normalized form: a connection by host ID
#: normalizes the same few IDs some 36 times on its server (the admission, the gate, the
#: settlement, the receipt scopes), each a pattern match and four string methods. Only
#: exact ``str`` keys (a subclass may compare otherwise) of an ID's length at most (not
#: one padded with spaces); cleared when full, so a process naming many IDs holds at
#: most this many.
_NORMALIZED: dict[str, str] = {}
_NORMALIZED_MAX: Final = 4096


def normalize_id(value: str, what: str = "object ID") -> str:
    """``0x`` + 64 lowercase hex for an ID or address (short forms are zero-padded, as
    Sui does); raises :class:`~dtp.errors.InvalidObjectId`."""
    if type(value) is str:
        known = _NORMALIZED.get(value)
        if known is not None:
            return known
    elif not isinstance(value, str):
        raise InvalidObjectId(
            f"An {what} must be a string like 0x1234…, got {type(value).__name__}."
        )
    # a strict pattern, not int(x, 16): that also takes "_" separators and signs
    match = _HEX_ID.fullmatch(value.strip())
    if match is None:
        raise InvalidObjectId(
            f"{value!r} is not a valid {what} (0x followed by 1 to 64 hex digits)."
        )
    normal = "0x" + match.group(1).lower().rjust(64, "0")
    if type(value) is str and len(value) <= 66:
        if len(_NORMALIZED) >= _NORMALIZED_MAX:
            _NORMALIZED.clear()
        _NORMALIZED[value] = normal
    return normal
