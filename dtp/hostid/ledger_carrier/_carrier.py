"""The ledger carrier: DTP records through ``pipe::send`` instead of TCP (IP-hiding mode).

Each side owns one Pipe (only the owner can send on it) and posts its DTP records as
``pipe::send`` data over the Pipe's InnerPipes, least loaded first; the other side reads
the ``PipeDataSent`` events from a cursor. Nothing relies on the ledger's order or
losslessness: the connection runs with ``reliable_carrier=False`` and events are taken in
any order, with duplicates and gaps.

The payloads (RECORD, FRAGMENT, SYNC), the SYNC cadence, gaps given up and resuming are
docs/protocol.md §7; fragment ids (a random start per carrier: one pipe may have two
writers) and backpressure (``receive(max_bytes=n)``: pages sized to the room, so the
bridge never takes a whole backlog at once) are docs/ledger-carrier.md.

Retention (docs/escrow.md §16, docs/ledger-carrier.md "Retention"): with
``retention_terms`` the data payloads go by ``retention::send`` and
:meth:`LedgerCarrier.reclaim_storage` deletes the RetainedRecords once consumed and past
their time; every carrier offers the peer's records for confirmation
(:meth:`LedgerCarrier.take_confirmations`) once handed on or given up as a gap.
:func:`reclaim_retained` and :func:`confirm_retained` find a connection's records by
their events, after a crash too.

:class:`LedgerLink` drives two connections over two carriers with a virtual clock.
``framing`` holds the payload format, ``lanes`` what the receiver has seen of one inner
pipe, ``retention`` the ledger calls on retained records without a carrier.
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dtp.errors import ChainError, ConnectionClosed, ConnectionStateError, PipeError
from dtp.hostid.ledger_carrier._framing import (
    _FRAG_HEADER,
    _MAX_FRAGMENTS,
    KIND_FRAGMENT,
    KIND_RECORD,
    KIND_SYNC,
    MAX_PIPE_DATA,
    frame_record,
)
from dtp.hostid.ledger_carrier._framing import MAX_DTP_RECORD as MAX_DTP_RECORD
from dtp.hostid.ledger_carrier._lanes import _Lane
from dtp.hostid.ledger_carrier._retention import (
    confirm_records,
    confirm_retained,
    reclaim_records,
    reclaim_retained,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Event, EventFilter
from dtp.ledger.interface import Ledger
from dtp.ledger.receipt import object_id_bytes
from dtp.protocol._buffers import bytes_like
from dtp.protocol.connection import Connection
from dtp.transport.carriers._memory import VirtualLink

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

#: Incomplete fragmented records kept at once (the oldest is dropped beyond this).
MAX_PARTIAL_RECORDS = 64
#: Fragment ids found carrying two records remembered (their later pieces are dropped).
MAX_CLASHED_IDS = 64
#: The smallest page ``receive(max_bytes=...)`` reads (events), however little room is
#: left: pages of one event made a reader whose peer is a busy host (most events other
#: connections') read the ledger once per event.
MIN_PAGE = 8
#: PipeDataSent events of not-yet-known pipes kept in case their PipeCreated comes later
#: (at most this many, and this many bytes of payload).
MAX_ORPHAN_EVENTS = 1024
MAX_ORPHAN_BYTES = 1 << 20
#: Pipes of the peer's other connections remembered (their data events are skipped).
MAX_FOREIGN_PIPES = 4096
#: The peer's RecordRetained events whose payload was not seen yet, kept at once.
MAX_PENDING_RETAINED = 65_536
#: Records offered for confirmation that a carrier remembers (the newest), to skip a
#: repeated RetainedRecord event.
MAX_OFFERED_RETAINED = 65_536


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


class CarrierClosed(ConnectionClosed, RuntimeError):
    """A send on a carrier that was closed (:meth:`LedgerCarrier.close`): a
    :class:`~dtp.errors.ConnectionClosed`, as a write on a closed connection raises, and
    a RuntimeError too, for callers that catch that."""


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


class LedgerCarrier:
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
            # (checked here: a wrong type must fail now, not in receive() at the peer's
            # first fragment, where it would skip the rest of that page of events)
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
        # second sender) in another must not lose updates of the sent counts, nor give
        # two records one fragment id
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
        # records offered for confirmation (a repeated event offers none twice), the
        # oldest forgotten past MAX_OFFERED_RETAINED
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

    # -- sending: records framed into payloads, posted on the least loaded inner -----------

    @property
    def inner_count(self) -> int:
        """How many inner pipes our pipe has."""
        return len(self._sent)

    def in_flight(self) -> list[int]:
        """Per inner of our pipe: payloads sent and not yet acknowledged by the peer."""
        return [s - a for s, a in zip(self._sent, self._acked, strict=True)]

    def _pick_inner(self) -> int:
        loads = self.in_flight()
        best = min(loads)
        n = len(loads)
        for step in range(n):
            i = (self._rr + step) % n
            if loads[i] == best:
                self._rr = (i + 1) % n
                return i
        raise AssertionError("unreachable")

    def _post(self, payload: bytes, *, data: bool = False) -> None:
        with self._post_lock:
            inner = self._pick_inner()
            if data and self.retention_terms is not None and not self.retention_over:
                try:
                    record = self.ledger.send_retained(
                        self.identity, self.pipe_id, self.retention_terms, inner, payload
                    )
                except ConnectionStateError as exc:
                    if exc.name != "EConnectionNotOpen":
                        raise
                    # closed on the ledger (a half-close, a settlement): records are
                    # kept only on an Open connection (docs/escrow.md §16), but the
                    # last payloads (a CLOSE) still go, plainly, as SYNCs do
                    self.retention_over = True
                else:
                    with self._retained_lock:
                        self.retained.append(record)
                    self.retained_sent += 1
                    # we own the pipe: retention::send took the inner's next seq
                    self._sent[inner] += 1
                    self.payloads_sent += 1
                    return
            seq = self.ledger.pipe_send(self.identity, self.pipe_id, inner, payload)
            self._sent[inner] = max(self._sent[inner], seq + 1)
            self.payloads_sent += 1

    def send(self, records: Sequence[bytes]) -> None:
        """Post whole DTP records (each as one payload, or fragments when too large).
        Ledger errors propagate: nothing is dropped silently. Safe to call from another
        thread than :meth:`receive`. A record that is not bytes-like (TypeError) or
        needs more than 255 fragments (ValueError) refuses the call, nothing posted."""
        if self.closed:
            raise CarrierClosed("the carrier is closed")
        # checked before anything is posted: bytes passed as the list posted one
        # zero-filled "record" per byte (``bytes(97)``), a transaction each, and an int
        # record as many zero bytes
        if isinstance(records, bytes | bytearray | memoryview | str):
            raise TypeError(
                f"records must be a sequence of byte strings, not {type(records).__name__}"
            )
        # (any buffer, as a socket takes: an array.array record too)
        whole = [bytes_like(record) for record in records]
        with self._post_lock:
            # all framed first: a record too large for 255 fragments is refused before
            # any record ahead of it is posted
            fid = self._next_fragment_id
            framed: list[list[bytes]] = []
            for record in whole:
                framed.append(frame_record(record, fid, self.max_payload))
                if len(framed[-1]) > 1:
                    fid = (fid + 1) & 0xFFFFFFFF
            self._next_fragment_id = fid
            for payloads in framed:
                for payload in payloads:
                    self._post(payload, data=True)

    # -- timers: SYNCs posted, gaps given up, our pipe synced ------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`poll` has something to do next (None: nothing pending)."""
        if self.closed:
            return None
        times = [
            lane.gap_since + self.gap_timeout
            for lanes in self._lanes.values()
            for lane in lanes
            if lane.gap_since is not None
        ]
        if self._first_unreported_at is not None:
            times.append(self._first_unreported_at + self.sync_interval)
        if self._retained_pending:
            oldest = next(iter(self._retained_pending.values()))
            times.append(oldest[3] + self.gap_timeout)
        return min(times) if times else None

    def poll(self, now: float | None = None) -> None:
        """Give up expired gaps, ``pipe::sync`` what the peer acknowledged and post a
        SYNC when one is due (no ledger reads). A ledger error leaves both due."""
        now = self.clock() if now is None else now
        for lanes in self._lanes.values():
            for lane in lanes:
                if lane.gap_since is not None and now >= lane.gap_since + self.gap_timeout:
                    self.gaps_given_up += lane.give_up_gap(now)
                    self._note_data(now)
        if self._retained_pending:
            self._settle_retained(now)
        if self.closed:
            return
        self._sync_pipe()
        due = self._unreported >= self.sync_every or (
            self._first_unreported_at is not None
            and now >= self._first_unreported_at + self.sync_interval
        )
        if due:
            self._report()

    def _note_data(self, now: float) -> None:
        self._unreported += 1
        if self._first_unreported_at is None:
            self._first_unreported_at = now

    def _report(self) -> None:
        for pid, lanes in self._lanes.items():
            prefixes = [lane.prefix for lane in lanes]
            # (a pipe with nothing seen has nothing to acknowledge: a SYNC, a transaction
            # of ours, went to each idle pipe the peer created)
            if self._last_reported.get(pid, [0] * len(prefixes)) == prefixes:
                continue
            payload = (
                bytes([KIND_SYNC])
                + object_id_bytes(pid)
                + bytes([len(prefixes)])
                + struct.pack(f"<{len(prefixes)}Q", *prefixes)
            )
            self._post(payload)
            self._last_reported[pid] = prefixes
            self.syncs_sent += 1
        # (only now: a SYNC the ledger did not take is due again at the next poll)
        self._unreported = 0
        self._first_unreported_at = None

    def _sync_pipe(self) -> None:
        """``pipe::sync`` the inners the peer reported more of. A call the ledger did
        not answer leaves its target, so a later poll tries again."""
        for inner, acked in enumerate(self._ack_target):
            if acked <= self._acked[inner]:
                continue
            try:
                self.ledger.pipe_sync(self.identity, self.pipe_id, inner, acked)
            except PipeError:
                # another carrier on this pipe (an adopted pipe) moved it: re-read it
                lane = self.ledger.get_pipe(self.pipe_id).inners[inner]
                with self._post_lock:  # (a send in another thread moves _sent too)
                    self._sent[inner] = max(self._sent[inner], lane.next_seq)
                self._acked[inner] = max(self._acked[inner], lane.acked)
                # (refused, not unanswered: not tried again at every poll)
                self._ack_target[inner] = self._acked[inner]
                continue
            self._acked[inner] = acked
            self.pipe_syncs += 1

    # -- receiving: the peer's pipes learnt, its payloads joined into records, its SYNCs ---

    @property
    def peer_pipes(self) -> tuple[str, ...]:
        """The peer's pipes for this connection, as discovered so far."""
        return tuple(self._peer_pipes)

    def receive(
        self, timeout: float = 0.0, now: float | None = None, *, max_bytes: int | None = None
    ) -> list[bytes]:
        """DTP records the peer posted since the last call, waiting up to ``timeout``
        for the first (the peer destroying its pipe ends the wait too); posts our SYNC
        and calls ``pipe::sync`` as due. ``max_bytes``: stop reading near that many
        bytes (about :data:`MIN_PAGE` payloads more), the rest left on the ledger.

        Ledger errors propagate, but nothing read is lost: it is handed back by the
        next call, and a failed SYNC or ``pipe::sync`` stays due."""
        if max_bytes is not None:
            _check_int("max_bytes", max_bytes)
            if max_bytes < 1:
                raise ValueError(f"max_bytes must be a positive integer or None, not {max_bytes!r}")
        # (checked before the records held back are taken: the lanes have seen them,
        # so a bad timeout failing after would lose them for good)
        _check_number("timeout", timeout)
        given_now = now
        now = self.clock() if now is None else now
        out, self._undelivered = self._undelivered, []
        held = sum(map(len, out))
        # waiting (records to hand back: none): until a record comes or the timeout
        # passes. (Only the first read waited: the peer's SYNC, or its other
        # connections' events, ended the wait with nothing, the record a moment later.)
        deadline = time.monotonic() + timeout if timeout > 0 and not out else None
        try:
            while max_bytes is None or held < max_bytes:
                limit = self.page_size
                if max_bytes is not None:
                    # a payload yields at most MAX_PIPE_DATA bytes of records (or
                    # completes one held in pieces): read no more than the room takes
                    room = (max_bytes - held) // MAX_PIPE_DATA
                    limit = min(self.page_size, max(MIN_PAGE, room))
                wait = 0.0 if deadline is None or out else deadline - time.monotonic()
                if wait > 0:
                    events, cursor = self.ledger.wait_events(self.cursor, wait, self._filter, limit)
                    if given_now is None:
                        now = self.clock()  # (what came, came now: not when the wait began)
                else:
                    events, cursor = self.ledger.events(self.cursor, self._filter, limit)
                self.cursor = cursor
                start = len(out)
                # pipes first: a batch may come reordered, data before its PipeCreated
                for event in sorted(events, key=lambda e: e.name != "PipeCreated"):
                    self._on_event(event, now, out)
                held += sum(len(record) for record in out[start:])
                # (the peer destroyed its pipe: nothing more is coming, so the wait ends
                # here rather than going on past record-less events; a caller reading
                # until peer_closed would sit out its whole timeout)
                if len(events) < limit and (
                    out or deadline is None or self.peer_closed or time.monotonic() >= deadline
                ):
                    break
        except BaseException:
            # the lanes have seen these: dropped here, they were never handed back
            self._undelivered = out
            raise
        try:
            self.poll(now)
        except ChainError:
            # (the records read are handed back first: raised with them, a ledger that
            # takes reads but no transaction would lose every one.) The SYNC or
            # pipe::sync stays due: the next call with nothing to hand back raises
            if not out:
                raise
        return out

    def _on_event(self, event: Event, now: float, out: list[bytes]) -> None:
        name = event.name
        fields = event.fields
        if name == "PipeCreated":
            pipe = fields["pipe"]
            if (
                fields.get("connection") == self.connection_id
                and fields.get("owner") == self.peer_address
                and pipe not in self._peer_pipes
            ):
                self._learn_pipe(pipe, int(fields["inners"]), now, out)
            elif pipe not in self._peer_pipes:
                self._note_foreign(pipe)
        elif name == "PipeDestroyed":
            if fields.get("pipe") in self._peer_pipes:
                self.peer_closed = True
        elif name == "RecordRetained":
            self._on_retained(fields, now)
        elif name == "PipeDataSent":
            pipe = fields.get("pipe", "")
            lanes = self._lanes.get(pipe)
            inner = int(fields.get("inner", -1))
            if lanes is None:
                self._keep_orphan(event)
                return
            if not 0 <= inner < len(lanes):
                return
            lane = lanes[inner]
            if not lane.see(int(fields["seq"]), now):
                self.duplicates += 1
                return
            self.payloads_received += 1
            self._on_payload(fields["pipe"], bytes(fields["data"]), now, out)

    def _learn_pipe(self, pipe: str, inners: int, now: float, out: list[bytes]) -> None:
        """A pipe of the peer's for this connection: read from now on, with the data
        events that came before we knew it."""
        self._peer_pipes.append(pipe)
        self._lanes[pipe] = [_Lane() for _ in range(inners)]
        orphans = [e for e in self._orphans if e.fields.get("pipe") == pipe]
        if orphans:
            self._orphans = deque(e for e in self._orphans if e.fields.get("pipe") != pipe)
            self._orphan_bytes -= sum(len(e.fields.get("data", b"")) for e in orphans)
            for orphan in orphans:
                self._on_event(orphan, now, out)

    def _note_foreign(self, pipe: str) -> None:
        self._foreign[pipe] = None
        self._foreign.move_to_end(pipe)
        while len(self._foreign) > MAX_FOREIGN_PIPES:
            self._foreign.popitem(last=False)

    def _keep_orphan(self, event: Event) -> None:
        """A data event of a pipe we do not know (most are the peer's other
        connections'): skipped when its PipeCreated named another connection, else kept
        for a PipeCreated that comes later, within MAX_ORPHAN_EVENTS and
        MAX_ORPHAN_BYTES (by count alone: 16 MiB per connection)."""
        pipe = event.fields.get("pipe", "")
        if pipe in self._foreign:
            return
        self._orphans.append(event)
        self._orphan_bytes += len(event.fields.get("data", b""))
        while len(self._orphans) > MAX_ORPHAN_EVENTS or self._orphan_bytes > MAX_ORPHAN_BYTES:
            dropped = self._orphans.popleft()
            self._orphan_bytes -= len(dropped.fields.get("data", b""))

    def _on_payload(self, pipe: str, payload: bytes, now: float, out: list[bytes]) -> None:
        if not payload:
            self.malformed += 1
            return
        kind = payload[0]
        if kind == KIND_RECORD:
            self._note_data(now)
            out.append(payload[1:])
        elif kind == KIND_FRAGMENT and len(payload) > _FRAG_HEADER.size:
            self._note_data(now)
            _, fid, index, count = _FRAG_HEADER.unpack_from(payload)
            if not index < count:
                self.malformed += 1
                return
            key = (pipe, fid)
            if key in self._clashed:
                self.fragment_clashes += 1
                return
            count_seen, parts = self._partial.setdefault(key, (count, {}))
            if count_seen != count:
                # pieces of one id that disagree on their count are no record: without
                # this check a piece could be missing when the count is reached
                del self._partial[key]
                self.malformed += 1
                return
            piece = payload[_FRAG_HEADER.size :]
            if parts.get(index, piece) != piece:
                # two records under one id (two writers on the pipe, e.g. an older peer
                # whose carriers all counted from 0): joined, their pieces made one
                # garbled record; dropped now, and the id's later pieces with them
                del self._partial[key]
                self.fragment_clashes += 1 + len(parts)
                self._clashed[key] = None
                while len(self._clashed) > MAX_CLASHED_IDS:
                    self._clashed.popitem(last=False)
                return
            parts[index] = piece
            if sum(map(len, parts.values())) > self.max_record:
                # (kept, a peer posting 255 full pieces under each of 64 ids held 267 MB
                # of a bridge's, whose records are at most 16 KiB: 1 MiB now)
                del self._partial[key]
                self.malformed += 1
                return
            if len(parts) == count:
                del self._partial[key]
                out.append(b"".join(parts[i] for i in range(count)))
            while len(self._partial) > MAX_PARTIAL_RECORDS:
                self._partial.popitem(last=False)
                self.fragments_dropped += 1
        elif kind == KIND_SYNC and len(payload) >= 34:
            self._on_sync(payload)
        else:
            self.malformed += 1

    def _on_sync(self, payload: bytes) -> None:
        if self.closed or payload[1:33] != object_id_bytes(self.pipe_id):
            return  # closed: our pipe is gone, nothing to sync (a lingering read)
        n = payload[33]
        if len(payload) < 34 + 8 * n:
            return
        prefixes = struct.unpack_from(f"<{n}Q", payload, 34)
        for inner, seen in enumerate(prefixes[: self.inner_count]):
            # (capped now: a report of more than we had sent acknowledges nothing later)
            self._ack_target[inner] = max(self._ack_target[inner], min(seen, self._sent[inner]))

    # -- retained records: ours to reclaim, the peer's to confirm (docs/escrow.md §16) -----

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
        refunded, kept = reclaim_records(self.ledger, self.identity, records, now_ms)
        gone = set(records).difference(kept)
        with self._retained_lock:
            # only what went is removed: records sent while the reclaim ran stay
            # retained, whether or not another reclaim overlaps this one
            self.retained = [record for record in self.retained if record not in gone]
            self.reclaimed += refunded
        return refunded


class LedgerLink(VirtualLink):
    """Drives connections ``a`` and ``b`` over carriers ``ca`` and ``cb`` (``ca`` posts
    what ``a`` sends and reads what ``b``'s carrier posted) with a virtual clock, as
    :class:`~dtp.transport.carriers._memory.MemoryLink` does."""

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
