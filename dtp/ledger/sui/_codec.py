"""BCS layouts of the ``move/dtp`` structs and events, and their conversion to the typed
views of :mod:`dtp.ledger._objects` (offline; used by ``SuiLedger`` on node answers).

Sui returns an object's Move contents and an event's payload as BCS bytes. The layouts
below are the structs' fields as the Move sources declare them (field order is BCS order;
:func:`_struct` reads them): ``ID``/``UID`` and ``address`` are 32 bytes, ``String`` and
``vector<u8>`` are ``uleb128(len) || bytes``, ``VecMap<K, V>`` is a vector of ``(K, V)``
pairs, ``VecSet<T>`` a vector of ``T``, ``Balance<T>`` a ``u64``, ``Table<K, V>`` a
``UID`` plus a ``u64`` size (entries are dynamic fields, read separately), enums a
``uleb128`` variant index then its fields, ``Option<T>`` a vector of zero or one ``T``
(decoded as None or the value).

Decoded values follow :class:`dtp.ledger._objects.Event`: IDs and addresses as ``0x`` + 64
lowercase hex, integers as int, ``vector<u8>`` as bytes, ``String`` as str, ``Sla`` as a
dict — the same as ``LocalLedger`` gives.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from dtp.errors import ChainError, InvalidArgument
from dtp.identity._bcs import BCS_MAX_ULEB, bcs_uleb128
from dtp.ledger._objects import (
    ChainObject,
    ConnectionState,
    Service,
    TransportControl,
    as_bytes,
    normalize_id,
    object_from_fields,
)

__all__ = [
    "EVENT_LAYOUTS",
    "MESSAGING_EVENT_LAYOUTS",
    "OBJECT_LAYOUTS",
    "RESPONSE_ESCROW_LAYOUT",
    "SERVICE_LAYOUT",
    "TABLE_VALUE_LAYOUTS",
    "BcsDecodeError",
    "address_field_id",
    "decode",
    "decode_event",
    "decode_object",
    "decode_service",
    "decode_table_values",
    "encode",
    "encode_event",
    "encode_object",
    "host_tables",
    "id_field_id",
    "object_to_fields",
    "port_field_id",
    "service_to_fields",
]

#: A layout: a primitive name, or a tuple ``("vec", T)``, ``("option", T)``,
#: ``("map", K, V)``, ``("struct", ((name, T), ...))``,
#: ``("enum", ((variant, ((name, T), ...)), ...))``.
Layout = str | tuple[Any, ...]


class BcsDecodeError(ChainError):
    """BCS bytes from the node do not match the expected Move layout."""

    name = "BcsDecodeError"
    module = "sui"


_INT_WIDTH: Final = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "u128": 16}


def _split(text: str) -> list[str]:
    """``text`` split at its commas outside angle brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "<") - (char == ">")
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def _move_type(move: str, nested: Mapping[str, Layout]) -> Layout:
    """The layout that reads a field of Move type ``move`` (as the module says; a struct
    or enum of the package is one of ``nested``)."""
    if move in nested:
        return nested[move]
    if move in _INT_WIDTH or move in ("bool", "address"):
        return move
    if move in ("ID", "UID"):
        return "id"
    if move == "String":
        return "string"
    outer, _, rest = move.partition("<")
    if outer == "Table":  # its UID and size; the entries are dynamic fields
        return "table"
    if outer == "Balance":
        return "u64"
    if outer in ("vector", "VecSet", "VecMap", "Option") and rest.endswith(">"):
        args = [_move_type(arg, nested) for arg in _split(rest[:-1])]
        if outer == "VecMap":
            return ("map", args[0], args[1])
        if outer == "Option":
            return ("option", args[0])
        return "bytes" if outer == "vector" and args == ["u8"] else ("vec", args[0])
    raise ValueError(f"no layout reads the Move type {move}")


def _struct(fields: str, **nested: Layout) -> Layout:
    """A struct's layout from its fields as Move declares them (``"cap: ID, epoch: u64"``),
    with the layouts of the package's structs and enums it holds, by name."""
    parts = (field.partition(":") for field in _split(" ".join(fields.split())))
    return (
        "struct",
        tuple((name.strip(), _move_type(kind.strip(), nested)) for name, _, kind in parts),
    )


#: A declaration of :func:`_declared`: ``module::Struct { fields }``.
_DECLARATION: Final = re.compile(r"(\w+)::(\w+)\s*\{(.*?)\}", re.S)


def _declared(declarations: str, **nested: Layout) -> dict[tuple[str, str], Layout]:
    """Layouts by ``(module, struct)`` from declarations as Move's (``host::HostUpdated {
    host: ID, change: u8 }``); each may hold ``nested`` and the structs declared before it."""
    out: dict[tuple[str, str], Layout] = {}
    for module, name, fields in _DECLARATION.findall(declarations):
        out[(module, name)] = nested[name] = _struct(fields, **nested)
    return out


#: The package's structs that objects and events hold, by name.
_HELD: Final = {
    name: layout
    for (_, name), layout in _declared(
        """
    host::Sla { price_per_kib: u64, price_per_request: u64, min_deposit: u64,
        half_close_timeout_ms: u64 }
    host::Service { kind: String, sla: Sla, max_connections: u64 }
    host::Firewall { mode: u8, allow: Table<address, bool>, deny: Table<address, bool>,
        max_connections_per_client: u64, max_bytes_per_sec: u64, max_requests_per_sec: u64 }
    inner_pipe::InnerPipe { index: u64, next_seq: u64, acked: u64 }
    broadcast::Stake { contributed: u64, generation: u64, shift: u64, shares: u128 }
"""
    ).items()
}
#: ``transport_control::State`` (each variant's fields as a struct's).
_STATE: Final[Layout] = (
    "enum",
    (
        ("Open", ()),
        ("HalfClosed", _struct("by: address, at_ms: u64")[1]),
        ("Closed", _struct("half_closed_at_ms: u64, closed_at_ms: u64")[1]),
    ),
)

#: ``host::Service``: the value of each entry of a Host's ``services`` Table.
SERVICE_LAYOUT: Final = _HELD["Service"]

_OBJECTS: Final = _declared(
    """
    host::Host { id: UID, version: u64, authority: address, noise_static_key: vector<u8>,
        endpoints: vector<vector<u8>>, services: Table<u16, Service>, firewall: Firewall }
    spending_cap::SpendingCap { id: UID, version: u64, owner: address, max_per_epoch: u64,
        claimed: u64, outstanding: u64, epoch: u64 }
    transport_control::TransportControl { id: UID, version: u64, host: ID, port: u16,
        client: address, server: address, sla: Sla, escrow: ID, spending_cap: ID, state: State,
        opened_at_ms: u64, settled: bool, subscription: Option<ID>, sponsor: Option<ID> }
    escrow::Escrow { id: UID, version: u64, connection: ID, client: address,
        client_public_key: vector<u8>, server: address, spending_cap: ID, reserved: u64,
        claim_epoch: u64, claimed_in_epoch: u64, sla: Sla, funds: Balance<SUI>, deposited: u64,
        claimed: u64, refunded: u64, latest_nonce: u64, settled: bool }
    pipe::Pipe { id: UID, connection: ID, owner: address, inners: vector<InnerPipe> }
    broadcast::Broadcast { id: UID, version: u64, broadcaster: address, channel: String,
        slot_price: u64, slot_ms: u64, start_ms: u64, next_slot: u64, slot_accounted_ms: u64,
        paid_slots: u64, pool: Balance<SUI>, earned: Balance<SUI>, stakes: Table<address, Stake>,
        total_contributed: u64, next_seq: u64, cancelled: bool, total_shares: u128, holders: u64,
        generation: u64, share_shift: u64, last_live_ms: u64, ticket_sale: Option<ID> }
""",
    State=_STATE,
    **_HELD,
)
#: Object structs by name (contents without type tag).
OBJECT_LAYOUTS: Final = {name: layout for (_, name), layout in _OBJECTS.items()}
#: Which module defines each object struct.
OBJECT_MODULES: Final = {name: module for module, name in _OBJECTS}

#: The values of an object's ``Table`` (a dynamic field's value), by object struct:
#: ``Broadcast.stakes: Table<address, broadcast::Stake>``, ``Host.services: Table<u16,
#: host::Service>`` (the Host's firewall lists are read entry by entry, not decoded whole).
TABLE_VALUE_LAYOUTS: Final = {"Broadcast": _HELD["Stake"], "Host": SERVICE_LAYOUT}
#: The keys of those Tables, where not an ``address``.
TABLE_KEY_LAYOUTS: Final[dict[str, str]] = {"Host": "u16"}

#: Events by ``(module, struct)`` (``version::ObjectMigrated``: a versioned object
#: migrated, docs/escrow.md "Versions").
EVENT_LAYOUTS: Final = _declared(
    """
    version::ObjectMigrated { object: ID, from_version: u64, to_version: u64 }
    host::HostCreated { host: ID, authority: address }
    host::HostUpdated { host: ID, change: u8 }
    host::ServiceAdded { host: ID, port: u16, kind: String, sla: Sla, max_connections: u64 }
    host::ServiceUpdated { host: ID, port: u16, sla: Sla, max_connections: u64 }
    host::ServiceRemoved { host: ID, port: u16 }
    spending_cap::SpendingCapCreated { cap: ID, owner: address, max_per_epoch: u64 }
    spending_cap::SpendingCapChanged { cap: ID, max_per_epoch: u64 }
    spending_cap::SpendingCapReserved { cap: ID, epoch: u64, amount: u64, claimed: u64,
        outstanding: u64 }
    spending_cap::SpendingCapClaimsCounted { cap: ID, epoch: u64, amount: u64, in_epoch: u64,
        claimed: u64, outstanding: u64 }
    spending_cap::SpendingCapReleased { cap: ID, epoch: u64, amount: u64, claimed: u64,
        outstanding: u64 }
    escrow::ReceiptClaimed { escrow: ID, connection: ID, server: address, nonce: u64,
        total_bytes: u64, total_requests: u64, total_amount: u64, paid: u64 }
    escrow::EscrowToppedUp { escrow: ID, connection: ID, amount: u64, deposited: u64 }
    escrow::EscrowRefunded { escrow: ID, connection: ID, client: address, amount: u64 }
    transport_control::ConnectionOpened { connection: ID, host: ID, port: u16, client: address,
        server: address, escrow: ID, deposit: u64, sla: Sla, at_ms: u64 }
    transport_control::ConnectionHalfClosed { connection: ID, by: address, at_ms: u64 }
    transport_control::ConnectionClosed { connection: ID, by: address, at_ms: u64 }
    transport_control::ConnectionSettled { connection: ID, escrow: ID, by: address, claimed: u64,
        refunded: u64 }
    transport_control::ConnectionDeleted { connection: ID, escrow: ID, client: address }
    pipe::PipeCreated { pipe: ID, connection: ID, owner: address, inners: u64 }
    pipe::PipeDestroyed { pipe: ID, connection: ID }
    inner_pipe::PipeDataSent { pipe: ID, inner: u64, seq: u64, data: vector<u8> }
    inner_pipe::PipeSynced { pipe: ID, inner: u64, acked: u64 }
    broadcast::BroadcastCreated { broadcast: ID, broadcaster: address, channel: String,
        slot_price: u64, slot_ms: u64, start_ms: u64, ticket_sale: Option<ID> }
    broadcast::BroadcastContributed { broadcast: ID, listener: address, amount: u64,
        contribution: u64, pool: u64, shares: u128 }
    broadcast::BroadcastTransmitted { broadcast: ID, seq: u64, data: vector<u8> }
    broadcast::BroadcastHeartbeat { broadcast: ID, at_ms: u64 }
    broadcast::BroadcastClaimed { broadcast: ID, amount: u64, paid_slots: u64 }
    broadcast::BroadcastSlotsPaid { broadcast: ID, from_ms: u64, to_ms: u64, slots: u64,
        amount: u64 }
    broadcast::BroadcastSlotsSkipped { broadcast: ID, from_ms: u64, to_ms: u64 }
    broadcast::BroadcastCancelled { broadcast: ID, at_ms: u64, refundable: u64 }
    broadcast::ContributionRefunded { broadcast: ID, listener: address, amount: u64 }
""",
    **_HELD,
)

# -- layouts of the messaging modules (move/dtp/sources/mailbox.move, response_escrow.move) ----

#: ``dtp::response_escrow::ResponseEscrow`` contents.
(RESPONSE_ESCROW_LAYOUT,) = _declared(
    """
    response_escrow::ResponseEscrow { id: UID, version: u64, requester: address,
        requester_public_key: vector<u8>, server: address, request_id: vector<u8>,
        deadline_ms: u64, funds: Balance<SUI>, amount: u64, state: u8 }
"""
).values()

#: Event layouts of the messaging modules (sui_codec.EVENT_LAYOUTS holds the others).
MESSAGING_EVENT_LAYOUTS = _declared(
    """
    mailbox::MailDeposited { recipient_host: ID, payload: vector<u8> }
    response_escrow::ResponseFeeDeposited { escrow: ID, requester: address, server: address,
        request_id: vector<u8>, amount: u64, deadline_ms: u64 }
    response_escrow::ResponseFeeClaimed { escrow: ID, server: address, amount: u64,
        response_hash: vector<u8> }
    response_escrow::ResponseDelivered { escrow: ID, requester: address, request_id: vector<u8>,
        response: vector<u8>, amount: u64 }
    response_escrow::ResponseFeeRefunded { escrow: ID, requester: address, amount: u64 }
    response_escrow::ResponseEscrowDeleted { escrow: ID, requester: address, state: u8 }
"""
)


# -- decoding -------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BcsDecodeError(
                f"BCS data ends at {len(self.data)} bytes; {n} more needed at {self.pos}."
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uleb(self) -> int:
        """A BCS length or variant index: canonical ULEB128 of at most ``2**32-1``."""
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                # a zero last byte (after the first) is padding: BCS allows one encoding
                # per value, as Sui's decoder does, so two byte strings never mean one object
                if shift and not byte:
                    raise BcsDecodeError("ULEB128 value is not in its shortest form.")
                if value > BCS_MAX_ULEB:
                    raise BcsDecodeError(f"ULEB128 value {value} is over BCS's 2**32-1.")
                return value
            shift += 7
            if shift > 28:
                # a sixth byte can only carry bits past 2**35
                raise BcsDecodeError("ULEB128 value is over BCS's 2**32-1.")


def _read(r: _Reader, layout: Layout) -> Any:
    if isinstance(layout, str):
        if layout in _INT_WIDTH:
            return int.from_bytes(r.take(_INT_WIDTH[layout]), "little")
        if layout in ("id", "address"):
            return "0x" + r.take(32).hex()
        if layout == "bool":
            b = r.take(1)[0]
            if b > 1:
                raise BcsDecodeError(f"Invalid BCS bool {b}.")
            return b == 1
        if layout == "bytes":
            return r.take(r.uleb())
        if layout == "string":
            raw = r.take(r.uleb())
            try:
                return raw.decode()
            except UnicodeDecodeError:
                raise BcsDecodeError("A Move String is not valid UTF-8.") from None
        if layout == "table":
            return {"id": "0x" + r.take(32).hex(), "size": int.from_bytes(r.take(8), "little")}
        raise ValueError(f"unknown layout {layout!r}")
    tag = layout[0]
    if tag == "vec":
        return [_read(r, layout[1]) for _ in range(r.uleb())]
    if tag == "option":
        present = r.uleb()
        if present > 1:
            raise BcsDecodeError(f"An Option holds {present} values.")
        return _read(r, layout[1]) if present else None
    if tag == "map":
        out: dict[Any, Any] = {}
        for _ in range(r.uleb()):
            key = _read(r, layout[1])
            if key in out:
                # a Move VecMap never holds a key twice: keeping the last would drop an entry
                raise BcsDecodeError(f"VecMap key {key!r} appears twice.")
            out[key] = _read(r, layout[2])
        return out
    if tag == "struct":
        return {name: _read(r, sub) for name, sub in layout[1]}
    if tag == "enum":
        variants = layout[1]
        index = r.uleb()
        if index >= len(variants):
            raise BcsDecodeError(f"Enum variant {index} does not exist.")
        name, fields = variants[index]
        return {"kind": name, **{f: _read(r, sub) for f, sub in fields}}
    raise ValueError(f"unknown layout {layout!r}")


def decode(layout: Layout, data: bytes) -> Any:
    """Decode ``data`` (all of it) with ``layout``."""
    r = _Reader(bytes(data))
    value = _read(r, layout)
    if r.pos != len(r.data):
        raise BcsDecodeError(f"{len(r.data) - r.pos} bytes follow the BCS value.")
    return value


# -- encoding (the inverse; for tests and tooling) ------------------------------------------


def _write(out: bytearray, layout: Layout, value: Any) -> None:
    try:
        _write_value(out, layout, value)
    except (KeyError, TypeError, AttributeError) as exc:
        # a missing struct field or a value of the wrong shape (None for a struct)
        raise InvalidArgument(
            f"Value {value!r} does not fit BCS layout {layout!r}: {exc}."
        ) from None


def _write_value(out: bytearray, layout: Layout, value: Any) -> None:
    if isinstance(layout, str):
        if layout in _INT_WIDTH:
            width = _INT_WIDTH[layout]
            # int() would truncate a float and parse a str; to_bytes raises OverflowError
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidArgument(f"A {layout} must be an int, got {value!r}.")
            if not 0 <= value < 1 << (8 * width):
                raise InvalidArgument(f"{value} is out of range for a {layout}.")
            out += value.to_bytes(width, "little")
        elif layout in ("id", "address"):
            # exactly 32 bytes: normalize_id refuses a missing 0x and over 64 hex digits
            out += bytes.fromhex(normalize_id(value, layout)[2:])
        elif layout == "bool":
            if not isinstance(value, bool):
                raise InvalidArgument(f"A bool must be True or False, got {value!r}.")
            out.append(1 if value else 0)
        elif layout in ("bytes", "string"):
            # as_bytes, not bytes(): bytes(5) is five zero bytes
            raw = as_bytes(value, f"A BCS {layout}")
            if layout == "string":
                try:
                    raw.decode()
                except UnicodeDecodeError:
                    raise InvalidArgument("A Move String must be valid UTF-8.") from None
            out += bcs_uleb128(len(raw)) + raw
        elif layout == "table":
            _write(out, "id", value["id"])
            _write(out, "u64", value["size"])
        else:
            raise ValueError(f"unknown layout {layout!r}")
        return
    tag = layout[0]
    if tag == "vec":
        out += bcs_uleb128(len(value))
        for item in value:
            _write(out, layout[1], item)
    elif tag == "option":
        out += bcs_uleb128(0 if value is None else 1)
        if value is not None:
            _write(out, layout[1], value)
    elif tag == "map":
        out += bcs_uleb128(len(value))
        for key, item in value.items():
            _write(out, layout[1], key)
            _write(out, layout[2], item)
    elif tag == "struct":
        for name, sub in layout[1]:
            _write(out, sub, value[name])
    elif tag == "enum":
        names = [v[0] for v in layout[1]]
        if value["kind"] not in names:
            raise InvalidArgument(f"Enum variant {value['kind']!r} is not one of {names}.")
        index = names.index(value["kind"])
        out += bcs_uleb128(index)
        for name, sub in layout[1][index][1]:
            _write(out, sub, value[name])
    else:
        raise ValueError(f"unknown layout {layout!r}")


def encode(layout: Layout, value: Any) -> bytes:
    """BCS of ``value`` under ``layout`` (inverse of :func:`decode`)."""
    out = bytearray()
    _write(out, layout, value)
    return bytes(out)


# -- events -----------------------------------------------------------------------------------


def decode_event(module: str, name: str, data: bytes) -> dict[str, Any]:
    """The fields of event ``module::name`` from its BCS payload."""
    layout = EVENT_LAYOUTS.get((module, name))
    if layout is None:
        raise BcsDecodeError(f"Unknown dtp event {module}::{name}.")
    fields: dict[str, Any] = decode(layout, data)
    return fields


def encode_event(module: str, name: str, fields: Mapping[str, Any]) -> bytes:
    """BCS payload of event ``module::name`` (inverse of :func:`decode_event`)."""
    layout = EVENT_LAYOUTS.get((module, name))
    if layout is None:
        raise InvalidArgument(f"Unknown dtp event {module}::{name}.")
    return encode(layout, fields)


# -- objects ----------------------------------------------------------------------------------


def decode_object(
    struct: str,
    version: int,
    data: bytes,
    table_entries: Mapping[Any, Any] | None = None,
) -> ChainObject:
    """The typed view of a ``struct`` object from its BCS contents. ``table_entries`` are
    the entries of its ``Table`` (a Broadcast's stakes, each the fields of a ``Stake``;
    a Host's services by port: :func:`decode_table_values` of the dynamic fields), read
    by the caller."""
    layout = OBJECT_LAYOUTS.get(struct)
    if layout is None:
        raise BcsDecodeError(f"Unknown dtp object type {struct}.")
    d = decode(layout, data)
    entries = table_entries or {}
    sizes = None
    if struct == "Host":
        # a Host carries its Tables' IDs and sizes, not their entries: its services are
        # the entries read beside it; of its firewall lists, the view keeps the sizes
        sizes = {w: d["firewall"][w]["size"] for w in ("allow", "deny")}
        d["services"], entries = dict(entries), {}
    try:
        return object_from_fields(struct, d["id"], version, d, entries, sizes)
    except (ValueError, KeyError, TypeError) as exc:
        # well-formed BCS with a value the typed view has no member for (a firewall
        # mode byte of 2): still not an object this version can read
        raise BcsDecodeError(f"The {struct} object does not decode: {exc}.") from None


#: The field holding the ``Table`` whose entries an object's view carries.
_VIEW_TABLES: Final = {"Broadcast": "stakes", "Host": "services"}


def table_id(struct: str, data: bytes) -> str | None:
    """The ID of the ``Table`` whose entries the view of a ``struct`` object carries: a
    Broadcast's stakes, a Host's services (None for other structs)."""
    field = _VIEW_TABLES.get(struct)
    if field is None:
        return None
    return str(decode(OBJECT_LAYOUTS[struct], data)[field]["id"])


def table_key_length(struct: str) -> int:
    """Bytes of the BCS of each key of that Table: an address (32), a ``u16`` port (2)."""
    key = TABLE_KEY_LAYOUTS.get(struct, "address")
    return 32 if key == "address" else _INT_WIDTH[key]


def decode_table_values(struct: str, values: Mapping[bytes, bytes]) -> dict[Any, Any]:
    """The entries of a ``struct`` object's ``Table`` from the BCS of their keys and
    values (a Broadcast's stakes by address, a Host's services by port), as
    :func:`decode_object` takes them."""
    layout = TABLE_VALUE_LAYOUTS[struct]
    key = TABLE_KEY_LAYOUTS.get(struct, "address")
    return {decode(key, name): decode(layout, raw) for name, raw in values.items()}


def decode_service(data: bytes) -> dict[str, Any]:
    """A ``host::Service``'s fields from its BCS (one entry of a Host's services)."""
    fields: dict[str, Any] = decode(SERVICE_LAYOUT, data)
    return fields


def host_tables(data: bytes) -> tuple[str, str]:
    """The UIDs of the allow and deny ``Table``s in a Host's BCS contents: the parents of
    the lists' entries (they never change for the Host's life; the services' Table is
    :func:`table_id`'s)."""
    fw = decode(OBJECT_LAYOUTS["Host"], data)["firewall"]
    return str(fw["allow"]["id"]), str(fw["deny"]["id"])


#: BCS ``TypeTag``s of the keys of the package's Tables: ``Address`` (variant 4), the
#: firewall lists'; ``U16`` (variant 8), the services'.
_ADDRESS_TYPE_TAG: Final = b"\x04"
#: BCS ``TypeTag::Struct`` (variant 7) of ``0x2::object::ID``: the key type of a
#: SponsorLane's pledges.
_ID_TYPE_TAG: Final = b"\x07" + b"\x00" * 31 + b"\x02" + b"\x06object" + b"\x02ID" + b"\x00"
_U16_TYPE_TAG: Final = b"\x08"
#: Sui's ``HashingIntentScope::ChildObjectId``.
_CHILD_OBJECT_SCOPE: Final = b"\xf0"


def _field_id(table_id: str, name: bytes, type_tag: bytes) -> str:
    """Sui's ``dynamic_field::hash_type_and_key``: blake2b-256 of the ChildObjectId scope
    byte, the table's UID, the key's BCS length as a u64 and its bytes, and the key's
    BCS ``TypeTag``."""
    parent = bytes.fromhex(normalize_id(table_id)[2:])
    data = _CHILD_OBJECT_SCOPE + parent + len(name).to_bytes(8, "little") + name
    return "0x" + hashlib.blake2b(data + type_tag, digest_size=32).hexdigest()


def address_field_id(table_id: str, key: str) -> str:
    """The object ID of the entry ``key`` of a ``Table<address, _>`` (its dynamic field),
    as Sui derives it. The entry exists iff the object does, so one GetObject tells
    whether ``key`` is in the table."""
    name = bytes.fromhex(normalize_id(key, "address")[2:])
    return _field_id(table_id, name, _ADDRESS_TYPE_TAG)


def id_field_id(table_id: str, key: str) -> str:
    """The object ID of the entry ``key`` of a ``Table<ID, _>`` (a SponsorLane's
    pledges), as :func:`address_field_id` for an address key."""
    return _field_id(table_id, bytes.fromhex(normalize_id(key)[2:]), _ID_TYPE_TAG)


def port_field_id(table_id: str, port: int) -> str:
    """The object ID of the entry ``port`` of a ``Table<u16, _>`` (a Host's services), as
    Sui derives it: one GetObject reads the service on ``port``, or finds none."""
    return _field_id(table_id, encode("u16", port), _U16_TYPE_TAG)


def _connection_state(tc: TransportControl) -> dict[str, Any]:
    """``transport_control::State`` of a connection's view: the variant and its fields."""
    if tc.state == ConnectionState.OPEN:
        return {"kind": "Open"}
    if tc.state == ConnectionState.HALF_CLOSED:
        return {"kind": "HalfClosed", "by": tc.half_closed_by, "at_ms": tc.half_closed_at_ms}
    return {
        "kind": "Closed",
        "half_closed_at_ms": tc.half_closed_at_ms,
        "closed_at_ms": tc.closed_at_ms,
    }


#: The fields a typed view holds otherwise than its Move struct, by (view class, field):
#: the Move value from the view and the ID given to its Tables. Every other field is the
#: view's attribute of its name (``version``: ``package_version``), a Table its size.
_VIEW_FIELDS: Final[dict[tuple[str, str], Callable[[Any, str], Any]]] = {
    ("Escrow", "funds"): lambda escrow, table: escrow.balance,
    ("Firewall", "mode"): lambda fw, table: int(fw.mode),
    ("Firewall", "allow"): lambda fw, table: {"id": table, "size": fw.allow_count},
    ("Firewall", "deny"): lambda fw, table: {"id": table, "size": fw.deny_count},
    ("TransportControl", "state"): lambda tc, table: _connection_state(tc),
}


def _move_value(value: Any, layout: Layout, table: str) -> Any:
    """A typed view's ``value`` as :func:`encode` takes it under ``layout``."""
    if layout == "table":
        return {"id": table, "size": len(value)}
    if isinstance(layout, str) or layout[0] not in ("struct", "vec"):
        return value
    if layout[0] == "vec":
        return [_move_value(item, layout[1], table) for item in value]
    out: dict[str, Any] = {}
    for name, sub in layout[1]:
        special = _VIEW_FIELDS.get((type(value).__name__, name))
        if special is not None:
            out[name] = special(value, table)
        else:
            field = getattr(value, "package_version" if name == "version" else name)
            out[name] = _move_value(field, sub, table)
    return out


def object_to_fields(obj: ChainObject, table: str = "0x" + "00" * 32) -> dict[str, Any]:
    """The Move-shaped fields of a typed object (inverse of :func:`decode_object`, with
    ``table`` as the ID of its Tables, if any: a Host's services, as a Broadcast's stakes,
    are entries beside it, :func:`service_to_fields` each)."""
    fields: dict[str, Any] = _move_value(obj, OBJECT_LAYOUTS[type(obj).__name__], table)
    return fields


def service_to_fields(service: Service) -> dict[str, Any]:
    """The Move-shaped fields of a ``host::Service`` (one entry of a Host's services)."""
    fields: dict[str, Any] = _move_value(service, SERVICE_LAYOUT, "")
    return fields


def encode_object(obj: ChainObject, table: str = "0x" + "00" * 32) -> bytes:
    """BCS contents of a typed object, as Sui stores them (for tests and tooling)."""
    return encode(OBJECT_LAYOUTS[type(obj).__name__], object_to_fields(obj, table))
