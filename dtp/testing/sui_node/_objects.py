"""How LocalLedger's objects and events look on a Sui node: their Move type strings, BCS
contents (the layouts SuiLedger decodes with: dtp.ledger.sui._codec,
dtp.ledger.sui._economics and the messaging layouts of dtp.ledger.sui), the dynamic-field
objects of their ``Table``s, coins, and object digests.

The layouts come from the Move sources; LocalLedger's object data carry the same field
names, so one generic conversion serves every struct. Type strings are written as the
``sui.rpc.v2`` API writes them: every address in full (``0x`` and 64 hex digits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dtp.identity._bcs import bcs_uleb128
from dtp.ledger.local._tx import base58
from dtp.ledger.sui._codec import (
    EVENT_LAYOUTS,
    MESSAGING_EVENT_LAYOUTS,
    OBJECT_LAYOUTS,
    RESPONSE_ESCROW_LAYOUT,
    SERVICE_LAYOUT,
    TABLE_VALUE_LAYOUTS,
    Layout,
    encode,
)
from dtp.ledger.sui._coordination import COORDINATION_EVENT_LAYOUTS, COORDINATION_OBJECT_LAYOUTS
from dtp.ledger.sui._economics import ECONOMICS_EVENT_LAYOUTS, ECONOMICS_OBJECT_LAYOUTS

__all__ = [
    "CLOCK_ID",
    "CLOCK_TYPE",
    "COIN_TYPE",
    "SUI_FRAMEWORK",
    "Table",
    "TableField",
    "coin_contents",
    "event_contents",
    "full_address",
    "move_type",
    "object_contents",
    "object_digest",
    "table_uid",
    "tables",
]

#: The Sui framework package (``0x2``) and the standard library (``0x1``), in full.
SUI_FRAMEWORK: Final = "0x" + "2".rjust(64, "0")
MOVE_STDLIB: Final = "0x" + "1".rjust(64, "0")
COIN_TYPE: Final = f"{SUI_FRAMEWORK}::coin::Coin<{SUI_FRAMEWORK}::sui::SUI>"
CLOCK_ID: Final = "0x" + "6".rjust(64, "0")
CLOCK_TYPE: Final = f"{SUI_FRAMEWORK}::clock::Clock"

#: Contents of every object struct of the package, by struct name.
_OBJECT_LAYOUTS: Final[dict[str, Layout]] = {
    **OBJECT_LAYOUTS,
    **ECONOMICS_OBJECT_LAYOUTS,
    **COORDINATION_OBJECT_LAYOUTS,
    "ResponseEscrow": RESPONSE_ESCROW_LAYOUT,
    # (the package's one owned capability: its UID alone)
    "AdminCap": ("struct", (("id", "id"),)),
}
#: Payloads of every event of the package, by (module, struct).
_EVENT_LAYOUTS: Final[dict[tuple[str, str], Layout]] = {
    **EVENT_LAYOUTS,
    **ECONOMICS_EVENT_LAYOUTS,
    **COORDINATION_EVENT_LAYOUTS,
    **MESSAGING_EVENT_LAYOUTS,
}

#: Keys and values of the package's ``Table``s other than ``Table<address, u64>``
#: (move/dtp/sources/sponsor.move: ``pledges: Table<ID, u64>``; broadcast.move:
#: ``stakes: Table<address, Stake>``; host.move: the firewall's ``allow`` and ``deny``,
#: ``Table<address, bool>``, and ``services: Table<u16, Service>``, which LocalLedger keys
#: by the port as text).
_TABLE_KEYS: Final = {"pledges": "id", "services": "u16"}
_TABLE_VALUES: Final[dict[str, tuple[str, Layout]]] = {
    "stakes": ("broadcast::Stake", TABLE_VALUE_LAYOUTS["Broadcast"]),
    "allow": ("bool", "bool"),
    "deny": ("bool", "bool"),
    "services": ("host::Service", SERVICE_LAYOUT),
}
#: Each kind of key: its Move type in a Field's type, and its BCS ``TypeTag``.
_KEY_TYPES: Final = {
    "address": ("address", b"\x04"),
    "id": (
        f"{SUI_FRAMEWORK}::object::ID",
        b"\x07" + bytes.fromhex(SUI_FRAMEWORK[2:]) + b"\x06object" + b"\x02ID" + b"\x00",
    ),
    "u16": ("u16", b"\x08"),
}


def full_address(address: str) -> str:
    """``0x`` and 64 hex digits (``0x2`` -> ``0x00…02``)."""
    return "0x" + address[2:].rjust(64, "0")


def move_type(package: str, local_type: str) -> str:
    """The full Move type of a LocalLedger type (``dtp::host::Host`` ->
    ``0x<package>::host::Host``)."""
    _, module, name = local_type.split("::")
    return f"{package}::{module}::{name}"


def table_uid(parent: str, field: str) -> str:
    """The UID of the ``Table`` in ``parent``'s ``field``: stable for the parent's life
    (LocalLedger keeps the entries, not the table's own ID)."""
    raw = hashlib.blake2b(
        b"dtp-stand-in-table" + bytes.fromhex(parent[2:]) + field.encode(), digest_size=32
    )
    return "0x" + raw.hexdigest()


def _move_value(layout: Layout, value: Any, object_id: str, field: str) -> Any:
    """``value`` from LocalLedger's object data, in the shape sui_codec.encode takes."""
    if layout == "table":
        return {"id": table_uid(object_id, field), "size": len(value)}
    if isinstance(layout, str):
        return value
    tag = layout[0]
    if tag == "struct":
        out = {}
        for name, sub in layout[1]:
            if name == "id" and field == "":
                out[name] = object_id
            else:
                out[name] = _move_value(sub, value[name], object_id, name)
        return out
    if tag == "vec":
        return [_move_value(layout[1], item, object_id, field) for item in value]
    if tag == "map":
        # LocalLedger keys a VecMap<u16, _> by the port as text (JSON object keys)
        key_int = layout[1] in ("u8", "u16", "u64")
        return {
            (int(k) if key_int else k): _move_value(layout[2], v, object_id, field)
            for k, v in value.items()
        }
    return value  # enums: LocalLedger writes {"kind": …, fields} as sui_codec does


def object_contents(struct: str, object_id: str, data: Mapping[str, Any]) -> bytes:
    """The BCS contents of LocalLedger object ``object_id`` of struct ``struct``."""
    layout = _OBJECT_LAYOUTS[struct]
    return encode(layout, _move_value(layout, data, object_id, ""))


@dataclass(frozen=True)
class TableField:
    """One entry of a ``Table``: a ``0x2::dynamic_field::Field<K, V>`` object owned by
    the table's UID."""

    field_id: str
    table_id: str
    type: str
    #: BCS of the key and of the value.
    name: bytes
    value: bytes

    @property
    def contents(self) -> bytes:
        """``Field { id, name, value }``."""
        return bytes.fromhex(self.field_id[2:]) + self.name + self.value


def _field_id(parent: str, name: bytes, key: str) -> str:
    """Sui's dynamic field ID: blake2b-256 of the ChildObjectId scope byte (0xf0), the
    parent, the key's BCS length (u64) and bytes, and the key's TypeTag."""
    data = b"\xf0" + bytes.fromhex(parent[2:]) + len(name).to_bytes(8, "little") + name
    return "0x" + hashlib.blake2b(data + _KEY_TYPES[key][1], digest_size=32).hexdigest()


def _key_bcs(key: str, entry: str) -> bytes:
    """The BCS of a table key as LocalLedger keeps it: an address or ID as ``0x`` hex, a
    port as its decimal text."""
    if key == "u16":
        return int(entry).to_bytes(2, "little")
    return bytes.fromhex(entry[2:])


def _tables(layout: Layout, data: Any) -> list[tuple[str, Any]]:
    """``(field name, entries)`` of every ``Table`` in a struct's data, nested structs
    included (a Host's are in its ``firewall``)."""
    out: list[tuple[str, Any]] = []
    if isinstance(layout, tuple) and layout[0] == "struct":
        for field, sub in layout[1]:
            if sub == "table":
                out.append((field, None if data is None else data[field]))
            elif isinstance(sub, tuple) and sub[0] == "struct":
                out.extend(_tables(sub, None if data is None else data[field]))
    return out


@dataclass(frozen=True)
class Table:
    """One ``Table`` inside an object: its UID, the type of its entries' dynamic-field
    objects, and its entries (key -> value) as LocalLedger keeps them."""

    uid: str
    #: ``"address"``, ``"id"`` (``0x2::object::ID``) or ``"u16"``: what its keys are.
    key: str
    type: str
    value_layout: Layout
    entries: Mapping[str, Any]

    def field_id(self, entry: str) -> str:
        """The ID of the dynamic field holding ``entry``."""
        return _field_id(self.uid, _key_bcs(self.key, entry), self.key)

    def field(self, entry: str, value: Any) -> TableField:
        """The dynamic-field object of ``entry`` holding ``value``."""
        name = _key_bcs(self.key, entry)
        return TableField(
            _field_id(self.uid, name, self.key),
            self.uid,
            self.type,
            name,
            encode(self.value_layout, value),
        )


def tables(
    package: str, struct: str, object_id: str, data: Mapping[str, Any] | None
) -> list[Table]:
    """The ``Table``s inside an object, in the struct's field order (``data`` None: each
    with no entries, as for an object deleted)."""
    out: list[Table] = []
    for field, entries in _tables(_OBJECT_LAYOUTS[struct], data):
        key = _TABLE_KEYS.get(field, "address")
        value_name, value_layout = _TABLE_VALUES.get(field, ("u64", "u64"))
        key_type = _KEY_TYPES[key][0]
        value_type = value_name if "::" not in value_name else f"{package}::{value_name}"
        type_ = f"{SUI_FRAMEWORK}::dynamic_field::Field<{key_type}, {value_type}>"
        if entries is None:
            entries = {}
        elif isinstance(entries, list):
            entries = dict.fromkeys(entries, True)  # a firewall list of an old ledger file
        out.append(Table(table_uid(object_id, field), key, type_, value_layout, entries))
    return out


def event_contents(local_type: str, fields: Mapping[str, Any]) -> bytes:
    """The BCS payload of a LocalLedger event (``dtp::module::Name``)."""
    _, module, name = local_type.split("::")
    return encode(_EVENT_LAYOUTS[(module, name)], dict(fields))


def coin_contents(coin_id: str, balance: int) -> bytes:
    """``Coin<SUI> { id: UID, balance: Balance { value: u64 } }``."""
    return bytes.fromhex(coin_id[2:]) + balance.to_bytes(8, "little")


def clock_contents(timestamp_ms: int) -> bytes:
    """``Clock { id: UID, timestamp_ms: u64 }``."""
    return bytes.fromhex(CLOCK_ID[2:]) + timestamp_ms.to_bytes(8, "little")


def object_digest(type_: str, owner: str, version: int, contents: bytes) -> str:
    """A digest (base58 of 32 bytes) of an object at a version: it changes whenever its
    contents, owner or version do."""
    h = hashlib.blake2b(digest_size=32)
    for part in (type_.encode(), owner.encode(), version.to_bytes(8, "little")):
        h.update(bcs_uleb128(len(part)) + part)
    h.update(contents)
    return base58(h.digest())
