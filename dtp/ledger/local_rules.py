"""The Move package's rules, executed by LocalLedger on plain dicts.

One function per entry point of ``move/dtp``, with the same checks in the same order as
the Move code (docs/escrow.md; where the text is silent, the ``.move`` files decide).
A rule raises the ChainError of the first failing check; it may have mutated objects by
then, which is harmless: :class:`Exec` only writes its changes when the whole call
succeeded (and the SQLite transaction around it rolls back otherwise).

Object data are dicts with the Move struct's fields; balances (``Balance<SUI>``) are
plain ints (``funds``, ``pool``, ``earned``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dtp.errors import (
    ChainError,
    InsufficientFunds,
    InvalidArgument,
    LedgerUnavailable,
    ObjectNotFound,
    WrongSigner,
    foreign_abort,
    move_error,
)
from dtp.identity.bcs import uleb128
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger.local_tx import Address, TxValue, derive_object_id
from dtp.ledger.objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_DATA_LENGTH,
    MAX_ENDPOINT_LENGTH,
    MAX_ENDPOINTS,
    MAX_FIREWALL_ENTRIES,
    MAX_INNERS,
    MAX_PURE_BYTES,
    is_low_order_noise_key,
)

__all__ = [
    "FUNCTIONS",
    "OBJECT_TYPES",
    "DamagedData",
    "Exec",
    "Store",
    "from_json",
    "new_broadcast",
    "parse_stored_int",
    "stored_int",
    "to_json",
    "utf8",
    "wrong_shape",
]

U64_MAX: Final = 2**64 - 1
SHARED: Final = "shared"

#: Short Move type names of LocalLedger objects, by struct name.
OBJECT_TYPES: Final = {
    "Host": "dtp::host::Host",
    "SpendingCap": "dtp::spending_cap::SpendingCap",
    "TransportControl": "dtp::transport_control::TransportControl",
    "Escrow": "dtp::escrow::Escrow",
    "Pipe": "dtp::pipe::Pipe",
    "Broadcast": "dtp::broadcast::Broadcast",
    "ResponseEscrow": "dtp::response_escrow::ResponseEscrow",
}


# -- JSON with bytes -------------------------------------------------------------------------


def _bytes_to_json(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$b": obj.hex()}
    raise TypeError(f"cannot store {type(obj).__name__}")


def _bytes_from_json(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$b" in obj:
        return bytes.fromhex(obj["$b"])
    return obj


# One encoder and one decoder for every call: json.dumps/loads with options build a new
# one each time, and a transaction encodes and decodes every object it touches.
_ENCODER: Final = json.JSONEncoder(default=_bytes_to_json, sort_keys=True, separators=(",", ":"))
_DECODER: Final = json.JSONDecoder(object_hook=_bytes_from_json)
# Without the hook the C decoder calls no Python per object: for data holding no bytes
# (no "$b" key can be in a text without that substring, as to_json writes it)
_PLAIN_DECODER: Final = json.JSONDecoder()


def to_json(value: Any) -> str:
    """Canonical JSON of object data; bytes become ``{"$b": hex}``."""
    return _ENCODER.encode(value)


class DamagedData(LedgerUnavailable):
    """Stored data that does not read back (a ledger file damaged, or edited by something
    else): a :class:`~dtp.errors.LedgerUnavailable`, as every other failure of the file,
    rather than the bare ValueError of a decoder that no caller of a ledger expects."""

    module = "ledger"
    #: The ledger file named in the message, once the ledger has worded it (None before).
    ledger: str | None = None


def wrong_shape(what: str, exc: BaseException) -> DamagedData:
    """:class:`DamagedData` for stored data (``what``: "object 0x…") that parses but is
    not what the ledger writes (a missing field, a list for an object, text for a
    number), found as the ``exc`` that reading it raised."""
    return DamagedData(
        f"the stored data of {what} has the wrong shape ({type(exc).__name__}: {exc!s:.80})"
    )


def from_json(text: str) -> Any:
    """Inverse of :func:`to_json`; :class:`DamagedData` for a text it cannot have written."""
    try:
        if '"$b"' not in text:
            return _PLAIN_DECODER.decode(text)
        return _DECODER.decode(text)
    except (ValueError, TypeError, AttributeError) as exc:
        # not JSON, a "$b" that is not hex, or not text at all (a row rewritten as a blob)
        raise DamagedData(f"stored data does not parse ({exc})") from None


def stored_int(value: Any) -> int:
    """A number as stored (a balance or a meta value: decimal text, as the ledger
    writes it, or an INTEGER); :class:`DamagedData` for anything else."""
    number = parse_stored_int(value)
    if number is None:
        raise DamagedData(f"a stored number is not an integer ({value!r:.60})")
    return number


def parse_stored_int(value: Any) -> int | None:
    """:func:`stored_int`, None instead of raising."""
    if type(value) is int:
        return value
    if type(value) is str:
        # int() alone would also take " 5", "5_0", "+5" and non-ASCII digits, none of
        # which the ledger writes (a clock offset is the one negative value it keeps),
        # and a float's fraction would be cut
        digits = value[1:] if value[:1] == "-" else value
        if 0 < len(digits) <= 20 and digits.isascii() and digits.isdecimal():
            return int(value)
    return None


# -- execution context -------------------------------------------------------------------------


class Store(Protocol):
    """What rules read from the ledger's storage (inside the current transaction)."""

    def load(self, object_id: str) -> tuple[str, str, int, dict[str, Any]] | None:
        """(type, owner, version, data) of a live object, or None."""

    def load_stored(self, object_id: str) -> tuple[str, str, int, dict[str, Any], str] | None:
        """:meth:`load` plus the data as stored (:func:`to_json` of it)."""

    def balance(self, address: str) -> int:
        """SUI balance of ``address``."""


@dataclass
class Obj:
    """An object touched by the current transaction."""

    id: str
    type: str
    owner: str
    version: int
    data: dict[str, Any]
    before: str | None  # JSON at load; None for objects created here
    deleted: bool = False


@dataclass
class Exec:
    """One transaction's execution: sender, time, and the changes it makes."""

    store: Store
    sender: str
    digest: bytes
    now_ms: int
    epoch: int
    objects: dict[str, Obj] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    created: int = 0

    # objects

    def load(self, object_id: str, struct: str) -> dict[str, Any]:
        """The data of ``object_id``, which must be a live ``struct`` usable by the sender."""
        if object_id in self.objects and not self.objects[object_id].deleted:
            obj = self.objects[object_id]
        else:
            row = self.store.load_stored(object_id)
            if row is None:
                raise ObjectNotFound(f"No object with ID {object_id} exists on this ledger.")
            # the stored text is the canonical JSON of the data: what the object is
            # compared with at the end, to write only what changed
            type_, owner, version, data, stored = row
            obj = Obj(object_id, type_, owner, version, data, stored)
            self.objects[object_id] = obj
        if obj.type != OBJECT_TYPES[struct]:
            raise ObjectNotFound(
                f"Object {object_id} is a {obj.type.rsplit('::', 1)[-1]}, not a {struct}."
            )
        if obj.owner not in (SHARED, self.sender):
            raise WrongSigner(
                f"{struct} {object_id} is owned by {obj.owner}; only its owner can use it "
                f"(sender {self.sender}).",
                name="ObjectOwnedByAnother",
            )
        return obj.data

    def create(self, struct: str, owner: str, data: dict[str, Any]) -> str:
        """Create an object (shared when ``owner`` is ``"shared"``) and return its ID."""
        object_id = self.new_id()
        self.objects[object_id] = Obj(object_id, OBJECT_TYPES[struct], owner, 0, data, None)
        return object_id

    def new_id(self) -> str:
        """A fresh object ID, derived like Sui's from the digest and a creation index."""
        object_id = derive_object_id(self.digest, self.created)
        self.created += 1
        return object_id

    def delete(self, object_id: str) -> None:
        self.objects[object_id].deleted = True

    # money

    def take_coin(self, amount: int) -> int:
        """Split ``amount`` MIST off the sender's balance (a ``Coin<SUI>`` argument)."""
        available = self.store.balance(self.sender) + self.credits.get(self.sender, 0)
        if amount > available:
            raise InsufficientFunds(
                f"Address {self.sender} has {available} MIST, {amount} are needed.",
                name="InsufficientCoinBalance",
                module="sui",
            )
        self.credits[self.sender] = self.credits.get(self.sender, 0) - amount
        return amount

    def pay(self, address: str, amount: int) -> None:
        """Transfer a coin of ``amount`` MIST to ``address`` (nothing when 0)."""
        if amount:
            self.credits[address] = self.credits.get(address, 0) + amount

    # events

    def emit(self, module: str, name: str, fields: dict[str, Any]) -> None:
        self.events.append((f"dtp::{module}::{name}", fields))


def add_u64(a: int, b: int) -> int:
    """``a + b`` with Move's overflow abort."""
    total = a + b
    if total > U64_MAX:
        raise ChainError(
            "Arithmetic overflow: a u64 sum exceeds 2**64-1.", name="ArithmeticError", module="sui"
        )
    return total


# -- host ------------------------------------------------------------------------------------


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
            "allow": [],
            "deny": [],
            "max_connections_per_client": 0,
            "max_bytes_per_sec": 0,
            "max_requests_per_sec": 0,
        },
    }
    host_id = x.create("Host", SHARED, data)
    x.emit("host", "HostCreated", {"host": host_id, "authority": x.sender})
    return host_id


def host_set_authority(x: Exec, host_id: str, new_authority: str) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    host["authority"] = new_authority
    _updated(x, host_id, 0)


def host_set_noise_static_key(x: Exec, host_id: str, key: bytes) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    _assert_noise_key(key)
    host["noise_static_key"] = key
    _updated(x, host_id, 1)


def host_set_endpoints(x: Exec, host_id: str, endpoints: list[bytes]) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    _assert_endpoints(endpoints)
    host["endpoints"] = endpoints
    _assert_host_size(host, host_id)
    _updated(x, host_id, 2)


def _sla(price_per_kib: int, price_per_request: int, min_deposit: int) -> dict[str, int]:
    return {
        "price_per_kib": price_per_kib,
        "price_per_request": price_per_request,
        "min_deposit": min_deposit,
    }


#: Sui's largest Move object, in bytes of its BCS contents (protocol config
#: ``max_move_object_size``, 250 KiB): a transaction that leaves an object larger fails.
MAX_MOVE_OBJECT_SIZE: Final = 250 * 1024


def _vector_size(count: int) -> int:
    """Bytes of a BCS vector's length prefix (ULEB128)."""
    return len(uleb128(count))


def _bytes_size(value: bytes) -> int:
    return _vector_size(len(value)) + len(value)


def host_bcs_size(host: dict[str, Any]) -> int:
    """The BCS size of a ``Host`` as Sui stores it: UID, authority, key, endpoints, the
    services' VecMap (entries of u16 port and Service: kind, SLA, limit) and the firewall
    (two VecSets of addresses, a u8 and three u64)."""
    fw = host["firewall"]
    services = host["services"]
    return (
        32
        + 32
        + _bytes_size(host["noise_static_key"])
        + _vector_size(len(host["endpoints"]))
        + sum(_bytes_size(e) for e in host["endpoints"])
        + _vector_size(len(services))
        + sum(2 + _bytes_size(s["kind"].encode()) + 24 + 8 for s in services.values())
        + 1
        + _vector_size(len(fw["allow"]))
        + 32 * len(fw["allow"])
        + _vector_size(len(fw["deny"]))
        + 32 * len(fw["deny"])
        + 24
    )


def _assert_host_size(host: dict[str, Any], host_id: str) -> None:
    """Sui fails a transaction that leaves an object over its size limit, after the Move
    code ran (an execution error, not an abort). No Move check bounds the number of a
    Host's services, so a Host can reach the limit; then endpoints and firewall entries,
    bounded each, can no longer be added either."""
    size = host_bcs_size(host)
    if size > MAX_MOVE_OBJECT_SIZE:
        raise ChainError(
            f"Transaction failed (OBJECT_TOO_BIG): host {host_id} would be {size} bytes, "
            f"over Sui's {MAX_MOVE_OBJECT_SIZE}-byte object limit.",
            name="OBJECT_TOO_BIG",
            module="sui",
        )


#: ``std::string::EInvalidUTF8``, the abort code of ``string::utf8`` (module ``0x1::string``).
EINVALID_UTF8: Final = 1

#: The Move standard library's package ID as Sui reports an abort's location: 64 hex
#: digits, as the package of any other module (a node never shortens it to ``0x1``).
MOVE_STDLIB: Final = "0x" + "1".rjust(64, "0")


def utf8(raw: bytes, what: str) -> str:
    """``string::utf8(raw)``: the text of a ``vector<u8>`` argument, or the abort of
    ``std::string`` for bytes that are not UTF-8 (Sui takes any bytes as a ``vector<u8>``,
    so the check is the Move code's, made at the point the ``.move`` file calls it)."""
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise foreign_abort(
            MOVE_STDLIB,
            "string",
            EINVALID_UTF8,
            f"the {what} is not UTF-8 ({e.reason} at byte {e.start}; std::string::EInvalidUTF8)",
        ) from None


def host_add_service(
    x: Exec,
    host_id: str,
    port: int,
    raw_kind: bytes,
    kib: int,
    req: int,
    minimum: int,
    max_conn: int,
) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    if str(port) in host["services"]:
        raise move_error("host", "EServiceExists", f"port {port} of host {host_id}")
    sla = _sla(kib, req, minimum)
    kind = utf8(raw_kind, "service kind")
    host["services"][str(port)] = {"kind": kind, "sla": sla, "max_connections": max_conn}
    _assert_host_size(host, host_id)
    x.emit(
        "host",
        "ServiceAdded",
        {"host": host_id, "port": port, "kind": kind, "sla": sla, "max_connections": max_conn},
    )


def host_update_service(
    x: Exec, host_id: str, port: int, kib: int, req: int, minimum: int, max_conn: int
) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    service = host["services"].get(str(port))
    if service is None:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    sla = _sla(kib, req, minimum)
    service["sla"] = sla
    service["max_connections"] = max_conn
    x.emit(
        "host",
        "ServiceUpdated",
        {"host": host_id, "port": port, "sla": sla, "max_connections": max_conn},
    )


def host_remove_service(x: Exec, host_id: str, port: int) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    if str(port) not in host["services"]:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    # connections open to it go on: each carries its own copy of the SLA
    del host["services"][str(port)]
    x.emit("host", "ServiceRemoved", {"host": host_id, "port": port})


def host_set_firewall_mode(x: Exec, host_id: str, mode: int) -> None:
    host = x.load(host_id, "Host")
    _assert_authority(x, host, host_id)
    if mode not in (0, 1):
        raise move_error("host", "EInvalidFirewallMode", f"got {mode}")
    host["firewall"]["mode"] = mode
    _updated(x, host_id, 3)


def _list_op(list_name: str, add: bool) -> Callable[[Exec, str, str], None]:
    def op(x: Exec, host_id: str, client: str) -> None:
        host = x.load(host_id, "Host")
        _assert_authority(x, host, host_id)
        entries: list[str] = host["firewall"][list_name]
        if add and client not in entries:
            if len(entries) >= MAX_FIREWALL_ENTRIES:
                raise move_error(
                    "host", "EFirewallListFull", f"{list_name} list of {host_id} is full"
                )
            entries.append(client)
            _assert_host_size(host, host_id)
        elif not add and client in entries:
            entries.remove(client)
        _updated(x, host_id, 3)

    return op


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
    fw = host["firewall"]
    if client in fw["deny"]:
        return False
    return bool(fw["mode"] == 0 or client in fw["allow"])


def _admit(host: dict[str, Any], host_id: str, port: int, client: str) -> dict[str, int]:
    """``host::admit``: the service and the firewall, read only (the connection limits are
    the host's own admission's, off-chain: docs/escrow.md §2)."""
    service = host["services"].get(str(port))
    if service is None:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    if not _permits(host, client):
        raise move_error("host", "EFirewallDenied", f"host {host_id} refuses {client}")
    return dict(service["sla"])


# -- spending cap ------------------------------------------------------------------------------


def cap_create(x: Exec, max_per_epoch: int) -> str:
    data = {"owner": x.sender, "max_per_epoch": max_per_epoch, "spent": 0, "epoch": x.epoch}
    cap_id = x.create("SpendingCap", SHARED, data)
    x.emit(
        "spending_cap",
        "SpendingCapCreated",
        {"cap": cap_id, "owner": x.sender, "max_per_epoch": max_per_epoch},
    )
    return cap_id


def cap_set_max_per_epoch(x: Exec, cap_id: str, max_per_epoch: int) -> None:
    cap = x.load(cap_id, "SpendingCap")
    if x.sender != cap["owner"]:
        raise move_error("spending_cap", "ENotCapOwner", f"cap {cap_id} belongs to {cap['owner']}")
    cap["max_per_epoch"] = max_per_epoch
    x.emit("spending_cap", "SpendingCapChanged", {"cap": cap_id, "max_per_epoch": max_per_epoch})


def _roll_epoch(x: Exec, cap: dict[str, Any]) -> None:
    if x.epoch != cap["epoch"]:
        cap["epoch"] = x.epoch
        cap["spent"] = 0


def _reserve(x: Exec, cap: dict[str, Any], cap_id: str, amount: int) -> None:
    """``spending_cap::reserve``: the epoch's total may not pass ``max_per_epoch`` (a
    reservation of 0 included, once a lowering left the total above the limit)."""
    _roll_epoch(x, cap)
    if cap["spent"] + amount > cap["max_per_epoch"]:
        raise move_error(
            "spending_cap",
            "ESpendingCapExceeded",
            f"cap {cap_id} has reserved {cap['spent']} of {cap['max_per_epoch']} in epoch "
            f"{cap['epoch']}; {amount} more asked",
        )
    cap["spent"] += amount
    x.emit(
        "spending_cap",
        "SpendingCapReserved",
        {"cap": cap_id, "epoch": cap["epoch"], "amount": amount, "spent": cap["spent"]},
    )


def _release(x: Exec, cap: dict[str, Any], cap_id: str, amount: int, reserved_epoch: int) -> int:
    """``spending_cap::release``: up to ``amount`` back to the epoch's room, if the
    reservation's epoch is still the current one. Returns what was released."""
    _roll_epoch(x, cap)
    if cap["epoch"] != reserved_epoch:
        return 0
    released: int = min(amount, cap["spent"])
    if released:
        cap["spent"] -= released
        x.emit(
            "spending_cap",
            "SpendingCapReleased",
            {"cap": cap_id, "epoch": cap["epoch"], "amount": released, "spent": cap["spent"]},
        )
    return released


# -- escrow ------------------------------------------------------------------------------------


def fee(sla: dict[str, int], total_bytes: int, total_requests: int) -> int:
    """``host::fee``: exact, like Move's u256 arithmetic."""
    result: int = (total_bytes * sla["price_per_kib"] + 1023) // 1024 + total_requests * sla[
        "price_per_request"
    ]
    return result


def receipt_message(connection: str, b: int, r: int, amount: int, nonce: int) -> bytes:
    from dtp.ledger.receipt import receipt_message as message

    return message(connection, b, r, amount, nonce)


def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from dtp.identity.ed25519 import verify_memoized

    return verify_memoized(public_key, signature, message)


def escrow_claim(
    x: Exec,
    escrow_id: str,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
    signature: bytes,
) -> int:
    """``escrow::claim``: the cap is not involved (the deposit was reserved on it)."""
    escrow = x.load(escrow_id, "Escrow")
    if x.sender != escrow["server"]:
        raise move_error(
            "escrow", "ENotServer", f"{x.sender} is not the server of escrow {escrow_id}"
        )
    if escrow["settled"]:
        raise move_error("escrow", "EEscrowSettled", f"escrow {escrow_id}")
    if nonce <= escrow["latest_nonce"]:
        raise move_error(
            "escrow",
            "EReplayedReceipt",
            f"nonce {nonce} <= {escrow['latest_nonce']} on escrow {escrow_id}",
        )
    message = receipt_message(
        escrow["connection"], total_bytes, total_requests, total_amount, nonce
    )
    if not _verify(escrow["client_public_key"], signature, message):
        raise move_error(
            "escrow", "EBadSignature", f"connection {escrow['connection']}, nonce {nonce}"
        )
    expected = fee(escrow["sla"], total_bytes, total_requests)
    if total_amount != expected:
        raise move_error(
            "escrow", "EAmountMismatch", f"receipt says {total_amount} MIST, the fee is {expected}"
        )
    if total_amount > escrow["deposited"]:
        raise move_error(
            "escrow",
            "EReceiptExceedsDeposit",
            f"{total_amount} MIST against {escrow['deposited']} deposited in escrow {escrow_id}",
        )
    if total_amount < escrow["claimed"]:
        raise move_error(
            "escrow",
            "EReceiptNotCumulative",
            f"{total_amount} MIST, {escrow['claimed']} already claimed from escrow {escrow_id}",
        )
    paid: int = total_amount - escrow["claimed"]
    escrow["claimed"] = total_amount
    escrow["latest_nonce"] = nonce
    escrow["funds"] -= paid
    x.pay(escrow["server"], paid)
    x.emit(
        "escrow",
        "ReceiptClaimed",
        {
            "escrow": escrow_id,
            "connection": escrow["connection"],
            "server": escrow["server"],
            "nonce": nonce,
            "total_bytes": total_bytes,
            "total_requests": total_requests,
            "total_amount": total_amount,
            "paid": paid,
        },
    )
    return paid


def _assert_spending_cap(escrow: dict[str, Any], escrow_id: str, cap_id: str) -> None:
    if cap_id != escrow["spending_cap"]:
        raise move_error(
            "escrow",
            "EWrongSpendingCap",
            f"escrow {escrow_id} is bound to {escrow['spending_cap']}",
        )


def escrow_top_up(x: Exec, escrow_id: str, cap_id: str, amount: int) -> None:
    escrow = x.load(escrow_id, "Escrow")
    cap = x.load(cap_id, "SpendingCap")
    x.take_coin(amount)
    if x.sender != escrow["client"]:
        raise move_error(
            "escrow", "ENotClient", f"{x.sender} is not the client of escrow {escrow_id}"
        )
    if escrow["settled"]:
        raise move_error("escrow", "EEscrowSettled", f"escrow {escrow_id}")
    _assert_spending_cap(escrow, escrow_id, cap_id)
    _reserve(x, cap, cap_id, amount)
    if escrow.get("reserved_epoch") == x.epoch:
        escrow["reserved"] += amount
    else:
        # the earlier epoch's reservation went with that epoch's count
        escrow["reserved_epoch"] = x.epoch
        escrow["reserved"] = amount
    escrow["funds"] += amount
    escrow["deposited"] = add_u64(escrow["deposited"], amount)
    x.emit(
        "escrow",
        "EscrowToppedUp",
        {
            "escrow": escrow_id,
            "connection": escrow["connection"],
            "amount": amount,
            "deposited": escrow["deposited"],
        },
    )


def _refund_remainder(
    x: Exec, escrow: dict[str, Any], escrow_id: str, cap: dict[str, Any], cap_id: str
) -> int:
    if escrow["settled"]:
        raise move_error("escrow", "EEscrowSettled", f"escrow {escrow_id}")
    _assert_spending_cap(escrow, escrow_id, cap_id)
    escrow["settled"] = True
    amount: int = escrow["funds"]
    # what was claimed stays spent; the refunded part goes back to the epoch's room
    # (an escrow stored before reservations has none to release)
    reserved = escrow.get("reserved", 0)
    released = _release(x, cap, cap_id, min(amount, reserved), escrow.get("reserved_epoch", -1))
    if "reserved" in escrow:
        escrow["reserved"] = reserved - released
    escrow["refunded"] += amount
    escrow["funds"] = 0
    x.pay(escrow["client"], amount)
    x.emit(
        "escrow",
        "EscrowRefunded",
        {
            "escrow": escrow_id,
            "connection": escrow["connection"],
            "client": escrow["client"],
            "amount": amount,
        },
    )
    return amount


# -- transport control -----------------------------------------------------------------------


def tc_open(
    x: Exec,
    host_id: str,
    port: int,
    cap_id: str,
    public_key: bytes,
    amount: int,
    *,
    prepaid: bool = False,
) -> str:
    """``transport_control::open``; ``prepaid`` is ``open_prepaid`` (all-zero SLA, used by
    ``subscription::open_connection``). The host is only read."""
    host = x.load(host_id, "Host")
    cap = x.load(cap_id, "SpendingCap")
    x.take_coin(amount)
    client = x.sender
    if cap["owner"] != client:
        raise move_error("spending_cap", "ENotCapOwner", f"cap {cap_id} belongs to {cap['owner']}")
    sla = _admit(host, host_id, port, client)
    if prepaid:
        sla = _sla(0, 0, 0)
    if amount < sla["min_deposit"]:
        raise move_error(
            "transport_control",
            "EInsufficientDeposit",
            f"{amount} MIST < {sla['min_deposit']} for port {port} of host {host_id}",
        )
    connection = x.new_id()
    server = host["authority"]
    if len(public_key) != 32:
        raise move_error("escrow", "EInvalidPublicKey", f"got {len(public_key)} bytes")
    if sui_address_from_public_key(public_key) != client:
        raise move_error("escrow", "EKeyMismatch", f"the key's address is not {client}")
    escrow_id = x.create(
        "Escrow",
        SHARED,
        {
            "connection": connection,
            "client": client,
            "client_public_key": public_key,
            "server": server,
            "spending_cap": cap_id,
            "reserved_epoch": x.epoch,
            "reserved": amount,
            "sla": sla,
            "funds": amount,
            "deposited": amount,
            "claimed": 0,
            "refunded": 0,
            "latest_nonce": 0,
            "settled": False,
        },
    )
    # the whole deposit, so that no claim on it can be refused by the cap later
    _reserve(x, cap, cap_id, amount)
    x.objects[connection] = Obj(
        connection,
        OBJECT_TYPES["TransportControl"],
        SHARED,
        0,
        {
            "host": host_id,
            "port": port,
            "client": client,
            "server": server,
            "sla": sla,
            "escrow": escrow_id,
            "spending_cap": cap_id,
            "state": {"kind": "Open"},
            "opened_at_ms": x.now_ms,
            "settled": False,
        },
        None,
    )
    x.emit(
        "transport_control",
        "ConnectionOpened",
        {
            "connection": connection,
            "host": host_id,
            "port": port,
            "client": client,
            "server": server,
            "escrow": escrow_id,
            "deposit": amount,
            "sla": sla,
            "at_ms": x.now_ms,
        },
    )
    return connection


def _assert_participant(x: Exec, tc: dict[str, Any], tc_id: str) -> None:
    if x.sender not in (tc["client"], tc["server"]):
        raise move_error(
            "transport_control",
            "ENotParticipant",
            f"{x.sender} is neither client nor server of connection {tc_id}",
        )


def _close_fully(x: Exec, tc: dict[str, Any], tc_id: str, half_closed_at: int) -> None:
    tc["state"] = {"kind": "Closed", "half_closed_at_ms": half_closed_at, "closed_at_ms": x.now_ms}
    x.emit(
        "transport_control",
        "ConnectionClosed",
        {"connection": tc_id, "by": x.sender, "at_ms": x.now_ms},
    )


def _closed_error(tc_id: str) -> ChainError:
    return move_error("transport_control", "EConnectionClosed", f"connection {tc_id}")


def tc_close(x: Exec, tc_id: str) -> None:
    tc = x.load(tc_id, "TransportControl")
    _assert_participant(x, tc, tc_id)
    state = tc["state"]
    if state["kind"] == "Open":
        tc["state"] = {"kind": "HalfClosed", "by": x.sender, "at_ms": x.now_ms}
        x.emit(
            "transport_control",
            "ConnectionHalfClosed",
            {"connection": tc_id, "by": x.sender, "at_ms": x.now_ms},
        )
    elif state["kind"] == "HalfClosed":
        if state["by"] == x.sender:
            raise move_error(
                "transport_control", "EAlreadyHalfClosed", f"{x.sender} on connection {tc_id}"
            )
        _close_fully(x, tc, tc_id, state["at_ms"])
    else:
        raise _closed_error(tc_id)


def tc_finalize(x: Exec, tc_id: str) -> None:
    tc = x.load(tc_id, "TransportControl")
    _assert_participant(x, tc, tc_id)
    state = tc["state"]
    if state["kind"] == "Open":
        raise move_error("transport_control", "ENotHalfClosed", f"connection {tc_id} is open")
    if state["kind"] == "HalfClosed":
        if x.now_ms < state["at_ms"] + HALF_CLOSE_TIMEOUT_MS:
            raise _timeout_error(tc_id, state["at_ms"], x.now_ms)
        _close_fully(x, tc, tc_id, state["at_ms"])
    else:
        raise _closed_error(tc_id)


def _timeout_error(tc_id: str, since: int, now: int) -> ChainError:
    return move_error(
        "transport_control",
        "ETimeoutNotReached",
        f"connection {tc_id} half-closed at {since} ms, now {now} ms, timeout "
        f"{HALF_CLOSE_TIMEOUT_MS} ms",
    )


def tc_settle(x: Exec, tc_id: str, escrow_id: str, cap_id: str) -> int:
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    cap = x.load(cap_id, "SpendingCap")
    _assert_participant(x, tc, tc_id)
    if tc["settled"]:
        raise move_error("transport_control", "EAlreadySettled", f"connection {tc_id}")
    if escrow_id != tc["escrow"]:
        raise move_error(
            "transport_control", "EWrongEscrow", f"connection {tc_id} uses escrow {tc['escrow']}"
        )
    _assert_spending_cap(escrow, escrow_id, cap_id)
    is_server = x.sender == tc["server"]
    state = tc["state"]
    if state["kind"] == "Open":
        # the server may close and settle at once (it forgoes further claims); the
        # client must half-close and leave the server its timeout to claim
        if not is_server:
            raise move_error("transport_control", "EConnectionOpen", f"connection {tc_id}")
        _close_fully(x, tc, tc_id, x.now_ms)
    elif state["kind"] == "HalfClosed":
        if not is_server and x.now_ms < state["at_ms"] + HALF_CLOSE_TIMEOUT_MS:
            raise _timeout_error(tc_id, state["at_ms"], x.now_ms)
        _close_fully(x, tc, tc_id, state["at_ms"])
    elif not is_server and x.now_ms < state["half_closed_at_ms"] + HALF_CLOSE_TIMEOUT_MS:
        raise _timeout_error(tc_id, state["half_closed_at_ms"], x.now_ms)
    refunded = _refund_remainder(x, escrow, escrow_id, cap, cap_id)
    tc["settled"] = True
    x.emit(
        "transport_control",
        "ConnectionSettled",
        {
            "connection": tc_id,
            "escrow": tc["escrow"],
            "by": x.sender,
            "claimed": escrow["claimed"],
            "refunded": refunded,
        },
    )
    return refunded


def tc_settle_with_receipt(
    x: Exec,
    tc_id: str,
    escrow_id: str,
    cap_id: str,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
    signature: bytes,
) -> int:
    tc = x.load(tc_id, "TransportControl")
    escrow = x.load(escrow_id, "Escrow")
    x.load(cap_id, "SpendingCap")
    if tc["settled"]:
        raise move_error("transport_control", "EAlreadySettled", f"connection {tc_id}")
    if escrow_id != tc["escrow"]:
        raise move_error(
            "transport_control", "EWrongEscrow", f"connection {tc_id} uses escrow {tc['escrow']}"
        )
    _assert_spending_cap(escrow, escrow_id, cap_id)
    paid = escrow_claim(x, escrow_id, total_bytes, total_requests, total_amount, nonce, signature)
    tc_settle(x, tc_id, escrow_id, cap_id)
    return paid


# -- pipes -------------------------------------------------------------------------------------


def pipe_create(x: Exec, tc_id: str, inner_count: int) -> str:
    tc = x.load(tc_id, "TransportControl")
    _assert_participant(x, tc, tc_id)
    if tc["state"]["kind"] == "Closed":
        raise _closed_error(tc_id)
    if not 1 <= inner_count <= MAX_INNERS:
        raise move_error("pipe", "EInvalidInnerCount", f"got {inner_count}")
    inners = [{"index": i, "next_seq": 0, "acked": 0} for i in range(inner_count)]
    pipe_id = x.create("Pipe", x.sender, {"connection": tc_id, "owner": x.sender, "inners": inners})
    x.emit(
        "pipe",
        "PipeCreated",
        {"pipe": pipe_id, "connection": tc_id, "owner": x.sender, "inners": inner_count},
    )
    return pipe_id


def _inner(pipe: dict[str, Any], pipe_id: str, inner: int) -> dict[str, Any]:
    if inner >= len(pipe["inners"]):
        raise move_error(
            "pipe", "EInnerNotFound", f"pipe {pipe_id} has {len(pipe['inners'])} inner pipes"
        )
    lane: dict[str, Any] = pipe["inners"][inner]
    return lane


def pipe_send(x: Exec, pipe_id: str, inner: int, data: bytes) -> int:
    pipe = x.load(pipe_id, "Pipe")
    lane = _inner(pipe, pipe_id, inner)
    if len(data) > MAX_DATA_LENGTH:
        raise move_error("inner_pipe", "EDataTooLarge", f"{len(data)} > {MAX_DATA_LENGTH} bytes")
    seq: int = lane["next_seq"]
    lane["next_seq"] = seq + 1
    x.emit(
        "inner_pipe", "PipeDataSent", {"pipe": pipe_id, "inner": inner, "seq": seq, "data": data}
    )
    return seq


def pipe_sync(x: Exec, pipe_id: str, inner: int, acked: int) -> None:
    pipe = x.load(pipe_id, "Pipe")
    lane = _inner(pipe, pipe_id, inner)
    if acked > lane["next_seq"]:
        raise move_error(
            "inner_pipe", "EAckBeyondSent", f"acked {acked} > next seq {lane['next_seq']}"
        )
    if acked < lane["acked"]:
        raise move_error("inner_pipe", "EAckRegressed", f"acked {acked} < {lane['acked']}")
    lane["acked"] = acked
    x.emit("inner_pipe", "PipeSynced", {"pipe": pipe_id, "inner": inner, "acked": acked})


def pipe_destroy(x: Exec, pipe_id: str) -> None:
    pipe = x.load(pipe_id, "Pipe")
    x.delete(pipe_id)
    x.emit("pipe", "PipeDestroyed", {"pipe": pipe_id, "connection": pipe["connection"]})


# -- broadcast ---------------------------------------------------------------------------------


def _slot_at(b: dict[str, Any], now_ms: int) -> int:
    return 0 if now_ms < b["start_ms"] else (now_ms - b["start_ms"]) // b["slot_ms"]


def _accrue(b: dict[str, Any], now_ms: int) -> None:
    current = _slot_at(b, now_ms)
    if b["cancelled"] or current <= b["next_slot"]:
        b["next_slot"] = max(current, b["next_slot"])
        return
    paid = min(current - b["next_slot"], b["pool"] // b["slot_price"])
    if paid:
        b["pool"] -= paid * b["slot_price"]
        b["earned"] += paid * b["slot_price"]
        b["paid_slots"] += paid
    b["next_slot"] = current


def _assert_broadcaster(x: Exec, b: dict[str, Any], b_id: str) -> None:
    if x.sender != b["broadcaster"]:
        raise move_error("broadcast", "ENotBroadcaster", f"{x.sender} does not broadcast {b_id}")


def _assert_live(b: dict[str, Any], b_id: str) -> None:
    if b["cancelled"]:
        raise move_error("broadcast", "EBroadcastCancelled", f"broadcast {b_id}")


def broadcast_create(x: Exec, raw_channel: bytes, slot_price: int, slot_ms: int) -> str:
    return new_broadcast(x, raw_channel, slot_price, slot_ms, None)


def new_broadcast(
    x: Exec, raw_channel: bytes, slot_price: int, slot_ms: int, ticket_sale: str | None
) -> str:
    """``broadcast::new``: ``create``, or ``create_ticketed`` once it checked the sale."""
    if slot_price == 0 or slot_ms == 0:
        raise move_error("broadcast", "EInvalidSlot", f"price {slot_price}, length {slot_ms} ms")
    channel = utf8(raw_channel, "channel")
    b_id = x.create(
        "Broadcast",
        SHARED,
        {
            "broadcaster": x.sender,
            "channel": channel,
            "slot_price": slot_price,
            "slot_ms": slot_ms,
            "start_ms": x.now_ms,
            "next_slot": 0,
            "paid_slots": 0,
            "pool": 0,
            "earned": 0,
            "contributions": {},
            "total_contributed": 0,
            "next_seq": 0,
            "cancelled": False,
            "refund_base": 0,
            "outstanding": 0,
            "ticket_sale": ticket_sale,
        },
    )
    x.emit(
        "broadcast",
        "BroadcastCreated",
        {
            "broadcast": b_id,
            "broadcaster": x.sender,
            "channel": channel,
            "slot_price": slot_price,
            "slot_ms": slot_ms,
            "start_ms": x.now_ms,
            "ticket_sale": ticket_sale,
        },
    )
    return b_id


def broadcast_transmit(x: Exec, b_id: str, data: bytes) -> int:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _assert_live(b, b_id)
    if len(data) > MAX_DATA_LENGTH:
        raise move_error("broadcast", "EDataTooLarge", f"{len(data)} > {MAX_DATA_LENGTH} bytes")
    _accrue(b, x.now_ms)
    if b["pool"] < b["slot_price"]:
        raise move_error(
            "broadcast",
            "ENotOnAir",
            f"broadcast {b_id} has {b['pool']} MIST, a slot costs {b['slot_price']}",
        )
    seq: int = b["next_seq"]
    b["next_seq"] = seq + 1
    x.emit("broadcast", "BroadcastTransmitted", {"broadcast": b_id, "seq": seq, "data": data})
    return seq


def broadcast_claim(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _accrue(b, x.now_ms)
    amount: int = b["earned"]
    b["earned"] = 0
    x.pay(b["broadcaster"], amount)
    x.emit(
        "broadcast",
        "BroadcastClaimed",
        {"broadcast": b_id, "amount": amount, "paid_slots": b["paid_slots"]},
    )
    return amount


def broadcast_cancel(x: Exec, b_id: str) -> None:
    b = x.load(b_id, "Broadcast")
    _assert_broadcaster(x, b, b_id)
    _assert_live(b, b_id)
    _accrue(b, x.now_ms)
    b["cancelled"] = True
    b["refund_base"] = b["pool"]
    b["outstanding"] = b["total_contributed"]
    x.emit(
        "broadcast",
        "BroadcastCancelled",
        {"broadcast": b_id, "at_ms": x.now_ms, "refundable": b["refund_base"]},
    )


def broadcast_contribute(x: Exec, b_id: str, amount: int) -> None:
    b = x.load(b_id, "Broadcast")
    x.take_coin(amount)
    _assert_live(b, b_id)
    if amount == 0:
        raise move_error("broadcast", "EZeroAmount", f"broadcast {b_id}")
    _accrue(b, x.now_ms)
    b["pool"] += amount
    contribution = add_u64(b["contributions"].get(x.sender, 0), amount)
    b["contributions"][x.sender] = contribution
    b["total_contributed"] = add_u64(b["total_contributed"], amount)
    x.emit(
        "broadcast",
        "BroadcastContributed",
        {
            "broadcast": b_id,
            "listener": x.sender,
            "amount": amount,
            "contribution": contribution,
            "pool": b["pool"],
        },
    )


def broadcast_withdraw(x: Exec, b_id: str) -> int:
    b = x.load(b_id, "Broadcast")
    if not b["cancelled"]:
        raise move_error("broadcast", "ENotCancelled", f"broadcast {b_id}")
    if x.sender not in b["contributions"]:
        raise move_error("broadcast", "ENoContribution", f"{x.sender} on broadcast {b_id}")
    contribution: int = b["contributions"].pop(x.sender)
    if contribution == b["outstanding"]:
        amount: int = b["pool"]
    else:
        # Rounded on the running total of refunded contributions, not on each share
        # alone: flooring every share apart left up to one MIST per listener to the last
        # one out, who could get back more than it put in (1+1+1 MIST with 1 spent:
        # refunds 0, 0, 2). This way each refund is its exact share rounded down or up
        # (never above the contribution) and the refunds still add up to refund_base.
        total, base = b["total_contributed"], b["refund_base"]
        before = total - b["outstanding"]  # contributions refunded so far
        amount = (before + contribution) * base // total - before * base // total
    b["outstanding"] -= contribution
    b["pool"] -= amount
    x.pay(x.sender, amount)
    x.emit(
        "broadcast",
        "ContributionRefunded",
        {"broadcast": b_id, "listener": x.sender, "amount": amount},
    )
    return amount


# -- mailbox (sealed messages for offline hosts) ------------------------------------------------


def mailbox_send(x: Exec, host_id: str, payload: bytes) -> None:
    from dtp.ledger.interface import MAX_MAIL_PAYLOAD

    x.load(host_id, "Host")
    if not payload:
        raise move_error("mailbox", "EEmptyPayload", f"mail for host {host_id}")
    if len(payload) > MAX_MAIL_PAYLOAD:
        raise move_error(
            "mailbox", "EPayloadTooLarge", f"{len(payload)} > {MAX_MAIL_PAYLOAD} bytes"
        )
    x.emit("mailbox", "MailDeposited", {"recipient_host": host_id, "payload": payload})


# -- response escrow (prepaid response fees) -----------------------------------------------------


def response_escrow_deposit(
    x: Exec, server: str, request_id: bytes, public_key: bytes, deadline_ms: int, amount: int
) -> str:
    from dtp.ledger.interface import MAX_REQUEST_ID_LENGTH, RESPONSE_ESCROW_OPEN

    x.take_coin(amount)
    if len(public_key) != 32:
        raise move_error("response_escrow", "EInvalidPublicKey", f"{len(public_key)} bytes")
    if sui_address_from_public_key(public_key) != x.sender:
        raise move_error("response_escrow", "EKeyMismatch", f"sender {x.sender}")
    if amount == 0:
        raise move_error("response_escrow", "EZeroAmount", "a response fee must be positive")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise move_error(
            "response_escrow",
            "ERequestIdTooLong",
            f"{len(request_id)} > {MAX_REQUEST_ID_LENGTH} bytes",
        )
    if deadline_ms <= x.now_ms:
        raise move_error("response_escrow", "EDeadlineInPast", f"{deadline_ms} <= {x.now_ms}")
    escrow_id = x.create(
        "ResponseEscrow",
        SHARED,
        {
            "requester": x.sender,
            "requester_public_key": public_key,
            "server": server,
            "request_id": request_id,
            "deadline_ms": deadline_ms,
            "funds": amount,
            "amount": amount,
            "state": RESPONSE_ESCROW_OPEN,
        },
    )
    x.emit(
        "response_escrow",
        "ResponseFeeDeposited",
        {
            "escrow": escrow_id,
            "requester": x.sender,
            "server": server,
            "request_id": request_id,
            "amount": amount,
            "deadline_ms": deadline_ms,
        },
    )
    return escrow_id


def _open_response_escrow(x: Exec, escrow_id: str, role: str) -> dict[str, Any]:
    from dtp.ledger.interface import RESPONSE_ESCROW_OPEN

    e = x.load(escrow_id, "ResponseEscrow")
    if role == "server" and x.sender != e["server"]:
        raise move_error("response_escrow", "ENotServer", f"{x.sender} on {escrow_id}")
    if role == "requester" and x.sender != e["requester"]:
        raise move_error("response_escrow", "ENotRequester", f"{x.sender} on {escrow_id}")
    if e["state"] != RESPONSE_ESCROW_OPEN:
        raise move_error("response_escrow", "EEscrowClosed", f"response escrow {escrow_id}")
    return e


def _pay_out(x: Exec, e: dict[str, Any], to: str, state: int) -> int:
    amount: int = e["funds"]
    e["funds"] = 0
    e["state"] = state
    x.pay(to, amount)
    return amount


def response_escrow_claim(x: Exec, escrow_id: str, response_hash: bytes, signature: bytes) -> int:
    from dtp.ledger.interface import RESPONSE_ESCROW_PAID, response_ack_message

    e = _open_response_escrow(x, escrow_id, "server")
    if len(response_hash) != 32:
        raise move_error("response_escrow", "EInvalidHash", f"{len(response_hash)} bytes")
    message = response_ack_message(escrow_id, response_hash)
    if not _verify(e["requester_public_key"], signature, message):
        raise move_error("response_escrow", "EBadSignature", f"response escrow {escrow_id}")
    amount = _pay_out(x, e, e["server"], RESPONSE_ESCROW_PAID)
    x.emit(
        "response_escrow",
        "ResponseFeeClaimed",
        {
            "escrow": escrow_id,
            "server": e["server"],
            "amount": amount,
            "response_hash": response_hash,
        },
    )
    return amount


def response_escrow_deliver(x: Exec, escrow_id: str, response: bytes) -> int:
    from dtp.ledger.interface import MAX_RESPONSE_LENGTH, RESPONSE_ESCROW_DELIVERED

    e = _open_response_escrow(x, escrow_id, "server")
    if x.now_ms > e["deadline_ms"]:
        raise move_error("response_escrow", "EDeadlinePassed", f"{x.now_ms} > {e['deadline_ms']}")
    if len(response) > MAX_RESPONSE_LENGTH:
        raise move_error(
            "response_escrow", "EResponseTooLarge", f"{len(response)} > {MAX_RESPONSE_LENGTH}"
        )
    amount = _pay_out(x, e, e["server"], RESPONSE_ESCROW_DELIVERED)
    x.emit(
        "response_escrow",
        "ResponseDelivered",
        {
            "escrow": escrow_id,
            "requester": e["requester"],
            "request_id": e["request_id"],
            "response": response,
            "amount": amount,
        },
    )
    return amount


def response_escrow_refund(x: Exec, escrow_id: str) -> int:
    from dtp.ledger.interface import RESPONSE_ESCROW_REFUNDED

    e = _open_response_escrow(x, escrow_id, "requester")
    if x.now_ms <= e["deadline_ms"]:
        raise move_error(
            "response_escrow", "EDeadlineNotReached", f"{x.now_ms} <= {e['deadline_ms']}"
        )
    amount = _pay_out(x, e, e["requester"], RESPONSE_ESCROW_REFUNDED)
    x.emit(
        "response_escrow",
        "ResponseFeeRefunded",
        {"escrow": escrow_id, "requester": e["requester"], "amount": amount},
    )
    return amount


# -- the call table ----------------------------------------------------------------------------

#: Argument kinds: "u8", "u16", "u64", "bytes", "utf8", "address", "vec_bytes", "coin"
#: (u64 MIST split from the sender's balance) and "obj:<Struct>" (an object ID). "utf8" is
#: a ``vector<u8>`` the Move code turns into a String itself (``string::utf8``), passed on
#: as bytes for the handler to decode (:func:`utf8`) where Move does, so that bytes which
#: are not UTF-8 abort there as they do on Sui.
Handler = Callable[..., Any]

FUNCTIONS: Final[dict[tuple[str, str], tuple[tuple[str, ...], Handler]]] = {
    ("host", "create"): (("bytes", "vec_bytes"), host_create),
    ("host", "set_authority"): (("obj:Host", "address"), host_set_authority),
    ("host", "set_noise_static_key"): (("obj:Host", "bytes"), host_set_noise_static_key),
    ("host", "set_endpoints"): (("obj:Host", "vec_bytes"), host_set_endpoints),
    ("host", "add_service"): (
        ("obj:Host", "u16", "utf8", "u64", "u64", "u64", "u64"),
        host_add_service,
    ),
    ("host", "update_service"): (
        ("obj:Host", "u16", "u64", "u64", "u64", "u64"),
        host_update_service,
    ),
    ("host", "remove_service"): (("obj:Host", "u16"), host_remove_service),
    ("host", "set_firewall_mode"): (("obj:Host", "u8"), host_set_firewall_mode),
    ("host", "allow"): (("obj:Host", "address"), _list_op("allow", True)),
    ("host", "disallow"): (("obj:Host", "address"), _list_op("allow", False)),
    ("host", "deny"): (("obj:Host", "address"), _list_op("deny", True)),
    ("host", "undeny"): (("obj:Host", "address"), _list_op("deny", False)),
    ("host", "set_client_limits"): (("obj:Host", "u64", "u64", "u64"), host_set_client_limits),
    ("spending_cap", "create"): (("u64",), cap_create),
    ("spending_cap", "set_max_per_epoch"): (("obj:SpendingCap", "u64"), cap_set_max_per_epoch),
    ("transport_control", "open"): (
        ("obj:Host", "u16", "obj:SpendingCap", "bytes", "coin"),
        tc_open,
    ),
    ("escrow", "top_up"): (("obj:Escrow", "obj:SpendingCap", "coin"), escrow_top_up),
    ("escrow", "claim"): (
        ("obj:Escrow", "u64", "u64", "u64", "u64", "bytes"),
        escrow_claim,
    ),
    ("transport_control", "close"): (("obj:TransportControl",), tc_close),
    ("transport_control", "finalize"): (("obj:TransportControl",), tc_finalize),
    ("transport_control", "settle"): (
        ("obj:TransportControl", "obj:Escrow", "obj:SpendingCap"),
        tc_settle,
    ),
    ("transport_control", "settle_with_receipt"): (
        (
            "obj:TransportControl",
            "obj:Escrow",
            "obj:SpendingCap",
            "u64",
            "u64",
            "u64",
            "u64",
            "bytes",
        ),
        tc_settle_with_receipt,
    ),
    ("pipe", "create"): (("obj:TransportControl", "u64"), pipe_create),
    ("pipe", "send"): (("obj:Pipe", "u64", "bytes"), pipe_send),
    ("pipe", "sync"): (("obj:Pipe", "u64", "u64"), pipe_sync),
    ("pipe", "destroy"): (("obj:Pipe",), pipe_destroy),
    ("broadcast", "create"): (("utf8", "u64", "u64"), broadcast_create),
    ("broadcast", "transmit"): (("obj:Broadcast", "bytes"), broadcast_transmit),
    ("broadcast", "claim"): (("obj:Broadcast",), broadcast_claim),
    ("broadcast", "cancel"): (("obj:Broadcast",), broadcast_cancel),
    ("broadcast", "contribute"): (("obj:Broadcast", "coin"), broadcast_contribute),
    ("broadcast", "withdraw"): (("obj:Broadcast",), broadcast_withdraw),
    ("mailbox", "send"): (("obj:Host", "bytes"), mailbox_send),
    ("response_escrow", "deposit"): (
        ("address", "bytes", "bytes", "u64", "coin"),
        response_escrow_deposit,
    ),
    ("response_escrow", "claim"): (("obj:ResponseEscrow", "bytes", "bytes"), response_escrow_claim),
    ("response_escrow", "deliver"): (("obj:ResponseEscrow", "bytes"), response_escrow_deliver),
    ("response_escrow", "refund"): (("obj:ResponseEscrow",), response_escrow_refund),
}

_LIMITS: Final = {"u8": 0xFF, "u16": 0xFFFF, "u64": U64_MAX, "coin": U64_MAX}


def check_args(module: str, function: str, args: tuple[TxValue, ...]) -> list[Any]:
    """Type-check decoded arguments against the function's schema (as Sui's
    transaction input checks would); returns them converted for the handler."""
    entry = FUNCTIONS.get((module, function))
    if entry is None:
        raise InvalidArgument(f"The dtp package has no entry function {module}::{function}.")
    schema, _ = entry
    if len(args) != len(schema):
        raise InvalidArgument(
            f"{module}::{function} takes {len(schema)} arguments, the transaction has {len(args)}."
        )
    out: list[Any] = []
    for position, (kind, value) in enumerate(zip(schema, args, strict=True)):
        where = f"argument {position} of {module}::{function}"
        if kind in _LIMITS:
            if not isinstance(value, int) or isinstance(value, Address) or value > _LIMITS[kind]:
                raise InvalidArgument(f"{where} must be a {kind} integer.")
            out.append(value)
        elif kind in ("bytes", "utf8"):
            if not isinstance(value, bytes):
                raise InvalidArgument(f"{where} must be bytes.")
            # Sui refuses a pure argument this long before any Move code runs
            # (docs/escrow.md §8); no Move check bounds a String argument (a service's
            # kind, a channel, a title), so without this one a call Sui refuses would
            # succeed here. Each vector<u8> argument has a Move bound no larger (a
            # length check, or a key or signature that cannot verify), so a call
            # with one that long fails here too (with the Move error).
            if kind == "utf8" and len(value) > MAX_PURE_BYTES:
                raise InvalidArgument(
                    f"{where} is {len(value)} bytes: a pure argument of Sui takes at "
                    f"most {MAX_PURE_BYTES}."
                )
            out.append(value)
        elif kind == "vec_bytes":
            if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
                raise InvalidArgument(f"{where} must be a vector of byte strings.")
            out.append(list(value))
        else:  # address or object
            if not isinstance(value, Address):
                raise InvalidArgument(f"{where} must be an address or object ID.")
            out.append(str(value))
    return out
