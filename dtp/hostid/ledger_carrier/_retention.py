"""Retained records on the ledger carrier (docs/escrow.md §16, docs/ledger-carrier.md
"Retention"): records confirmed (:func:`confirm_records`) and reclaimed
(:func:`reclaim_records`), as a carrier does with its own
(:meth:`~dtp.hostid.ledger_carrier._carrier.LedgerCarrier.confirm_retained`,
:meth:`~dtp.hostid.ledger_carrier._carrier.LedgerCarrier.reclaim_storage`), and the same
found by their events, without a carrier (:func:`confirm_retained`,
:func:`reclaim_retained`)."""

from __future__ import annotations

from collections.abc import Sequence

from dtp.errors import ObjectNotFound, PaymentModelError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter
from dtp.ledger.interface import Ledger


def confirm_records(ledger: Ledger, identity: HostIdentity, records: Sequence[str]) -> int:
    """Confirm consumption (``retention::confirm``) of ``records`` as their receiver
    ``identity``; returns how many this call confirmed. Records already confirmed or
    deleted are skipped, so repeating a confirmation (a resumed carrier) never fails."""
    n = 0
    for record in records:
        try:
            ledger.confirm_consumed(identity, record)
        except ObjectNotFound:
            continue
        except PaymentModelError as exc:
            if exc.name != "EAlreadyConsumed":
                raise
            continue
        n += 1
    return n


def confirm_retained(
    ledger: Ledger, identity: HostIdentity, connection_id: str, *, page_size: int = 1000
) -> int:
    """Confirm every RetainedRecord on ``connection_id`` addressed to ``identity`` that
    is not confirmed yet, found by their ``RecordRetained`` events: a receiver whose
    carrier ended early (a crash) lets the senders reclaim. Returns how many."""
    flt = EventFilter(type="RecordRetained", object_id=identity.sui_address)
    records: list[str] = []
    cursor: str | None = None
    while True:
        events, cursor = ledger.events(cursor, flt, page_size)
        records += [
            str(e["record"])
            for e in events
            if e["connection"] == connection_id and e["receiver"] == identity.sui_address
        ]
        if len(events) < page_size:
            break
    return confirm_records(ledger, identity, records)


def reclaim_records(
    ledger: Ledger, identity: HostIdentity, records: Sequence[str], now_ms: int
) -> tuple[int, list[str]]:
    """Delete the deletable ``records`` of ``identity``: (MIST refunded, records kept)."""
    refunded = 0
    kept: list[str] = []
    for record in records:
        try:
            info = ledger.get_retained_record(record)
        except ObjectNotFound:
            continue  # deleted already
        # confirmed and past its retention time, or unconfirmed and past twice that
        if not info.deletable_at(now_ms):
            kept.append(record)
            continue
        try:
            refunded += ledger.delete_retained(identity, record)
        except ObjectNotFound:
            continue  # deleted meanwhile (another reclaim of the same records)
    return refunded, kept


def reclaim_retained(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    *,
    now_ms: int | None = None,
    page_size: int = 1000,
) -> int:
    """Delete every RetainedRecord ``identity`` sent on ``connection_id`` that is
    consumed and past its retention time, or unconfirmed and past twice it, finding them
    by their ``RecordRetained`` events (no carrier needed: after a close, a crash, or
    from another process). Returns the MIST refunded; records not deletable yet stay."""
    flt = EventFilter(type="RecordRetained", sender=identity.sui_address)
    records: list[str] = []
    cursor: str | None = None
    while True:
        events, cursor = ledger.events(cursor, flt, page_size)
        records += [str(e["record"]) for e in events if e["connection"] == connection_id]
        if len(events) < page_size:
            break
    now_ms = ledger.clock_ms() if now_ms is None else now_ms
    return reclaim_records(ledger, identity, records, now_ms)[0]
