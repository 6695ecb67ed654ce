"""Reading a ledger carrier's events (:class:`CarrierReceiving`): the peer's pipes
learnt, its payloads joined into records (fragments, duplicates, orphans), and its
SYNCs taken as acknowledgements."""

from __future__ import annotations

import struct
import time
from collections import deque

from dtp.errors import ChainError
from dtp.hostid.ledger_carrier.carrier_fields import _check_int, _check_number
from dtp.hostid.ledger_carrier.carrier_timers import CarrierTimers
from dtp.hostid.ledger_carrier.framing import (
    _FRAG_HEADER,
    KIND_FRAGMENT,
    KIND_RECORD,
    KIND_SYNC,
    MAX_PIPE_DATA,
)
from dtp.hostid.ledger_carrier.lanes import _Lane
from dtp.ledger.objects import Event
from dtp.ledger.receipt import object_id_bytes

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


class CarrierReceiving(CarrierTimers):
    """The receiving side of :class:`~dtp.hostid.ledger_carrier.carrier.LedgerCarrier`."""

    @property
    def peer_pipes(self) -> tuple[str, ...]:
        """The peer's pipes for this connection, as discovered so far."""
        return tuple(self._peer_pipes)

    def receive(
        self, timeout: float = 0.0, now: float | None = None, *, max_bytes: int | None = None
    ) -> list[bytes]:
        """DTP records the peer posted since the last call (waiting up to ``timeout``
        seconds for the first: events that carry none, such as the peer's SYNC, do not
        end the wait, the peer destroying its pipe does). Also posts our SYNC and calls
        ``pipe::sync`` as due.

        ``max_bytes`` (a consumer's room, e.g. the bridge's buffer below its high-water
        mark): stop reading once the records read come to that many bytes, leaving the
        rest on the ledger for a later call; the records returned may exceed it by
        about :data:`MIN_PAGE` payloads (see the module docs). None: read every page
        the ledger has.

        Ledger errors propagate, but nothing read is lost: records read before a failed
        read are handed back by the next call, and when a SYNC or ``pipe::sync`` fails
        after records were read, the records are returned and the failed call, still
        due, is tried (and raises) again later."""
        if max_bytes is not None:
            _check_int("max_bytes", max_bytes)
            if max_bytes < 1:
                raise ValueError(f"max_bytes must be a positive integer or None, not {max_bytes!r}")
        # (checked before the records held back are taken: a timeout that failed its
        # comparison lost them, and the lanes have seen them, so they never came again)
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
            # (raised, the records read went with it: a ledger that took reads but no
            # transaction lost every one.) The SYNC or pipe::sync stays due: the next
            # call with nothing to hand back raises
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
        """A data event of a pipe we do not know. The peer's other connections share its
        sender address, so most are theirs: a pipe whose PipeCreated named another
        connection is skipped, and the others are kept (in case their PipeCreated comes
        later, on a ledger that reorders) within MAX_ORPHAN_EVENTS and
        MAX_ORPHAN_BYTES, oldest dropped first. Kept by count alone, a client of a busy
        host held up to 1024 payloads of other connections, 16 MiB, per connection."""
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
