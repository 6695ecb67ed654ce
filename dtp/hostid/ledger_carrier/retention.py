"""Retained records on the ledger carrier (docs/escrow.md §16, docs/ledger-carrier.md
"Retention"): a carrier's own records reclaimed, the peer's confirmed
(:class:`CarrierRetention`), and the same found by their events, without a carrier
(:func:`confirm_retained`, :func:`reclaim_retained`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dtp.errors import ObjectNotFound, PaymentModelError
from dtp.hostid.ledger_carrier.carrier_fields import CarrierFields
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.objects import EventFilter

#: The peer's RecordRetained events whose payload was not seen yet, kept at once.
MAX_PENDING_RETAINED = 65_536
#: Records offered for confirmation that a carrier remembers (the newest), to skip a
#: repeated RetainedRecord event.
MAX_OFFERED_RETAINED = 65_536


class CarrierRetention(CarrierFields):
    """The retained records of :class:`~dtp.hostid.ledger_carrier.carrier.LedgerCarrier`:
    ours to reclaim, and the peer's to confirm."""

    def _on_retained(self, fields: Mapping[str, Any], now: float) -> None:
        record = str(fields.get("record", ""))
        if (
            fields.get("receiver") != self.identity.sui_address
            or fields.get("connection") != self.connection_id
            or record in self._offered
            or record in self._retained_pending
        ):
            return
        where = (str(fields.get("pipe", "")), int(fields["inner"]), int(fields["seq"]), now)
        self._retained_pending[record] = where
        while len(self._retained_pending) > MAX_PENDING_RETAINED:
            self._retained_pending.popitem(last=False)

    def _settle_retained(self, now: float) -> None:
        """Offer the pending records whose payload the lanes have passed, or whose data
        event did not come within ``gap_timeout`` of their RecordRetained (both come from
        one transaction, so it is lost to us: given up like a gap)."""
        done: list[str] = []
        for record, (pipe, inner, seq, since) in self._retained_pending.items():
            lanes = self._lanes.get(pipe)
            if now >= since + self.gap_timeout:
                done.append(record)
                continue
            if lanes is None or not 0 <= inner < len(lanes):
                continue
            lane = lanes[inner]
            if seq < lane.prefix or seq in lane.above:
                done.append(record)
        for record in done:
            del self._retained_pending[record]
            self._offer(record)
            self._to_confirm.append(record)

    def _offer(self, record: str) -> None:
        self._offered[record] = None
        while len(self._offered) > MAX_OFFERED_RETAINED:
            self._offered.popitem(last=False)

    @property
    def peer_retains(self) -> bool:
        """Whether the peer sent us retained records on this connection."""
        return bool(self._offered or self._retained_pending)

    def give_up_retained(self) -> None:
        """Offer every pending record for confirmation now, its data seen or not (the
        connection is over: we will never need it)."""
        self._to_confirm += self._retained_pending
        for record in self._retained_pending:
            self._offer(record)
        self._retained_pending.clear()

    def take_confirmations(self) -> list[str]:
        """The peer's RetainedRecords (addressed to us) whose payload we handed on or
        gave up since the last call; each record is offered once, however many times
        its events arrive."""
        out, self._to_confirm = self._to_confirm, []
        return out

    def confirm_retained(self) -> int:
        """Confirm what :meth:`take_confirmations` gives, here and now (ledger calls);
        returns how many were confirmed."""
        n = confirm_records(self.ledger, self.identity, self.take_confirmations())
        self.confirmed += n
        return n

    def reclaim_storage(self, now_ms: int | None = None) -> int:
        """Delete our RetainedRecords that are consumed and past their retention time,
        or unconfirmed and past twice it (at ledger time ``now_ms``, default the
        ledger's clock); returns the MIST refunded. Records not deletable yet stay for
        a later call."""
        now_ms = self.ledger.clock_ms() if now_ms is None else now_ms
        with self._retained_lock:
            records = list(self.retained)
        refunded, kept = _reclaim(self.ledger, self.identity, records, now_ms)
        gone = set(records).difference(kept)
        with self._retained_lock:
            # only what went: spliced as ``kept`` and what followed ``records``, two
            # reclaims overlapping a send dropped the records sent meanwhile, never
            # reclaimed then (the later one's ``records`` were not a prefix any more)
            self.retained = [record for record in self.retained if record not in gone]
            self.reclaimed += refunded
        return refunded


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


def _reclaim(
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
    return _reclaim(ledger, identity, records, now_ms)[0]
