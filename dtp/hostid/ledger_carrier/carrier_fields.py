"""What one ledger carrier holds (:class:`CarrierFields`), declared once for every part of
:class:`~dtp.hostid.ledger_carrier.carrier.LedgerCarrier`, and the type checks of the
values its options and calls are given."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable

from dtp.hostid.ledger_carrier.lanes import _Lane
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.objects import Event, EventFilter


def _check_int(name: str, value: object) -> None:
    """TypeError unless ``value`` is an integer (a bool is none here: True passed as 1),
    the carrier options' type check (their range is a ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__!r}")


def _check_number(name: str, value: object) -> None:
    """TypeError unless ``value`` is a number of seconds (a bool is none here), the
    carrier options' type check (their range is a ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__!r}")


class CarrierFields:
    """The state of one :class:`~dtp.hostid.ledger_carrier.carrier.LedgerCarrier`."""

    # what it was given (see LedgerCarrier)
    ledger: Ledger
    identity: HostIdentity
    connection_id: str
    peer_address: str
    sync_every: int
    sync_interval: float
    gap_timeout: float
    max_payload: int
    max_record: int
    page_size: int
    clock: Callable[[], float]
    retention_terms: str | None
    pipe_id: str
    """Our pipe for the connection."""
    # sending
    _sent: list[int]
    """Per inner of our pipe: the seqs taken (its next seq)."""
    _acked: list[int]
    """Per inner of our pipe: the seqs ``pipe::sync`` acknowledged."""
    _rr: int
    """Where the least-loaded inner is looked for first (round robin among equals)."""
    _next_fragment_id: int
    _post_lock: threading.RLock
    # receiving
    _filter: EventFilter
    cursor: str | None
    """The position in the ledger's events the next read starts from."""
    _peer_pipes: list[str]
    _lanes: dict[str, list[_Lane]]
    """Per peer pipe, per inner: what was seen of it."""
    _orphans: deque[Event]
    _orphan_bytes: int
    _foreign: OrderedDict[str, None]
    _partial: OrderedDict[tuple[str, int], tuple[int, dict[int, bytes]]]
    _clashed: OrderedDict[tuple[str, int], None]
    _undelivered: list[bytes]
    # acknowledgements
    _unreported: int
    """Data payloads seen since our last SYNC."""
    _first_unreported_at: float | None
    _last_reported: dict[str, list[int]]
    _ack_target: list[int]
    # retention
    retained: list[str]
    """Our RetainedRecords not deleted yet, oldest first."""
    retention_over: bool
    """The connection is no longer Open on the ledger, where records are kept: data
    payloads go as plain ``pipe::send`` from then on (docs/escrow.md §16)."""
    _retained_lock: threading.Lock
    _retained_pending: OrderedDict[str, tuple[str, int, int, float]]
    _to_confirm: list[str]
    _offered: OrderedDict[str, None]
    # closing
    peer_closed: bool
    """The peer destroyed its pipe."""
    closed: bool
    _destroyed: bool
    # statistics
    payloads_sent: int
    payloads_received: int
    duplicates: int
    gaps_given_up: int
    syncs_sent: int
    pipe_syncs: int
    fragments_dropped: int
    fragment_clashes: int
    malformed: int
    retained_sent: int
    confirmed: int
    reclaimed: int
