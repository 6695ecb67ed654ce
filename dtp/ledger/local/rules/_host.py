"""The rules of ``dtp::host``: a Host object, its services and its firewall.

The services (``Table<u16, Service>``) and the firewall's allow and deny lists (Move
``Table<address, bool>``s) are Tables: LocalLedger keeps each as a mapping inside the
Host's data (the services by port as text, each list of address to ``true``, as a
Broadcast keeps its contributions), the node stand-in serves them as the Tables' dynamic
fields, and only their sizes count towards the Host's size on Sui."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from dtp.errors import ChainError, move_error
from dtp.identity._bcs import uleb128
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_ENDPOINT_LENGTH,
    MAX_ENDPOINTS,
    MAX_FIREWALL_ENTRIES,
    check_half_close_timeout,
    firewall_entries,
    is_low_order_noise_key,
)
from dtp.ledger.local.rules._common import SHARED, Exec, rule, utf8


def _assert_authority(x: Exec, host: dict[str, Any], host_id: str) -> None:
    if x.sender != host["authority"]:
        raise move_error(
            "host", "ENotAuthority", f"{x.sender} is not the authority of host {host_id}"
        )


def _assert_noise_key(key: bytes) -> None:
    if len(key) != 32:
        raise move_error("host", "EInvalidNoiseKey", f"got {len(key)} bytes")
    if is_low_order_noise_key(key):
        raise move_error(
            "host",
            "EInvalidNoiseKey",
            f"{key.hex()} is a low-order X25519 point, with which no handshake can succeed",
        )


def _assert_endpoints(endpoints: list[bytes]) -> None:
    if len(endpoints) > MAX_ENDPOINTS:
        raise move_error("host", "ETooManyEndpoints", f"{len(endpoints)} > {MAX_ENDPOINTS}")
    for endpoint in endpoints:
        if len(endpoint) > MAX_ENDPOINT_LENGTH:
            raise move_error(
                "host", "ETooManyEndpoints", f"an endpoint of {len(endpoint)} bytes > 256"
            )


def _updated(x: Exec, host_id: str, change: int) -> None:
    x.emit("host", "HostUpdated", {"host": host_id, "change": change})


@rule("host::create")
def host_create(x: Exec, noise_key: bytes, endpoints: list[bytes]) -> str:
    _assert_noise_key(noise_key)
    _assert_endpoints(endpoints)
    data = {
        "authority": x.sender,
        "noise_static_key": noise_key,
        "endpoints": endpoints,
        "services": {},
        "firewall": {
            "mode": 0,
            "allow": {},
            "deny": {},
            "max_connections_per_client": 0,
            "max_bytes_per_sec": 0,
            "max_requests_per_sec": 0,
        },
    }
    host_id = x.create("Host", SHARED, data)
    x.emit("host", "HostCreated", {"host": host_id, "authority": x.sender})
    return host_id


@rule("host::set_authority")
def host_set_authority(x: Exec, host_id: str, new_authority: str) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    host["authority"] = new_authority
    _updated(x, host_id, 0)


@rule("host::set_noise_static_key")
def host_set_noise_static_key(x: Exec, host_id: str, key: bytes) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    _assert_noise_key(key)
    host["noise_static_key"] = key
    _updated(x, host_id, 1)


@rule("host::set_endpoints")
def host_set_endpoints(x: Exec, host_id: str, endpoints: list[bytes]) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    _assert_endpoints(endpoints)
    host["endpoints"] = endpoints
    _assert_host_size(host, host_id)
    _updated(x, host_id, 2)


def new_sla(
    price_per_kib: int,
    price_per_request: int,
    min_deposit: int,
    half_close_timeout_ms: int = HALF_CLOSE_TIMEOUT_MS,
) -> dict[str, int]:
    """``host::new_sla``, or with a timeout ``host::new_sla_with_half_close_timeout``:
    out of its bounds, ``EInvalidHalfCloseTimeout``. On Sui the Sla is built by its own
    call before the one that takes it, so its check comes before that call's."""
    check_half_close_timeout(half_close_timeout_ms)
    return {
        "price_per_kib": price_per_kib,
        "price_per_request": price_per_request,
        "min_deposit": min_deposit,
        "half_close_timeout_ms": half_close_timeout_ms,
    }


#: Sui's largest Move object, in bytes of its BCS contents (protocol config
#: ``max_move_object_size``, 250 KiB): a transaction that leaves an object larger fails.
MAX_MOVE_OBJECT_SIZE: Final = 250 * 1024


def _vector_size(count: int) -> int:
    """Bytes of a BCS vector's length prefix (ULEB128)."""
    return len(uleb128(count))


def _bytes_size(value: bytes) -> int:
    return _vector_size(len(value)) + len(value)


#: A ``Table`` inside an object: its UID and its u64 size (the entries are dynamic fields,
#: objects of their own).
_TABLE_SIZE: Final = 32 + 8
#: An ``Sla``: four u64.
_SLA_SIZE: Final = 4 * 8


def host_bcs_size(host: dict[str, Any]) -> int:
    """The BCS size of a ``Host`` as Sui stores it: UID, version, authority, key,
    endpoints, the services' Table and the firewall (a u8, the two Tables of its lists,
    three u64): the services and the lists' entries are objects of their own
    (:func:`service_field_bcs_size`)."""
    return (
        32
        + 8
        + 32
        + _bytes_size(host["noise_static_key"])
        + _vector_size(len(host["endpoints"]))
        + sum(_bytes_size(e) for e in host["endpoints"])
        + _TABLE_SIZE
        + 1
        + 2 * _TABLE_SIZE
        + 24
    )


def service_field_bcs_size(service: dict[str, Any]) -> int:
    """The BCS size of one service's entry, a ``Field<u16, Service>``: its UID, the u16
    port, and the Service (kind, Sla, limit)."""
    return 32 + 2 + _bytes_size(service["kind"].encode()) + _SLA_SIZE + 8


def _assert_size(size: int, what: str) -> None:
    """Sui fails a transaction that leaves an object over its size limit, after the Move
    code ran (an execution error, not an abort). Neither a Host (its endpoints bounded,
    its services and lists in Tables) nor a service's entry (its kind one pure argument)
    can reach it; the rule stays, as Sui's, on what those objects hold."""
    if size > MAX_MOVE_OBJECT_SIZE:
        raise ChainError(
            f"Transaction failed (OBJECT_TOO_BIG): {what} would be {size} bytes, "
            f"over Sui's {MAX_MOVE_OBJECT_SIZE}-byte object limit.",
            name="OBJECT_TOO_BIG",
            module="sui",
        )


def _assert_host_size(host: dict[str, Any], host_id: str) -> None:
    _assert_size(host_bcs_size(host), f"host {host_id}")


def _service_terms(
    x: Exec, host_id: str, terms: tuple[int, ...]
) -> tuple[dict[str, Any], dict[str, int], int]:
    """The Host of a service's call, its authority the sender, and the call's ``terms``
    (the Sla's four u64, then max_connections) as the Sla and max_connections."""
    kib, req, minimum, timeout, max_conn = terms
    sla = new_sla(kib, req, minimum, timeout)  # (built before the call, as on Sui)
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    return host, sla, max_conn


@rule("host::add_service")
def host_add_service(x: Exec, host_id: str, port: int, raw_kind: bytes, *terms: int) -> None:
    host, sla, max_conn = _service_terms(x, host_id, terms)
    if str(port) in host["services"]:
        raise move_error("host", "EServiceExists", f"port {port} of host {host_id}")
    kind = utf8(raw_kind, "service kind")
    service = {"kind": kind, "sla": sla, "max_connections": max_conn}
    _assert_size(service_field_bcs_size(service), f"the service on port {port}")
    host["services"][str(port)] = service
    x.emit(
        "host",
        "ServiceAdded",
        {"host": host_id, "port": port, "kind": kind, "sla": sla, "max_connections": max_conn},
    )


@rule("host::update_service")
def host_update_service(x: Exec, host_id: str, port: int, *terms: int) -> None:
    host, sla, max_conn = _service_terms(x, host_id, terms)
    service = host["services"].get(str(port))
    if service is None:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    # open connections keep the terms they copied, their half-close timeout included
    service["sla"] = sla
    service["max_connections"] = max_conn
    x.emit(
        "host",
        "ServiceUpdated",
        {"host": host_id, "port": port, "sla": sla, "max_connections": max_conn},
    )


@rule("host::remove_service")
def host_remove_service(x: Exec, host_id: str, port: int) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    if str(port) not in host["services"]:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    # connections open to it go on: each carries its own copy of the terms
    del host["services"][str(port)]
    x.emit("host", "ServiceRemoved", {"host": host_id, "port": port})


@rule("host::set_firewall_mode")
def host_set_firewall_mode(x: Exec, host_id: str, mode: int) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    if mode not in (0, 1):
        raise move_error("host", "EInvalidFirewallMode", f"got {mode}")
    host["firewall"]["mode"] = mode
    _updated(x, host_id, 3)


def _table(host: dict[str, Any], list_name: str) -> dict[str, bool]:
    """The firewall list ``list_name`` of ``host``'s data as its Table's entries (a list
    kept by a file from before the lists were Tables becomes one here)."""
    fw = host["firewall"]
    entries = fw[list_name]
    if not isinstance(entries, dict):
        fw[list_name] = entries = dict.fromkeys(firewall_entries(entries, list_name), True)
    return entries


def list_op(list_name: str, add: bool) -> Callable[[Exec, str, str], None]:
    """``host::allow``/``deny`` (``add``) or ``disallow``/``undeny`` on ``list_name``:
    idempotent, and a new address to a full list aborts ``EFirewallListFull``."""

    def op(x: Exec, host_id: str, client: str) -> None:
        host = x.load(host_id, "Host")
        _assert_authority(x, host, host_id)
        entries = _table(host, list_name)
        if add and client not in entries:
            if len(entries) >= MAX_FIREWALL_ENTRIES:
                raise move_error(
                    "host", "EFirewallListFull", f"{list_name} list of {host_id} is full"
                )
            entries[client] = True
        elif not add:
            entries.pop(client, None)
        _updated(x, host_id, 3)

    return op


rule("host::allow")(list_op("allow", True))
rule("host::disallow")(list_op("allow", False))
rule("host::deny")(list_op("deny", True))
rule("host::undeny")(list_op("deny", False))


@rule("host::set_client_limits")
def host_set_client_limits(
    x: Exec, host_id: str, per_client: int, bytes_per_sec: int, requests_per_sec: int
) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    fw = host["firewall"]
    fw["max_connections_per_client"] = per_client
    fw["max_bytes_per_sec"] = bytes_per_sec
    fw["max_requests_per_sec"] = requests_per_sec
    _updated(x, host_id, 3)


def _permits(host: dict[str, Any], client: str) -> bool:
    """``host::permits``: one lookup in each list (a mapping, or a list of an old file)."""
    fw = host["firewall"]
    if client in fw["deny"]:
        return False
    return bool(fw["mode"] == 0 or client in fw["allow"])


def admit(host: dict[str, Any], host_id: str, port: int, client: str) -> dict[str, int]:
    """``host::admit``: the service and the firewall, read only (the connection limits are
    the host's own admission's, off-chain: docs/escrow.md §2). The service's terms come
    back whole, their half-close timeout too (the default for terms a file kept from
    before it was one)."""
    service = host["services"].get(str(port))
    if service is None:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    if not _permits(host, client):
        raise move_error("host", "EFirewallDenied", f"host {host_id} refuses {client}")
    return {"half_close_timeout_ms": HALF_CLOSE_TIMEOUT_MS, **service["sla"]}
