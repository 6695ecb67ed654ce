"""The ledger carrier: DTP records through ``pipe::send`` instead of TCP (IP-hiding mode).

Each side owns one Pipe for the connection (``pipe::create``; owned objects, so only the
owner can send on it) and posts its outgoing DTP records as the ``data`` of
``pipe::send`` calls, spread over the Pipe's InnerPipes (least loaded first: fewest
records sent and not yet acknowledged). The other side reads the sender's
``PipeDataSent`` events from a cursor and feeds the payloads to its connection.

The ledger is a lossless, ordered log, but nothing here relies on that: the connection
runs with ``ConnectionConfig(reliable_carrier=False)`` (ACKs, retransmission and
reassembly), and the carrier accepts events in any order, with duplicates and gaps.

Payload framing (docs/protocol.md §7). A DATA record is up to 12 + 16400 bytes while
``pipe::send`` takes at most 16381 (``inner_pipe::EDataTooLarge``; the most one pure
argument of a Sui transaction can carry), so every payload
starts with a one-byte kind:

- ``0x00`` RECORD: the rest is one whole DTP record (at most 16380 bytes).
- ``0x01`` FRAGMENT: ``u32le id || u8 index || u8 count || bytes``; a record too large
  for one payload is cut into ``count`` (2..255) fragments sharing ``id``.

Fragment ids. The receiver joins pieces by (pipe, id), and one pipe can have more than
one writer: a carrier that adopts its side's pipe (``pipe_id=``) while the old one still
posts, or one resumed from a snapshot (``state=``) while the old one lives on, or after
the old one used ids the snapshot does not know of. Each carrier therefore counts its
ids from a random 32-bit start (a resumed one: from the snapshot's ``next_fragment_id``
plus a random jump of 2**20..2**31, so never onto ids the old carrier used in its next
million fragmented records), instead of every carrier from 0: two writers' pieces under
one id would be joined into one garbled record, or one writer's record lost. The
receiver drops, never joins, pieces of an id that turns out to carry two records (a
piece for an index it holds other bytes for): counted in ``fragment_clashes``.
- ``0x02`` SYNC: ``pipe id (32) || u8 n || n × u64le prefix``: the receiver's report that
  it has seen every seq below ``prefix[i]`` of inner ``i`` of that pipe. Only the owner
  may call ``pipe::sync``, so the receiver posts this on *its own* pipe and the owner,
  reading it, calls ``pipe::sync`` on its pipe.

Acknowledgement cadence: a SYNC is posted after ``sync_every`` new data payloads, or
``sync_interval`` seconds after the first unreported one. SYNCs themselves do not count
as data, so two carriers never echo SYNCs back and forth. A gap in an inner's seqs (an
event that never arrives) is given up after ``gap_timeout`` seconds so the prefix can
advance; the connection retransmits whatever the lost payload carried. Every seq missing
below the largest one seen when the gap's timer started goes when it expires, so steady
loss gives up all its gaps, one timer after another, not one gap per timer.

Retention (docs/escrow.md §16, docs/ledger-carrier.md "Retention"): with
``retention_terms`` a side posts its RECORD and FRAGMENT payloads with
``retention::send`` (SYNCs stay plain ``pipe::send``: they are not the connection's
data) and remembers each RetainedRecord; :meth:`LedgerCarrier.reclaim_storage` deletes
those that are consumed and past their retention time, returning the deposits. Every
carrier, option or not, notices the peer's ``RecordRetained`` events addressed to it
and offers each record for confirmation (:meth:`LedgerCarrier.take_confirmations`,
:meth:`LedgerCarrier.confirm_retained`) once its payload is handed on, or given up as
a gap (the connection retransmits its content, so the receiver never needs it again).
:func:`reclaim_retained` (the sender) and :func:`confirm_retained` (the receiver) find
the records of a connection by their events, for later or after a crash.

Backpressure: ``receive(max_bytes=n)`` reads no more pages once it holds ``n`` bytes of
records, and reads pages sized to what is left (at most one payload per
:data:`MAX_PIPE_DATA` bytes, at least :data:`MIN_PAGE` events), so it returns about
``n`` bytes at most (a page of :data:`MIN_PAGE` payloads more, or a record completed
from fragments held, or the payloads kept for a pipe just learnt); the events not read
wait on the ledger. Without it a call read every page the ledger had: the bridge,
which stops reading beyond its buffer's high-water mark, took a whole backlog into
memory in one call as soon as its consumer had taken a byte.

Resuming: :meth:`LedgerCarrier.state` snapshots the cursor, the known peer pipes, the
per-inner seen sets and the peer's retained records still to confirm; a new carrier built
with ``state=`` continues from there, so it does not hand back a payload the old one
already returned after that snapshot, and gives up a gap in the seen sets ``gap_timeout``
after its start. (An older snapshot re-delivers what came later; the connection's replay
window drops those.)

:class:`LedgerLink` drives two connections over two carriers with a virtual clock, like
:class:`dtp.transport.carriers.memory.MemoryLink`.

:class:`LedgerCarrier` holds its options, its snapshot and its closing, and is made of its
parts: ``carrier_fields`` (what a carrier holds, declared once), ``carrier_sending``,
``carrier_receiving``, ``carrier_timers`` (gaps given up, SYNCs and ``pipe::sync``) and
``retention``; ``framing`` holds the payload format, ``lanes`` what the receiver has seen
of one inner pipe.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dtp.errors import ChainError
from dtp.hostid.ledger_carrier.carrier_fields import _check_int as _check_int
from dtp.hostid.ledger_carrier.carrier_fields import _check_number as _check_number
from dtp.hostid.ledger_carrier.carrier_receiving import MAX_CLASHED_IDS as MAX_CLASHED_IDS
from dtp.hostid.ledger_carrier.carrier_receiving import MAX_FOREIGN_PIPES as MAX_FOREIGN_PIPES
from dtp.hostid.ledger_carrier.carrier_receiving import MAX_ORPHAN_BYTES as MAX_ORPHAN_BYTES
from dtp.hostid.ledger_carrier.carrier_receiving import MAX_ORPHAN_EVENTS as MAX_ORPHAN_EVENTS
from dtp.hostid.ledger_carrier.carrier_receiving import MAX_PARTIAL_RECORDS as MAX_PARTIAL_RECORDS
from dtp.hostid.ledger_carrier.carrier_receiving import MIN_PAGE, CarrierReceiving
from dtp.hostid.ledger_carrier.carrier_sending import CarrierClosed
from dtp.hostid.ledger_carrier.framing import (
    _FRAG_HEADER,
    _MAX_FRAGMENTS,
    KIND_FRAGMENT,
    KIND_RECORD,
    KIND_SYNC,
    MAX_PIPE_DATA,
    frame_record,
)
from dtp.hostid.ledger_carrier.framing import MAX_DTP_RECORD as MAX_DTP_RECORD
from dtp.hostid.ledger_carrier.lanes import _Lane
from dtp.hostid.ledger_carrier.retention import MAX_OFFERED_RETAINED as MAX_OFFERED_RETAINED
from dtp.hostid.ledger_carrier.retention import MAX_PENDING_RETAINED as MAX_PENDING_RETAINED
from dtp.hostid.ledger_carrier.retention import confirm_records, confirm_retained, reclaim_retained
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.objects import Event, EventFilter
from dtp.protocol.connection import Connection

__all__ = [
    "KIND_FRAGMENT",
    "KIND_RECORD",
    "KIND_SYNC",
    "MAX_PIPE_DATA",
    "MIN_PAGE",
    "CarrierClosed",
    "CarrierState",
    "LedgerCarrier",
    "LedgerLink",
    "confirm_records",
    "confirm_retained",
    "frame_record",
    "reclaim_retained",
]

#: A resumed carrier's fragment ids start this far (plus a random part below
#: _RESUME_JUMP_SPAN) past its snapshot's ``next_fragment_id``: the old carrier may have
#: used the ids after the snapshot (a stale snapshot, or the old carrier still posting).
_RESUME_JUMP_MIN = 1 << 20
_RESUME_JUMP_SPAN = (1 << 31) - _RESUME_JUMP_MIN


@dataclass
class CarrierState:
    """What a :class:`LedgerCarrier` needs to resume (plain data; copy it anywhere)."""

    pipe_id: str
    cursor: str | None
    peer_pipes: list[str]
    #: peer pipe → per inner (prefix, sorted seqs seen above it)
    lanes: dict[str, list[tuple[int, list[int]]]]
    #: the id the carrier would have given its next fragmented record (a carrier
    #: resumed from this starts a random jump past it: see the module docs)
    next_fragment_id: int = 0
    #: RetainedRecords we sent and have not deleted yet (``retention_terms``)
    retained: list[str] = field(default_factory=list)
    #: the peer's RetainedRecords addressed to us whose payload was not seen yet:
    #: record → (pipe, inner, seq) (their wait for the payload restarts on resuming)
    retained_pending: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    #: the peer's RetainedRecords offered for confirmation and not taken yet
    to_confirm: list[str] = field(default_factory=list)


class LedgerCarrier(CarrierReceiving):
    """One side's ledger carrier for connection ``connection_id`` (see the module docs).

    ``identity`` signs our transactions (it must be a participant of the connection);
    ``peer_address`` is the Sui address whose pipe we read. ``pipe_id`` adopts an existing
    pipe of ours instead of creating one; ``state`` resumes a previous carrier.
    ``retention_terms`` (a RetentionTerms ID of the connection's service) makes our data
    payloads RetainedRecords (see the module docs). ``max_record``: the largest record
    the peer may send; the fragments of one beyond it are dropped as they come (by
    default any record 255 fragments carry).
    """

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        connection_id: str,
        *,
        peer_address: str,
        inner_count: int = 4,
        pipe_id: str | None = None,
        state: CarrierState | None = None,
        sync_every: int = 16,
        sync_interval: float = 1.0,
        gap_timeout: float = 2.0,
        max_payload: int = MAX_PIPE_DATA,
        page_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        retention_terms: str | None = None,
        max_record: int | None = None,
    ) -> None:
        # a wrong type is a TypeError, a value out of range a ValueError (as the
        # messaging options' checks; a bool is no integer or number of seconds here)
        for name, count in (
            ("max_payload", max_payload),
            ("page_size", page_size),
            ("sync_every", sync_every),
        ):
            _check_int(name, count)
        if not 1 + _FRAG_HEADER.size < max_payload <= MAX_PIPE_DATA:
            # (a float passed, and cut a large record into float-sized pieces: TypeError)
            raise ValueError(f"max_payload must be in {_FRAG_HEADER.size + 2}..{MAX_PIPE_DATA}")
        # (a page_size of 0 read no event and never saw the last page: receive() spun
        # forever; a NaN gap_timeout never gave a gap up, so the acks stopped)
        if page_size < 1:
            raise ValueError(f"page_size must be a positive integer, not {page_size!r}")
        if sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, not {sync_every!r}")
        for name, value in (("sync_interval", sync_interval), ("gap_timeout", gap_timeout)):
            _check_number(name, value)
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        self.ledger = ledger
        self.identity = identity
        self.connection_id = connection_id
        self.peer_address = peer_address
        self.sync_every = sync_every
        self.sync_interval = sync_interval
        self.gap_timeout = gap_timeout
        self.max_payload = max_payload
        if max_record is not None:
            # (unchecked, a wrong type failed in receive() at the peer's first fragment,
            # skipping the rest of that page of events)
            _check_int("max_record", max_record)
            if max_record < 1:
                raise ValueError(f"max_record must be a positive integer, not {max_record!r}")
        self.max_record = _MAX_FRAGMENTS * MAX_PIPE_DATA if max_record is None else max_record
        self.page_size = page_size
        self.clock = clock
        self._filter = EventFilter(sender=peer_address)
        self._lanes: dict[str, list[_Lane]] = {}
        self._peer_pipes: list[str] = []
        self.cursor: str | None = None
        # (from 0, two carriers on one pipe gave their records the same ids: see the
        # module docs)
        self._next_fragment_id = secrets.randbits(32)
        self.retention_terms = retention_terms
        #: our RetainedRecords not deleted yet, oldest first
        self.retained: list[str] = []
        # reclaim_storage may run in another thread than send (a bridge's owner)
        self._retained_lock = threading.Lock()
        self.retention_over = False
        # held while posting: send() in one thread and a receive() posting a SYNC (or a
        # second sender) in another lost updates of the sent counts, and two records
        # could take one fragment id
        self._post_lock = threading.RLock()
        if state is not None:
            self.retained = list(state.retained)
            pipe_id = state.pipe_id
            self.cursor = state.cursor
            self._peer_pipes = list(state.peer_pipes)
            self._next_fragment_id = (
                state.next_fragment_id + _RESUME_JUMP_MIN + secrets.randbelow(_RESUME_JUMP_SPAN)
            ) & 0xFFFFFFFF
            restored_at = clock()
            for pid, lanes in state.lanes.items():
                self._lanes[pid] = [_Lane(p, set(above)) for p, above in lanes]
                # (a gap pending in the snapshot has no timer: without one it would never
                # be given up, and the peer's pipe never acknowledged past it)
                for lane in self._lanes[pid]:
                    lane.start_gap_timer(restored_at)
        if pipe_id is None:
            pipe_id = ledger.create_pipe(identity, connection_id, inner_count)
            # made just now, for this connection: every inner pipe's counters are 0. Not
            # read back: a read that failed (the ledger unavailable a moment) left the
            # pipe behind, and the retry made another, the host paying for both
            self._sent = [0] * inner_count
            self._acked = [0] * inner_count
        else:
            pipe = ledger.get_pipe(pipe_id)
            if pipe.connection != connection_id:
                raise ValueError(f"pipe {pipe_id} belongs to connection {pipe.connection}")
            self._sent = [inner.next_seq for inner in pipe.inners]
            self._acked = [inner.acked for inner in pipe.inners]
        self.pipe_id: str = pipe_id
        self._rr = 0
        self._orphans: deque[Event] = deque()
        self._orphan_bytes = 0
        # pipes of the peer's other connections (their PipeCreated named another)
        self._foreign: OrderedDict[str, None] = OrderedDict()
        # (pipe, fragment id) -> (count, pieces by index)
        self._partial: OrderedDict[tuple[str, int], tuple[int, dict[int, bytes]]] = OrderedDict()
        # (pipe, fragment id) found carrying pieces of two records: later pieces dropped
        self._clashed: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._unreported = 0
        self._first_unreported_at: float | None = None
        self._last_reported: dict[str, list[int]] = {}
        # per inner of our pipe: the most the peer reported seeing, for pipe::sync (in
        # poll, not while reading events: a failed call there lost the rest of the batch)
        self._ack_target = list(self._acked)
        # records read by a receive() whose next page the ledger failed: handed back by
        # the next call, since the lanes have seen them
        self._undelivered: list[bytes] = []
        self.peer_closed = False
        self.closed = False
        self._destroyed = False
        # the peer's records addressed to us: waiting for their payload, then to confirm
        # record -> (pipe, inner, seq, when its RecordRetained was seen)
        self._retained_pending: OrderedDict[str, tuple[str, int, int, float]] = OrderedDict()
        self._to_confirm: list[str] = []
        # records offered for confirmation, so that a repeated RetainedRecord event
        # (a batch read again after an outage) offers none twice; the oldest are
        # forgotten past MAX_OFFERED_RETAINED (a set grew for the connection's whole
        # life), and a confirmation repeated that late is skipped (confirm_records)
        self._offered: OrderedDict[str, None] = OrderedDict()
        if state is not None:
            # (not restored, they would never be confirmed: the cursor is past their
            # RecordRetained events, and the sender's deposits would stay)
            for record, (peer_pipe, inner, seq) in state.retained_pending.items():
                self._retained_pending[record] = (str(peer_pipe), int(inner), int(seq), restored_at)
            for record in state.to_confirm:
                self._offer(record)
                self._to_confirm.append(record)
        # statistics
        self.payloads_sent = 0
        self.payloads_received = 0
        self.duplicates = 0
        self.gaps_given_up = 0
        self.syncs_sent = 0
        self.pipe_syncs = 0
        self.fragments_dropped = 0
        #: pieces dropped because their fragment id carried two records (see the module
        #: docs): the piece that showed it, those held with it, and later ones
        self.fragment_clashes = 0
        self.malformed = 0
        self.retained_sent = 0
        self.confirmed = 0
        self.reclaimed = 0

    def state(self) -> CarrierState:
        """A snapshot to resume from (see the module docs)."""
        return CarrierState(
            pipe_id=self.pipe_id,
            cursor=self.cursor,
            peer_pipes=list(self._peer_pipes),
            lanes={
                pid: [(lane.prefix, sorted(lane.above)) for lane in lanes]
                for pid, lanes in self._lanes.items()
            },
            next_fragment_id=self._next_fragment_id,
            retained=list(self.retained),
            retained_pending={
                record: (pipe, inner, seq)
                for record, (pipe, inner, seq, _) in self._retained_pending.items()
            },
            to_confirm=list(self._to_confirm),
        )

    def close(self) -> None:
        """Destroy our pipe (``pipe::destroy``). Idempotent; when the ledger does not
        answer (ChainError ``LedgerUnavailable``) the carrier is closed all the same
        and a later call tries the destroy again."""
        if self._destroyed:
            return
        self.closed = True
        try:
            self.ledger.destroy_pipe(self.identity, self.pipe_id)
        except ChainError as exc:
            if exc.name != "LedgerUnavailable":
                self._destroyed = True  # (refused, not unanswered: trying again won't help)
            raise
        except BaseException:
            self._destroyed = True
            raise
        self._destroyed = True

    @property
    def destroyed(self) -> bool:
        """Whether :meth:`close` is done with our pipe (destroyed, or refused for good)."""
        return self._destroyed


class LedgerLink:
    """Drives connections ``a`` and ``b`` over carriers ``ca`` and ``cb`` (``ca`` posts
    what ``a`` sends and reads what ``b``'s carrier posted) with a virtual clock; the same
    shape as :class:`~dtp.transport.carriers.memory.MemoryLink`."""

    def __init__(
        self,
        a: Connection,
        b: Connection,
        ca: LedgerCarrier,
        cb: LedgerCarrier,
        *,
        now: float = 0.0,
    ) -> None:
        self.a, self.b, self.ca, self.cb = a, b, ca, cb
        self.now = now
        self.delivered_records = 0

    def _pairs(self) -> tuple[tuple[Connection, LedgerCarrier], ...]:
        return ((self.a, self.ca), (self.b, self.cb))

    def pump(self) -> bool:
        """Post what both sides have, then read what both sides received. True if
        anything moved."""
        moved = False
        for conn, carrier in self._pairs():
            records = conn.datagrams_to_send(self.now)
            if records and not carrier.closed:
                carrier.send(records)
                moved = True
        for conn, carrier in self._pairs():
            if carrier.closed:
                continue
            for record in carrier.receive(0.0, now=self.now):
                self.delivered_records += 1
                conn.receive_datagram(record, self.now)
                moved = True
            if carrier.confirm_retained():
                moved = True
        return moved

    def advance(self) -> bool:
        """Jump the clock to the next timer (connections' or carriers') and fire it."""
        timers = [
            t
            for t in (
                self.a.get_timer(),
                self.b.get_timer(),
                self.ca.get_timer(),
                self.cb.get_timer(),
            )
            if t is not None
        ]
        if not timers:
            return False
        self.now = max(self.now, min(timers))
        for conn, carrier in self._pairs():
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
            ctimer = carrier.get_timer()
            if ctimer is not None and ctimer <= self.now and not carrier.closed:
                carrier.poll(self.now)
        return True

    def run(
        self,
        until: Callable[[], bool] | None = None,
        *,
        max_rounds: int = 100_000,
        max_time: float = 120.0,
        on_round: Callable[[], None] | None = None,
    ) -> bool:
        """Pump, advancing virtual time when idle, until ``until()`` holds, both sides are
        quiet, or a limit is hit (see :meth:`MemoryLink.run`)."""
        start = self.now
        for _ in range(max_rounds):
            if on_round is not None:
                on_round()
            if until is not None and until():
                return True
            if self.pump():
                continue
            if until is None:
                return True
            if self.now - start > max_time or not self.advance():
                return until()
        return until() if until is not None else False
