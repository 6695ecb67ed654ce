"""The Move package's rules, executed by LocalLedger on plain dicts: one module a group of
``move/dtp`` modules, each rule joining the call table :data:`FUNCTIONS` (``@rule``).

One function per entry point of ``move/dtp``, with the same checks in the same order as
the Move code (docs/escrow.md; where the text is silent, the ``.move`` files decide).
A rule raises the ChainError of the first failing check; it may have mutated objects by
then, which is harmless: :class:`Exec` only writes its changes when the whole call
succeeded (and the SQLite transaction around it rolls back otherwise).

Object data are dicts with the Move struct's fields; balances (``Balance<SUI>``) are
plain ints (``funds``, ``pool``, ``earned``).
"""

from __future__ import annotations

from typing import Any, Final

from dtp.errors import InvalidArgument
from dtp.ledger._objects import MAX_PURE_BYTES, U64_MAX
from dtp.ledger.local._tx import Address, TxValue
from dtp.ledger.local.rules._broadcast import (
    broadcast_cancel,
    broadcast_claim,
    broadcast_contribute,
    broadcast_create,
    broadcast_heartbeat,
    broadcast_leave,
    broadcast_transmit,
    broadcast_withdraw,
    new_broadcast,
)
from dtp.ledger.local.rules._common import (
    EINVALID_UTF8,
    FUNCTIONS,
    MOVE_STDLIB,
    OBJECT_TYPES,
    SHARED,
    DamagedData,
    Exec,
    Handler,
    Obj,
    Store,
    add_u64,
    from_json,
    parse_stored_int,
    stored_int,
    to_json,
    utf8,
    wrong_shape,
)
from dtp.ledger.local.rules._escrow import (
    cap_create,
    cap_set_max_per_epoch,
    escrow_claim,
    escrow_top_up,
    fee,
    receipt_message,
)
from dtp.ledger.local.rules._host import (
    MAX_MOVE_OBJECT_SIZE,
    host_add_service,
    host_bcs_size,
    host_create,
    host_remove_service,
    host_set_authority,
    host_set_client_limits,
    host_set_endpoints,
    host_set_firewall_mode,
    host_set_noise_static_key,
    host_update_service,
    new_sla,
)
from dtp.ledger.local.rules._messaging import (
    mailbox_send,
    response_escrow_claim,
    response_escrow_deliver,
    response_escrow_deposit,
    response_escrow_refund,
)
from dtp.ledger.local.rules._pipe import pipe_create, pipe_destroy, pipe_send, pipe_sync
from dtp.ledger.local.rules._transport_control import (
    tc_close,
    tc_finalize,
    tc_open,
    tc_open_with_session_key,
    tc_settle,
    tc_settle_with_receipt,
)
from dtp.ledger.local.rules._versions import call as _call

__all__ = [
    "EINVALID_UTF8",
    "FUNCTIONS",
    "MAX_MOVE_OBJECT_SIZE",
    "MOVE_STDLIB",
    "OBJECT_TYPES",
    "SHARED",
    "U64_MAX",
    "DamagedData",
    "Exec",
    "Handler",
    "Obj",
    "Store",
    "add_u64",
    "broadcast_cancel",
    "broadcast_claim",
    "broadcast_contribute",
    "broadcast_create",
    "broadcast_heartbeat",
    "broadcast_leave",
    "broadcast_transmit",
    "broadcast_withdraw",
    "call",
    "cap_create",
    "cap_set_max_per_epoch",
    "check_args",
    "entry",
    "escrow_claim",
    "escrow_top_up",
    "fee",
    "from_json",
    "host_add_service",
    "host_bcs_size",
    "host_create",
    "host_remove_service",
    "host_set_authority",
    "host_set_client_limits",
    "host_set_endpoints",
    "host_set_firewall_mode",
    "host_set_noise_static_key",
    "host_update_service",
    "mailbox_send",
    "new_broadcast",
    "new_sla",
    "parse_stored_int",
    "pipe_create",
    "pipe_destroy",
    "pipe_send",
    "pipe_sync",
    "receipt_message",
    "response_escrow_claim",
    "response_escrow_deliver",
    "response_escrow_deposit",
    "response_escrow_refund",
    "stored_int",
    "tc_close",
    "tc_finalize",
    "tc_open",
    "tc_open_with_session_key",
    "tc_settle",
    "tc_settle_with_receipt",
    "to_json",
    "utf8",
    "wrong_shape",
]


_LIMITS: Final = {"u8": 0xFF, "u16": 0xFFFF, "u64": U64_MAX, "coin": U64_MAX}


#: Each schema's arguments as :func:`check_args` first checks them: the exact type an
#: argument of that kind has and its bound (a u64's largest value, a String's most bytes),
#: made once per entry function. An argument of exactly that type within the bound is
#: one the checks below accept as it is (an Address as its text); None for a vector.
_CHECKS: Final[dict[tuple[str, ...], tuple[tuple[Any, int | None], ...]]] = {}


def _check_of(kind: str) -> tuple[Any, int | None]:
    if kind in _LIMITS:
        return int, _LIMITS[kind]
    if kind in ("bytes", "utf8"):
        return bytes, MAX_PURE_BYTES if kind == "utf8" else None
    if kind == "vec_bytes":
        return None, None
    return Address, None


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
    checks = _CHECKS.get(schema)
    if checks is None:
        checks = _CHECKS[schema] = tuple(_check_of(kind) for kind in schema)
    values: tuple[Any, ...] = args  # (each narrowed by its exact type)
    for (expected, limit), arg in zip(checks, values, strict=True):
        if type(arg) is not expected:
            break
        if expected is int:
            if not 0 <= arg <= limit:
                break
        elif limit is not None and len(arg) > limit:
            break
    else:
        return [str(arg) if type(arg) is Address else arg for arg in values]
    # an argument of another type, or one past its bound: checked one by one below
    out: list[Any] = []
    for position, (kind, value) in enumerate(zip(schema, args, strict=True)):
        where = f"argument {position} of {module}::{function}"
        if kind in _LIMITS:
            if (
                not isinstance(value, int)
                or isinstance(value, Address)
                or not 0 <= value <= _LIMITS[kind]
            ):
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


def call(x: Exec, module: str, function: str, args: list[Any] | tuple[Any, ...]) -> Any:
    """Run the entry function ``module::function`` of :data:`FUNCTIONS` on ``args`` (as
    ``check_args`` gives them) as Sui runs a Move call: the objects loaded, the coin split
    and the objects' versions checked first (:mod:`._versions`), then its rule."""
    return _call(x, FUNCTIONS, module, function, args)


def entry(module: str, function: str) -> Handler:
    """:func:`call` of ``module::function`` as a handler (``handler(x, *args)``), made
    once for each entry function of :data:`FUNCTIONS` (every transaction takes one)."""
    known = _ENTRIES.get((module, function))
    if known is not None:
        return known

    def run(x: Exec, *args: Any) -> Any:
        return _call(x, FUNCTIONS, module, function, args)  # (call, without its frame)

    if (module, function) in FUNCTIONS:
        _ENTRIES[module, function] = run
    return run


_ENTRIES: Final[dict[tuple[str, str], Handler]] = {}
