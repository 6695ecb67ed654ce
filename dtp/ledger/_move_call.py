"""What a ledger method comes to: one Move call, described once for both built-in ledgers.

A method checks its arguments (in one order, the same on both ledgers: the signer, then
each argument as the method takes it, then what it reads) and hands a :class:`MoveCall`
to the ledger's ``_move``. LocalLedger runs the call on its SQLite rows; SuiLedger builds
the transaction of its row of ``dtp.ledger.sui._tx.MOVE_CALLS``, object arguments by
reference, and reads the result from the event the call emits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dtp.errors import InvalidArgument
from dtp.ledger._objects import U64_MAX, Sla, as_bytes, check_half_close_timeout, is_whole
from dtp.ledger.receipt import Receipt

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "U64_MAX",
    "Id",
    "MoveCall",
    "MoveCaller",
    "check_receipt",
    "check_sla",
    "signer_key",
    "u64",
]


def u64(value: int, what: str) -> int:
    """``value`` as the u64 argument it stands for: a bool, a float or a negative number
    would make a call no Move transaction can."""
    if type(value) is int and 0 <= value <= U64_MAX:  # (the common case, no call)
        return value
    if not is_whole(value, 0, U64_MAX):
        raise InvalidArgument(f"{what} must be an integer from 0 to 2**64-1, got {value!r}.")
    return value


def signer_key(signer: HostIdentity, key: bytes | None, what: str) -> bytes:
    """An optional public-key argument: the signer's own Ed25519 key when None."""
    return signer.ed25519_public if key is None else as_bytes(key, what)


def check_sla(sla: Sla) -> Sla:
    """``sla`` is an :class:`Sla` of u64 fields (a tuple failed as an AttributeError)
    whose half-close timeout is within its bounds: on Sui the Sla is built by
    ``host::new_sla_with_half_close_timeout``, a call before the one that takes it, so
    its abort comes first, before a transaction that would pay gas to abort is signed."""
    if not isinstance(sla, Sla):
        raise InvalidArgument(f"sla must be an Sla, got {type(sla).__name__}.")
    u64(sla.price_per_kib, "price_per_kib")
    u64(sla.price_per_request, "price_per_request")
    u64(sla.min_deposit, "min_deposit")
    check_half_close_timeout(u64(sla.half_close_timeout_ms, "half_close_timeout_ms"))
    return sla


def check_receipt(receipt: Receipt) -> Receipt:
    """``receipt`` is a :class:`Receipt` of u64 counts and a byte signature."""
    if not isinstance(receipt, Receipt):
        raise InvalidArgument(f"receipt must be a Receipt, got {type(receipt).__name__}.")
    u64(receipt.total_bytes, "total_bytes")
    u64(receipt.total_requests, "total_requests")
    u64(receipt.total_amount, "total_amount")
    u64(receipt.nonce, "nonce")
    as_bytes(receipt.signature, "signature")
    return receipt


@dataclass(frozen=True)
class Id:
    """An ID argument: an object's or an address, as the call's row of
    :data:`~dtp.ledger._entry_functions.MOVE_CALLS` says (an object's with its struct and
    kind, by which SuiLedger references it: shared, or owned by the signer)."""

    value: str


@dataclass(frozen=True)
class MoveCall:
    """One Move call, ``module::function`` (its row of the Sui builders' table gives its
    arguments' kinds); ``args`` are its values in the order the function takes them, the
    Clock left out."""

    module: str
    function: str
    args: tuple[Any, ...]
    #: MIST split off the gas coin for a ``Coin<SUI>`` argument (Sui's gas lease holds it).
    spend: int = 0
    #: Where SuiLedger reads the result: ``"Event.field"``, ``"ConnectionOpened"`` for an
    #: :class:`~dtp.ledger._objects.OpenedConnection`, "" for none (LocalLedger returns
    #: the call's value).
    result: str = ""
    #: A struct whose created object, when the effects name one, is the result.
    created: str = ""


class MoveCaller:
    """Where a ledger method's checked call goes: the mixins of
    :class:`~dtp.ledger.interface.Ledger` state each call once, for both built-in ledgers."""

    def _move(self, signer: HostIdentity, call: MoveCall) -> Any:
        """Make ``call`` (each ledger its own way: SQLite rows, a Sui transaction) and
        return its result: the value the Move function returns on LocalLedger, what
        ``call.result`` names on SuiLedger, which reads it from the call's event. (Given
        by LocalStore and SuiLedgerCore; a ledger without it has none of these calls.)"""
        raise NotImplementedError(f"{type(self).__name__} has no {call.module}::{call.function}")
