"""BCS layouts of ``dtp::registry``'s object and events (move/dtp/sources/registry.move),
in the format of :mod:`dtp.ledger.sui._codec`, and the decoding of a Registry into
:class:`~dtp.ledger._coordination.RegistryState`."""

from __future__ import annotations

from typing import Any, Final

from dtp.ledger._coordination import RegistryState
from dtp.ledger.sui._codec import Layout, decode

__all__ = ["COORDINATION_EVENT_LAYOUTS", "COORDINATION_OBJECT_LAYOUTS", "decode_registry"]


def _struct(*fields: tuple[str, Layout]) -> Layout:
    return ("struct", tuple(fields))


_LEASE: Final = _struct(
    ("holder", "bytes"), ("owner", "address"), ("token", "u64"), ("expires_at_ms", "u64")
)
_ENTRY: Final = _struct(
    ("value", "bytes"), ("name", "string"), ("token", "u64"), ("version", "u64")
)

#: Object contents, field order = BCS order (``VecSet`` a vector, ``VecMap`` a map).
COORDINATION_OBJECT_LAYOUTS: Final[dict[str, Layout]] = {
    "Registry": _struct(
        ("id", "id"),
        ("owner", "address"),
        ("members", ("vec", "address")),
        ("leases", ("map", "string", _LEASE)),
        ("entries", ("map", "string", _ENTRY)),
    ),
}

#: Event payloads, keyed by (module, struct name).
COORDINATION_EVENT_LAYOUTS: Final[dict[tuple[str, str], Layout]] = {
    ("registry", "RegistryCreated"): _struct(("registry", "id"), ("owner", "address")),
    ("registry", "MemberAdmitted"): _struct(("registry", "id"), ("member", "address")),
    ("registry", "MemberRevoked"): _struct(("registry", "id"), ("member", "address")),
    ("registry", "LeaseAcquired"): _struct(
        ("registry", "id"),
        ("name", "string"),
        ("holder", "bytes"),
        ("owner", "address"),
        ("token", "u64"),
        ("expires_at_ms", "u64"),
    ),
    ("registry", "LeaseRenewed"): _struct(
        ("registry", "id"), ("name", "string"), ("token", "u64"), ("expires_at_ms", "u64")
    ),
    ("registry", "LeaseReleased"): _struct(
        ("registry", "id"), ("name", "string"), ("token", "u64")
    ),
    ("registry", "ValuePut"): _struct(
        ("registry", "id"),
        ("key", "string"),
        ("value", "bytes"),
        ("name", "string"),
        ("token", "u64"),
        ("version", "u64"),
    ),
    ("registry", "ValueRemoved"): _struct(
        ("registry", "id"), ("key", "string"), ("name", "string"), ("token", "u64")
    ),
}


def decode_registry(version: int, data: bytes) -> RegistryState:
    """The typed view of a Registry from its BCS contents."""
    d: dict[str, Any] = decode(COORDINATION_OBJECT_LAYOUTS["Registry"], data)
    return RegistryState.from_fields(d["id"], version, d)
