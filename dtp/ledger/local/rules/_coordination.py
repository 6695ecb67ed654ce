"""LocalLedger rules of ``dtp::registry`` (move/dtp/sources/registry.move; docs/escrow.md
§21, docs/coordination.md): leases with fencing tokens and fenced writes of a small
key-value registry, with the checks in the order of the ``.move`` file. Each joins
:data:`dtp.ledger.local.rules.FUNCTIONS` (``@rule``) as :mod:`dtp.ledger.local._store`
imports this module.

A Registry's data: ``owner``; ``members``, a list (Move's ``VecSet``); ``leases`` and
``entries``, dicts keyed by the name or key (Move's ``VecMap<String, _>``).
"""

from __future__ import annotations

from typing import Any, Final

from dtp.errors import move_error
from dtp.ledger._coordination import (
    MAX_KEYS,
    MAX_LEASE_MS,
    MAX_MEMBERS,
    MAX_NAME_LEN,
    MAX_NAMES,
    MAX_VALUE_LEN,
)
from dtp.ledger.local.rules._common import SHARED, Exec, add_u64, rule, utf8

__all__ = ["OBJECT_TYPES"]

OBJECT_TYPES: Final = {"Registry": "dtp::registry::Registry"}


@rule("registry::create")
def registry_create(x: Exec) -> str:
    registry_id = x.create(
        "Registry",
        SHARED,
        {"owner": x.sender, "members": [], "leases": {}, "entries": {}},
    )
    x.emit("registry", "RegistryCreated", {"registry": registry_id, "owner": x.sender})
    return registry_id


def _assert_owner(x: Exec, registry: dict[str, Any], registry_id: str) -> None:
    x.require_sender(registry["owner"], "registry", "ENotRegistryOwner", registry_id)


@rule("registry::admit")
def registry_admit(x: Exec, registry_id: str, member: str) -> None:
    registry = x.load(registry_id, "Registry")
    _assert_owner(x, registry, registry_id)
    if member in registry["members"]:
        return
    if len(registry["members"]) >= MAX_MEMBERS:
        raise move_error("registry", "ERegistryFull", f"{MAX_MEMBERS} members")
    registry["members"].append(member)
    x.emit("registry", "MemberAdmitted", {"registry": registry_id, "member": member})


@rule("registry::revoke")
def registry_revoke(x: Exec, registry_id: str, member: str) -> None:
    registry = x.load(registry_id, "Registry")
    _assert_owner(x, registry, registry_id)
    if member not in registry["members"]:
        return
    registry["members"].remove(member)
    x.emit("registry", "MemberRevoked", {"registry": registry_id, "member": member})


def _assert_member(x: Exec, registry: dict[str, Any], registry_id: str) -> None:
    if x.sender != registry["owner"] and x.sender not in registry["members"]:
        raise move_error("registry", "ENotMember", f"{x.sender} in {registry_id}")


def _assert_duration(duration_ms: int) -> None:
    if not 0 < duration_ms <= MAX_LEASE_MS:
        raise move_error("registry", "EInvalidDuration", f"{duration_ms} ms")


def _assert_name(raw: bytes, what: str) -> None:
    if not 0 < len(raw) <= MAX_NAME_LEN:
        raise move_error("registry", "EInvalidEntry", f"a {what} of {len(raw)} bytes")


def _owned_lease(x: Exec, registry: dict[str, Any], name: str, token: int) -> dict[str, Any]:
    """The lease ``name``, the sender's with ``token`` (expired or not: ``release``)."""
    lease: dict[str, Any] | None = registry["leases"].get(name)
    if lease is None:
        raise move_error("registry", "ENoLease", repr(name))
    if token != lease["token"]:
        raise move_error("registry", "EStaleToken", f"{name!r}: {token}, current {lease['token']}")
    if x.sender != lease["owner"]:
        raise move_error("registry", "ENotHolder", f"{x.sender} for {name!r}")
    return lease


def _assert_holding(x: Exec, registry: dict[str, Any], name: str, token: int) -> dict[str, Any]:
    """``assert_holding``: the sender holds ``name`` with ``token`` now; the lease."""
    lease = _owned_lease(x, registry, name, token)
    if x.now_ms >= lease["expires_at_ms"]:
        raise move_error("registry", "ELeaseExpired", f"{name!r} (token {token})")
    return lease


@rule("registry::acquire")
def lease_acquire(
    x: Exec, registry_id: str, raw_name: bytes, holder: bytes, duration_ms: int
) -> int:
    registry = x.load(registry_id, "Registry")
    _assert_member(x, registry, registry_id)
    _assert_duration(duration_ms)
    _assert_name(raw_name, "name")
    if len(holder) > MAX_NAME_LEN:
        raise move_error("registry", "EInvalidEntry", f"a holder of {len(holder)} bytes")
    name = utf8(raw_name, "lease name")
    old: dict[str, Any] | None = registry["leases"].get(name)
    if old is not None and x.now_ms < old["expires_at_ms"]:
        raise move_error("registry", "ELeaseHeld", f"{name!r} until {old['expires_at_ms']} ms")
    token = _next_number(old, "token", registry["leases"], (MAX_NAMES, "lease names"))
    lease = {
        "holder": holder,
        "owner": x.sender,
        "token": token,
        "expires_at_ms": add_u64(x.now_ms, duration_ms),
    }
    registry["leases"][name] = lease
    x.emit("registry", "LeaseAcquired", {"registry": registry_id, "name": name, **lease})
    return token


def _next_number(
    old: dict[str, Any] | None, field: str, table: dict[str, Any], room: tuple[int, str]
) -> int:
    """The ``field`` (a lease's token, an entry's version) of what takes the place of
    ``old`` in ``table``: one more than ``old``'s, or 1 for a new name or key while
    ``table`` holds fewer than ``room`` (``ERegistryFull`` naming them)."""
    if old is not None:
        return add_u64(old[field], 1)
    most, what = room
    if len(table) >= most:
        raise move_error("registry", "ERegistryFull", f"{most} {what}")
    return 1


@rule("registry::renew")
def lease_renew(x: Exec, registry_id: str, raw_name: bytes, token: int, duration_ms: int) -> None:
    registry = x.load(registry_id, "Registry")
    _assert_member(x, registry, registry_id)
    _assert_duration(duration_ms)
    name = utf8(raw_name, "lease name")
    lease = _assert_holding(x, registry, name, token)
    lease["expires_at_ms"] = add_u64(x.now_ms, duration_ms)
    x.emit(
        "registry",
        "LeaseRenewed",
        {
            "registry": registry_id,
            "name": name,
            "token": token,
            "expires_at_ms": lease["expires_at_ms"],
        },
    )


@rule("registry::release")
def lease_release(x: Exec, registry_id: str, raw_name: bytes, token: int) -> None:
    registry = x.load(registry_id, "Registry")
    name = utf8(raw_name, "lease name")
    lease = _owned_lease(x, registry, name, token)
    lease["expires_at_ms"] = 0
    x.emit("registry", "LeaseReleased", {"registry": registry_id, "name": name, "token": token})


@rule("registry::put")
def registry_put(
    x: Exec, registry_id: str, raw_name: bytes, token: int, raw_key: bytes, value: bytes
) -> None:
    registry = x.load(registry_id, "Registry")
    _assert_member(x, registry, registry_id)
    _assert_name(raw_key, "key")
    if len(value) > MAX_VALUE_LEN:
        raise move_error("registry", "EInvalidEntry", f"a value of {len(value)} bytes")
    name = utf8(raw_name, "lease name")
    _assert_holding(x, registry, name, token)
    key = utf8(raw_key, "key")
    old = registry["entries"].get(key)
    version = _next_number(old, "version", registry["entries"], (MAX_KEYS, "keys"))
    registry["entries"][key] = {"value": value, "name": name, "token": token, "version": version}
    x.emit(
        "registry",
        "ValuePut",
        {
            "registry": registry_id,
            "key": key,
            "value": value,
            "name": name,
            "token": token,
            "version": version,
        },
    )


@rule("registry::remove")
def registry_remove(x: Exec, registry_id: str, raw_name: bytes, token: int, raw_key: bytes) -> None:
    registry = x.load(registry_id, "Registry")
    _assert_member(x, registry, registry_id)
    _assert_name(raw_key, "key")
    name = utf8(raw_name, "lease name")
    _assert_holding(x, registry, name, token)
    key = utf8(raw_key, "key")
    if key in registry["entries"]:
        del registry["entries"][key]
        x.emit(
            "registry",
            "ValueRemoved",
            {"registry": registry_id, "key": key, "name": name, "token": token},
        )
