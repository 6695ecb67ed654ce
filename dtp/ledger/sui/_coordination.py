"""BCS layouts of ``dtp::registry``'s object and events (move/dtp/sources/registry.move),
declared as Move's and read by :mod:`dtp.ledger.sui._codec`, and the decoding of a
Registry into :class:`~dtp.ledger._coordination.RegistryState`."""

from __future__ import annotations

from typing import Any, Final

from dtp.ledger._coordination import RegistryState
from dtp.ledger.sui._codec import Layout, _declared, decode

__all__ = ["COORDINATION_EVENT_LAYOUTS", "COORDINATION_OBJECT_LAYOUTS", "decode_registry"]


#: Object contents, as Move declares them (field order = BCS order).
COORDINATION_OBJECT_LAYOUTS: Final[dict[str, Layout]] = {
    name: layout
    for (_, name), layout in _declared(
        """
    registry::Lease { holder: vector<u8>, owner: address, token: u64, expires_at_ms: u64 }
    registry::Entry { value: vector<u8>, name: String, token: u64, version: u64 }
    registry::Registry { id: UID, version: u64, owner: address, members: VecSet<address>,
        leases: VecMap<String, Lease>, entries: VecMap<String, Entry> }
"""
    ).items()
    if name == "Registry"
}

#: Event payloads, keyed by (module, struct name).
COORDINATION_EVENT_LAYOUTS: Final[dict[tuple[str, str], Layout]] = _declared(
    """
    registry::RegistryCreated { registry: ID, owner: address }
    registry::MemberAdmitted { registry: ID, member: address }
    registry::MemberRevoked { registry: ID, member: address }
    registry::LeaseAcquired { registry: ID, name: String, holder: vector<u8>, owner: address,
        token: u64, expires_at_ms: u64 }
    registry::LeaseRenewed { registry: ID, name: String, token: u64, expires_at_ms: u64 }
    registry::LeaseReleased { registry: ID, name: String, token: u64 }
    registry::ValuePut { registry: ID, key: String, value: vector<u8>, name: String, token: u64,
        version: u64 }
    registry::ValueRemoved { registry: ID, key: String, name: String, token: u64 }
"""
)


def decode_registry(version: int, data: bytes) -> RegistryState:
    """The typed view of a Registry from its BCS contents."""
    d: dict[str, Any] = decode(COORDINATION_OBJECT_LAYOUTS["Registry"], data)
    return RegistryState.from_fields(d["id"], version, d)
