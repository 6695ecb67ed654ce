"""Reading a Sui node's answer to an executed transaction: the outcome (created objects by
type, dtp events, net gas), the ChainError of a failed execution (Move aborts as
LocalLedger raises them, through ``move_error_from_abort_code``), and what the gas pool
needs (the gas coin's new version, the coins the transaction created for the sender,
whether congestion control cancelled it). Offline: tests build the messages themselves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot

from dtp.errors import (
    ChainError,
    InsufficientFunds,
    foreign_abort,
    move_error_from_abort_code,
)
from dtp.ledger._objects import Event, normalize_id
from dtp.ledger.sui._client import _node_id, timestamp_ms
from dtp.ledger.sui._codec import EVENT_LAYOUTS, MESSAGING_EVENT_LAYOUTS, decode
from dtp.ledger.sui._coordination import COORDINATION_EVENT_LAYOUTS
from dtp.ledger.sui._economics import ECONOMICS_EVENT_LAYOUTS
from dtp.ledger.sui._tx import OwnedRef

__all__ = [
    "MissingEvent",
    "TxOutcome",
    "cancelled_for_congestion",
    "event_from_proto",
    "execution_error",
    "gas_used",
    "parse_executed",
    "short_type",
    "sui_coins_created",
]

logger = logging.getLogger(__name__)

#: ``0x2::coin::Coin<0x2::sui::SUI>`` with its addresses in full.
_SUI_COIN: Final = f"0x{'2'.rjust(64, '0')}::coin::Coin<0x{'2'.rjust(64, '0')}::sui::SUI>"
_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{1,64}")


class MissingEvent(ChainError, KeyError):
    """A transaction's outcome lacks an event the call reads its result from (a node that
    left it out): a typed ChainError for callers, still the KeyError it was before."""

    __str__ = ChainError.__str__


@dataclass(frozen=True)
class TxOutcome:
    """What one executed transaction did."""

    digest: str
    events: tuple[Event, ...]
    #: Created object IDs by short type (``"dtp::host::Host"``).
    created: Mapping[str, tuple[str, ...]]
    #: Net gas paid: computation + storage - storage rebate, in MIST.
    gas_cost: int
    checkpoint: int | None = None

    def event(self, name: str) -> Event:
        """The first event named ``name`` (:class:`MissingEvent`, a ChainError and a
        ``KeyError``, if none)."""
        for e in self.events:
            if e.name == name:
                return e
        raise MissingEvent(
            f"Transaction {self.digest} succeeded, but the node's answer has no {name} event.",
            name="MissingEvent",
            module="sui",
        )

    def created_of(self, struct: str) -> str | None:
        """The ID of the created object of struct ``struct`` (e.g. ``"Host"``), if any."""
        for type_, ids in self.created.items():
            if type_.rsplit("::", 1)[-1] == struct and ids:
                return ids[0]
        return None


# -- pure helpers (offline-testable) ------------------------------------------------------------


def _split_type(type_: str) -> tuple[str, str, str] | None:
    parts = type_.split("::", 2)
    if len(parts) != 3:
        return None
    try:
        return normalize_id(parts[0], "package ID"), parts[1], parts[2]
    except ChainError:
        return None


def short_type(type_: str, packages: Sequence[str]) -> str | None:
    """``dtp::module::Name`` for a type of one of ``packages``; None for other types."""
    parts = _split_type(type_)
    if parts is None or parts[0] not in packages:
        return None
    return f"dtp::{parts[1]}::{parts[2]}"


def event_from_proto(
    ev: Any, packages: Sequence[str], cursor: str = "", timestamp_ms: int = 0, digest: str = ""
) -> Event | None:
    """An :class:`Event` from a ``sui.rpc.v2.Event`` (None when it is not a dtp event, or
    one of a type this version does not know: a later version of the package may emit
    more, and a transaction that succeeded must not be reported as failed for that)."""
    type_ = short_type(str(ev.event_type or ""), packages)
    if type_ is None:
        return None
    _, module, name = type_.split("::")
    layout = (
        MESSAGING_EVENT_LAYOUTS.get((module, name))
        or ECONOMICS_EVENT_LAYOUTS.get((module, name))
        or COORDINATION_EVENT_LAYOUTS.get((module, name))
        or EVENT_LAYOUTS.get((module, name))
    )
    if layout is None:
        logger.debug("skipping the event %s: a type this version does not know", type_)
        return None
    data = bytes(ev.contents.value) if ev.contents is not None and ev.contents.value else b""
    fields = decode(layout, data)
    # the node's answer: a malformed sender is MalformedResponse, not the caller's
    # InvalidObjectId
    sender = _node_id(ev.sender, "event sender address") if ev.sender else ""
    return Event(
        cursor,
        type_,
        fields,
        sender,
        str(ev.transaction_digest or digest),
        timestamp_ms,
    )


def _package_id(package: str) -> str | None:
    """``package`` normalized; None when it is no ID (a node's answer: not ours, and not
    the caller's InvalidArgument)."""
    try:
        return normalize_id(package, "package ID")
    except ChainError:
        return None


def execution_error(error: Any, packages: Sequence[str], detail: str) -> ChainError:
    """The exception for a failed execution status (``sui.rpc.v2.ExecutionError``)."""
    kind = error.kind if error is not None else None
    description = str(getattr(error, "description", "") or "")
    kinds = sui_prot.ExecutionErrorExecutionErrorKind
    if kind == kinds.MOVE_ABORT and error.abort is not None:
        abort = error.abort
        location = abort.location
        package = getattr(location, "package", None)
        module = str(getattr(location, "module", "") or "")
        full = _package_id(package) if package else None
        if package and full not in packages:
            # (as the local ledger names it: the full ID, however short the node wrote
            # it -- "0x2" and "0x00..02" are one package)
            return foreign_abort(full or str(package), module, abort.abort_code, detail)
        clever = abort.clever_error
        if clever is not None and clever.error_code is not None:
            return move_error_from_abort_code(int(clever.error_code), detail)
        return move_error_from_abort_code(int(abort.abort_code or 0), detail)
    if kind in (kinds.INSUFFICIENT_COIN_BALANCE, kinds.INSUFFICIENT_FUNDS_FOR_WITHDRAW):
        return InsufficientFunds(
            f"Not enough SUI: {description or detail}",
            name="InsufficientCoinBalance",
            module="sui",
        )
    if kind == kinds.INSUFFICIENT_GAS:
        return InsufficientFunds(
            f"The gas budget was exhausted: {description or detail}",
            name="InsufficientGas",
            module="sui",
        )
    name = kind.name if kind is not None else "ExecutionFailed"
    return ChainError(
        f"Transaction failed ({name}): {description or detail}", name=name, module="sui"
    )


def parse_executed(executed: Any, packages: Sequence[str], detail: str = "") -> TxOutcome:
    """A :class:`TxOutcome` from an ``ExecutedTransaction``; raises the mapped
    :class:`ChainError` if execution failed."""
    if executed is None or executed.effects is None:
        # the node took the transaction: it may have run all the same
        raise ChainError(
            f"The node returned no effects for {detail}: the transaction may still have "
            "executed; read its outcome before sending it again.",
            name="NoEffects",
        )
    effects = executed.effects
    digest = str(executed.digest or effects.transaction_digest or "")
    status = effects.status
    if status is None or not status.success:
        raise execution_error(
            status.error if status is not None else None, packages, f"{detail} (tx {digest})"
        )
    timestamp = timestamp_ms(executed.timestamp)
    events: list[Event] = []
    if executed.events is not None:
        for ev in executed.events.events:
            event = event_from_proto(ev, packages, "", timestamp, digest)
            if event is not None:
                events.append(event)
    created: dict[str, list[str]] = {}
    for co in effects.changed_objects:
        if co.id_operation != sui_prot.ChangedObjectIdOperation.CREATED:
            continue
        type_ = short_type(str(co.object_type or ""), packages)
        if type_ is not None:
            created.setdefault(type_, []).append(_node_id(co.object_id, "created object ID"))
    gas = effects.gas_used
    gas_cost = 0
    if gas is not None:
        gas_cost = (
            int(gas.computation_cost or 0)
            + int(gas.storage_cost or 0)
            - int(gas.storage_rebate or 0)
        )
    return TxOutcome(
        digest,
        tuple(events),
        {k: tuple(v) for k, v in created.items()},
        gas_cost,
        executed.checkpoint,
    )


def gas_used(effects: Any) -> int:
    """Net gas of executed effects: computation + storage - storage rebate, in MIST."""
    gas = effects.gas_used if effects is not None else None
    if gas is None:
        return 0
    return (
        int(gas.computation_cost or 0) + int(gas.storage_cost or 0) - int(gas.storage_rebate or 0)
    )


def cancelled_for_congestion(executed: Any) -> bool:
    """Whether congestion control cancelled the transaction (shared objects too busy): it
    did not execute (only gas was charged), so it is safe to send again."""
    effects = executed.effects if executed is not None else None
    status = effects.status if effects is not None else None
    error = status.error if status is not None and not status.success else None
    kinds = sui_prot.ExecutionErrorExecutionErrorKind
    return error is not None and (
        error.kind == kinds.EXECUTION_CANCELED_DUE_TO_CONSENSUS_OBJECT_CONGESTION
    )


def _is_sui_coin(type_: str) -> bool:
    full = _ADDRESS.sub(lambda m: "0x" + m.group(0)[2:].lower().rjust(64, "0"), type_)
    return full.replace(" ", "") == _SUI_COIN


def sui_coins_created(effects: Any, owner: str) -> list[OwnedRef]:
    """The ``Coin<SUI>`` objects the transaction created for ``owner`` (payments it
    received, coins it split off for itself), at their new versions."""
    out = []
    for co in effects.changed_objects if effects is not None else ():
        owner_msg = co.output_owner
        if (
            co.id_operation != sui_prot.ChangedObjectIdOperation.CREATED
            or not _is_sui_coin(str(co.object_type or ""))
            or owner_msg is None
            or owner_msg.kind != sui_prot.OwnerOwnerKind.ADDRESS
            or not owner_msg.address
            or _node_id(owner_msg.address, "owner address") != owner
        ):
            continue
        object_id = _node_id(co.object_id, "created object ID")
        out.append(OwnedRef(object_id, int(co.output_version or 0), str(co.output_digest or "")))
    return out
