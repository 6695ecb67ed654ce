"""BCS layouts of the ``move/dtp`` structs and events, and their conversion to the typed
views of :mod:`dtp.ledger._objects` (offline; used by ``SuiLedger`` on node answers).

Sui returns an object's Move contents and an event's payload as BCS bytes. The layouts
below are written from the Move sources (field order is BCS order): ``ID``/``UID`` and
``address`` are 32 bytes, ``String`` and ``vector<u8>`` are ``uleb128(len) || bytes``,
``VecMap<K, V>`` is a vector of ``(K, V)`` pairs, ``VecSet<T>`` a vector of ``T``,
``Balance<T>`` a ``u64``, ``Table<K, V>`` a ``UID`` plus a ``u64`` size (entries are
dynamic fields, read separately), enums a ``uleb128`` variant index then its fields,
``Option<T>`` a vector of zero or one ``T`` (decoded as None or the value).

Decoded values follow :class:`dtp.ledger._objects.Event`: IDs and addresses as ``0x`` + 64
lowercase hex, integers as int, ``vector<u8>`` as bytes, ``String`` as str, ``Sla`` as a
dict — the same as ``LocalLedger`` gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from dtp.errors import ChainError, InvalidArgument
from dtp.identity._bcs import BCS_MAX_ULEB, bcs_uleb128
from dtp.ledger._objects import (
    ChainObject,
    ConnectionState,
    Escrow,
    Host,
    Pipe,
    SpendingCap,
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
    "TABLE_VALUE_LAYOUTS",
    "BcsDecodeError",
    "address_field_id",
    "decode",
    "decode_event",
    "decode_object",
    "decode_table_values",
    "encode",
    "encode_event",
    "encode_object",
    "host_tables",
    "object_to_fields",
]

#: A layout: a primitive name, or a tuple ``("vec", T)``, ``("option", T)``,
#: ``("map", K, V)``, ``("struct", ((name, T), ...))``,
#: ``("enum", ((variant, ((name, T), ...)), ...))``.
Layout = str | tuple[Any, ...]


class BcsDecodeError(ChainError):
    """BCS bytes from the node do not match the expected Move layout."""

    name = "BcsDecodeError"
    module = "sui"


_SLA: Final[Layout] = (
    "struct",
    (("price_per_kib", "u64"), ("price_per_request", "u64"), ("min_deposit", "u64")),
)


def _struct(*fields: tuple[str, Layout]) -> Layout:
    return ("struct", fields)


#: Object structs by name (contents without type tag).
OBJECT_LAYOUTS: Final[dict[str, Layout]] = {
    "Host": _struct(
        ("id", "id"),
        ("authority", "address"),
        ("noise_static_key", "bytes"),
        ("endpoints", ("vec", "bytes")),
        (
            "services",
            (
                "map",
                "u16",
                _struct(("kind", "string"), ("sla", _SLA), ("max_connections", "u64")),
            ),
        ),
        (
            "firewall",
            _struct(
                ("mode", "u8"),
                ("allow", "table"),
                ("deny", "table"),
                ("max_connections_per_client", "u64"),
                ("max_bytes_per_sec", "u64"),
                ("max_requests_per_sec", "u64"),
            ),
        ),
    ),
    "SpendingCap": _struct(
        ("id", "id"),
        ("owner", "address"),
        ("max_per_epoch", "u64"),
        ("claimed", "u64"),
        ("outstanding", "u64"),
        ("epoch", "u64"),
    ),
    "TransportControl": _struct(
        ("id", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("client", "address"),
        ("server", "address"),
        ("sla", _SLA),
        ("escrow", "id"),
        ("spending_cap", "id"),
        (
            "state",
            (
                "enum",
                (
                    ("Open", ()),
                    ("HalfClosed", (("by", "address"), ("at_ms", "u64"))),
                    ("Closed", (("half_closed_at_ms", "u64"), ("closed_at_ms", "u64"))),
                ),
            ),
        ),
        ("opened_at_ms", "u64"),
        ("settled", "bool"),
        ("subscription", ("option", "id")),
    ),
    "Escrow": _struct(
        ("id", "id"),
        ("connection", "id"),
        ("client", "address"),
        ("client_public_key", "bytes"),
        ("server", "address"),
        ("spending_cap", "id"),
        ("reserved", "u64"),
        ("claim_epoch", "u64"),
        ("claimed_in_epoch", "u64"),
        ("sla", _SLA),
        ("funds", "u64"),
        ("deposited", "u64"),
        ("claimed", "u64"),
        ("refunded", "u64"),
        ("latest_nonce", "u64"),
        ("settled", "bool"),
    ),
    "Pipe": _struct(
        ("id", "id"),
        ("connection", "id"),
        ("owner", "address"),
        ("inners", ("vec", _struct(("index", "u64"), ("next_seq", "u64"), ("acked", "u64")))),
    ),
    "Broadcast": _struct(
        ("id", "id"),
        ("broadcaster", "address"),
        ("channel", "string"),
        ("slot_price", "u64"),
        ("slot_ms", "u64"),
        ("start_ms", "u64"),
        ("next_slot", "u64"),
        ("paid_slots", "u64"),
        ("pool", "u64"),
        ("earned", "u64"),
        ("stakes", "table"),
        ("total_contributed", "u64"),
        ("next_seq", "u64"),
        ("cancelled", "bool"),
        ("total_shares", "u128"),
        ("holders", "u64"),
        ("generation", "u64"),
        ("share_shift", "u64"),
        ("last_live_ms", "u64"),
        ("ticket_sale", ("option", "id")),
    ),
}

#: The values of an object's ``Table`` (a dynamic field's value), by object struct:
#: ``Broadcast.stakes: Table<address, broadcast::Stake>``.
TABLE_VALUE_LAYOUTS: Final[dict[str, Layout]] = {
    "Broadcast": _struct(
        ("contributed", "u64"), ("generation", "u64"), ("shift", "u64"), ("shares", "u128")
    ),
}

#: Which module defines each object struct.
OBJECT_MODULES: Final[dict[str, str]] = {
    "Host": "host",
    "SpendingCap": "spending_cap",
    "TransportControl": "transport_control",
    "Escrow": "escrow",
    "Pipe": "pipe",
    "Broadcast": "broadcast",
}

#: Events by ``(module, struct)``.
EVENT_LAYOUTS: Final[dict[tuple[str, str], Layout]] = {
    ("host", "HostCreated"): _struct(("host", "id"), ("authority", "address")),
    ("host", "HostUpdated"): _struct(("host", "id"), ("change", "u8")),
    ("host", "ServiceAdded"): _struct(
        ("host", "id"),
        ("port", "u16"),
        ("kind", "string"),
        ("sla", _SLA),
        ("max_connections", "u64"),
    ),
    ("host", "ServiceUpdated"): _struct(
        ("host", "id"), ("port", "u16"), ("sla", _SLA), ("max_connections", "u64")
    ),
    ("host", "ServiceRemoved"): _struct(("host", "id"), ("port", "u16")),
    ("spending_cap", "SpendingCapCreated"): _struct(
        ("cap", "id"), ("owner", "address"), ("max_per_epoch", "u64")
    ),
    ("spending_cap", "SpendingCapChanged"): _struct(("cap", "id"), ("max_per_epoch", "u64")),
    ("spending_cap", "SpendingCapReserved"): _struct(
        ("cap", "id"),
        ("epoch", "u64"),
        ("amount", "u64"),
        ("claimed", "u64"),
        ("outstanding", "u64"),
    ),
    ("spending_cap", "SpendingCapClaimsCounted"): _struct(
        ("cap", "id"),
        ("epoch", "u64"),
        ("amount", "u64"),
        ("in_epoch", "u64"),
        ("claimed", "u64"),
        ("outstanding", "u64"),
    ),
    ("spending_cap", "SpendingCapReleased"): _struct(
        ("cap", "id"),
        ("epoch", "u64"),
        ("amount", "u64"),
        ("claimed", "u64"),
        ("outstanding", "u64"),
    ),
    ("escrow", "ReceiptClaimed"): _struct(
        ("escrow", "id"),
        ("connection", "id"),
        ("server", "address"),
        ("nonce", "u64"),
        ("total_bytes", "u64"),
        ("total_requests", "u64"),
        ("total_amount", "u64"),
        ("paid", "u64"),
    ),
    ("escrow", "EscrowToppedUp"): _struct(
        ("escrow", "id"), ("connection", "id"), ("amount", "u64"), ("deposited", "u64")
    ),
    ("escrow", "EscrowRefunded"): _struct(
        ("escrow", "id"), ("connection", "id"), ("client", "address"), ("amount", "u64")
    ),
    ("transport_control", "ConnectionOpened"): _struct(
        ("connection", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("client", "address"),
        ("server", "address"),
        ("escrow", "id"),
        ("deposit", "u64"),
        ("sla", _SLA),
        ("at_ms", "u64"),
    ),
    ("transport_control", "ConnectionHalfClosed"): _struct(
        ("connection", "id"), ("by", "address"), ("at_ms", "u64")
    ),
    ("transport_control", "ConnectionClosed"): _struct(
        ("connection", "id"), ("by", "address"), ("at_ms", "u64")
    ),
    ("transport_control", "ConnectionSettled"): _struct(
        ("connection", "id"),
        ("escrow", "id"),
        ("by", "address"),
        ("claimed", "u64"),
        ("refunded", "u64"),
    ),
    ("pipe", "PipeCreated"): _struct(
        ("pipe", "id"), ("connection", "id"), ("owner", "address"), ("inners", "u64")
    ),
    ("pipe", "PipeDestroyed"): _struct(("pipe", "id"), ("connection", "id")),
    ("inner_pipe", "PipeDataSent"): _struct(
        ("pipe", "id"), ("inner", "u64"), ("seq", "u64"), ("data", "bytes")
    ),
    ("inner_pipe", "PipeSynced"): _struct(("pipe", "id"), ("inner", "u64"), ("acked", "u64")),
    ("broadcast", "BroadcastCreated"): _struct(
        ("broadcast", "id"),
        ("broadcaster", "address"),
        ("channel", "string"),
        ("slot_price", "u64"),
        ("slot_ms", "u64"),
        ("start_ms", "u64"),
        ("ticket_sale", ("option", "id")),
    ),
    ("broadcast", "BroadcastContributed"): _struct(
        ("broadcast", "id"),
        ("listener", "address"),
        ("amount", "u64"),
        ("contribution", "u64"),
        ("pool", "u64"),
        ("shares", "u128"),
    ),
    ("broadcast", "BroadcastTransmitted"): _struct(
        ("broadcast", "id"), ("seq", "u64"), ("data", "bytes")
    ),
    ("broadcast", "BroadcastHeartbeat"): _struct(("broadcast", "id"), ("at_ms", "u64")),
    ("broadcast", "BroadcastClaimed"): _struct(
        ("broadcast", "id"), ("amount", "u64"), ("paid_slots", "u64")
    ),
    ("broadcast", "BroadcastCancelled"): _struct(
        ("broadcast", "id"), ("at_ms", "u64"), ("refundable", "u64")
    ),
    ("broadcast", "ContributionRefunded"): _struct(
        ("broadcast", "id"), ("listener", "address"), ("amount", "u64")
    ),
}

# -- layouts of the messaging modules (move/dtp/sources/mailbox.move, response_escrow.move) ----

#: ``dtp::response_escrow::ResponseEscrow`` contents.
RESPONSE_ESCROW_LAYOUT: Layout = (
    "struct",
    (
        ("id", "id"),
        ("requester", "address"),
        ("requester_public_key", "bytes"),
        ("server", "address"),
        ("request_id", "bytes"),
        ("deadline_ms", "u64"),
        ("funds", "u64"),
        ("amount", "u64"),
        ("state", "u8"),
    ),
)

#: Event layouts of the messaging modules (sui_codec.EVENT_LAYOUTS holds the others).
MESSAGING_EVENT_LAYOUTS: dict[tuple[str, str], Layout] = {}
MESSAGING_EVENT_LAYOUTS.setdefault(
    ("mailbox", "MailDeposited"),
    ("struct", (("recipient_host", "id"), ("payload", "bytes"))),
)
MESSAGING_EVENT_LAYOUTS.setdefault(
    ("response_escrow", "ResponseFeeDeposited"),
    (
        "struct",
        (
            ("escrow", "id"),
            ("requester", "address"),
            ("server", "address"),
            ("request_id", "bytes"),
            ("amount", "u64"),
            ("deadline_ms", "u64"),
        ),
    ),
)
MESSAGING_EVENT_LAYOUTS.setdefault(
    ("response_escrow", "ResponseFeeClaimed"),
    (
        "struct",
        (("escrow", "id"), ("server", "address"), ("amount", "u64"), ("response_hash", "bytes")),
    ),
)
MESSAGING_EVENT_LAYOUTS.setdefault(
    ("response_escrow", "ResponseDelivered"),
    (
        "struct",
        (
            ("escrow", "id"),
            ("requester", "address"),
            ("request_id", "bytes"),
            ("response", "bytes"),
            ("amount", "u64"),
        ),
    ),
)
MESSAGING_EVENT_LAYOUTS.setdefault(
    ("response_escrow", "ResponseFeeRefunded"),
    ("struct", (("escrow", "id"), ("requester", "address"), ("amount", "u64"))),
)

_INT_WIDTH: Final = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "u128": 16}


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
    table_entries: Mapping[str, Any] | None = None,
) -> ChainObject:
    """The typed view of a ``struct`` object from its BCS contents. ``table_entries`` are
    the entries of its ``Table`` (a Broadcast's stakes, each the fields of a ``Stake``:
    :func:`decode_table_values` of the dynamic fields), read by the caller."""
    layout = OBJECT_LAYOUTS.get(struct)
    if layout is None:
        raise BcsDecodeError(f"Unknown dtp object type {struct}.")
    d = decode(layout, data)
    # a Host carries its firewall Tables' IDs and sizes, not their entries
    sizes = {w: d["firewall"][w]["size"] for w in ("allow", "deny")} if struct == "Host" else None
    try:
        return object_from_fields(struct, d["id"], version, d, table_entries or {}, sizes)
    except (ValueError, KeyError, TypeError) as exc:
        # well-formed BCS with a value the typed view has no member for (a firewall
        # mode byte of 2): still not an object this version can read
        raise BcsDecodeError(f"The {struct} object does not decode: {exc}.") from None


def table_id(struct: str, data: bytes) -> str | None:
    """The ID of the ``Table`` inside a Broadcast (None for other structs)."""
    if struct != "Broadcast":
        return None
    return str(decode(OBJECT_LAYOUTS[struct], data)["stakes"]["id"])


def decode_table_values(struct: str, values: Mapping[str, bytes]) -> dict[str, Any]:
    """The entries of a ``struct`` object's ``Table`` from the BCS of their values (a
    Broadcast's stakes), as :func:`decode_object` takes them."""
    layout = TABLE_VALUE_LAYOUTS[struct]
    return {key: decode(layout, raw) for key, raw in values.items()}


def host_tables(data: bytes) -> tuple[str, str]:
    """The UIDs of the allow and deny ``Table``s in a Host's BCS contents: the parents of
    the lists' entries (they never change for the Host's life)."""
    fw = decode(OBJECT_LAYOUTS["Host"], data)["firewall"]
    return str(fw["allow"]["id"]), str(fw["deny"]["id"])


#: BCS ``TypeTag::Address`` (variant 4): the key type of the firewall Tables.
_ADDRESS_TYPE_TAG: Final = b"\x04"
#: Sui's ``HashingIntentScope::ChildObjectId``.
_CHILD_OBJECT_SCOPE: Final = b"\xf0"


def address_field_id(table_id: str, key: str) -> str:
    """The object ID of the entry ``key`` of a ``Table<address, _>`` (its dynamic field),
    as Sui derives it (``dynamic_field::hash_type_and_key``): blake2b-256 of the
    ChildObjectId scope byte, the table's UID, the key's BCS length as a u64 and its
    bytes, and the key's BCS ``TypeTag``. The entry exists iff the object does, so one
    GetObject tells whether ``key`` is in the table."""
    parent = bytes.fromhex(normalize_id(table_id)[2:])
    name = bytes.fromhex(normalize_id(key, "address")[2:])
    data = _CHILD_OBJECT_SCOPE + parent + len(name).to_bytes(8, "little") + name
    return "0x" + hashlib.blake2b(data + _ADDRESS_TYPE_TAG, digest_size=32).hexdigest()


def object_to_fields(obj: ChainObject, table: str = "0x" + "00" * 32) -> dict[str, Any]:
    """The Move-shaped fields of a typed object (inverse of :func:`decode_object`, with
    ``table`` as the ID of its Tables, if any)."""
    if isinstance(obj, Host):
        fw = obj.firewall
        return {
            "id": obj.id,
            "authority": obj.authority,
            "noise_static_key": obj.noise_static_key,
            "endpoints": list(obj.endpoints),
            "services": {
                port: {
                    "kind": s.kind,
                    "sla": s.sla.to_fields(),
                    "max_connections": s.max_connections,
                }
                for port, s in obj.services.items()
            },
            "firewall": {
                "mode": int(fw.mode),
                "allow": {"id": table, "size": fw.allow_count},
                "deny": {"id": table, "size": fw.deny_count},
                "max_connections_per_client": fw.max_connections_per_client,
                "max_bytes_per_sec": fw.max_bytes_per_sec,
                "max_requests_per_sec": fw.max_requests_per_sec,
            },
        }
    if isinstance(obj, SpendingCap):
        return {
            "id": obj.id,
            "owner": obj.owner,
            "max_per_epoch": obj.max_per_epoch,
            "claimed": obj.claimed,
            "outstanding": obj.outstanding,
            "epoch": obj.epoch,
        }
    if isinstance(obj, TransportControl):
        state: dict[str, Any]
        if obj.state == ConnectionState.OPEN:
            state = {"kind": "Open"}
        elif obj.state == ConnectionState.HALF_CLOSED:
            state = {"kind": "HalfClosed", "by": obj.half_closed_by, "at_ms": obj.half_closed_at_ms}
        else:
            state = {
                "kind": "Closed",
                "half_closed_at_ms": obj.half_closed_at_ms,
                "closed_at_ms": obj.closed_at_ms,
            }
        return {
            "id": obj.id,
            "host": obj.host,
            "port": obj.port,
            "client": obj.client,
            "server": obj.server,
            "sla": obj.sla.to_fields(),
            "escrow": obj.escrow,
            "spending_cap": obj.spending_cap,
            "state": state,
            "opened_at_ms": obj.opened_at_ms,
            "settled": obj.settled,
            "subscription": obj.subscription,
        }
    if isinstance(obj, Escrow):
        return {
            "id": obj.id,
            "connection": obj.connection,
            "client": obj.client,
            "client_public_key": obj.client_public_key,
            "server": obj.server,
            "spending_cap": obj.spending_cap,
            "reserved": obj.reserved,
            "claim_epoch": obj.claim_epoch,
            "claimed_in_epoch": obj.claimed_in_epoch,
            "sla": obj.sla.to_fields(),
            "funds": obj.balance,
            "deposited": obj.deposited,
            "claimed": obj.claimed,
            "refunded": obj.refunded,
            "latest_nonce": obj.latest_nonce,
            "settled": obj.settled,
        }
    if isinstance(obj, Pipe):
        return {
            "id": obj.id,
            "connection": obj.connection,
            "owner": obj.owner,
            "inners": [
                {"index": i.index, "next_seq": i.next_seq, "acked": i.acked} for i in obj.inners
            ],
        }
    return {
        "id": obj.id,
        "broadcaster": obj.broadcaster,
        "channel": obj.channel,
        "slot_price": obj.slot_price,
        "slot_ms": obj.slot_ms,
        "start_ms": obj.start_ms,
        "next_slot": obj.next_slot,
        "paid_slots": obj.paid_slots,
        "pool": obj.pool,
        "earned": obj.earned,
        "stakes": {"id": table, "size": len(obj.stakes)},
        "total_contributed": obj.total_contributed,
        "next_seq": obj.next_seq,
        "cancelled": obj.cancelled,
        "total_shares": obj.total_shares,
        "holders": obj.holders,
        "generation": obj.generation,
        "share_shift": obj.share_shift,
        "last_live_ms": obj.last_live_ms,
        "ticket_sale": obj.ticket_sale,
    }


def encode_object(obj: ChainObject, table: str = "0x" + "00" * 32) -> bytes:
    """BCS contents of a typed object, as Sui stores them (for tests and tooling)."""
    return encode(OBJECT_LAYOUTS[type(obj).__name__], object_to_fields(obj, table))
