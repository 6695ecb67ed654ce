"""The record layer of a connection (:class:`RecordLayer`): control frames, receipts and
datagrams queued, packed with stream data into records and sealed in batches under the
send counter; and, on lossy carriers, what acknowledgements and losses do to them
(:mod:`dtp.protocol._recovery` tells which records were acknowledged or lost).

An object the connection holds (``Connection.records``) that imports nothing of
:mod:`~dtp.protocol.connection._core` and calls no method of the connection: it works on
the stream table it is given, and what the connection must do after it acted it reads
from the return values (tests/protocol/test_connection_parts.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.native import core as _core
from dtp.native._datagrams import encode_datagram_run
from dtp.native.reference._varint import varint_encode
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PADDING,
    FRAME_PING,
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)
from dtp.protocol._buffers import bytes_like
from dtp.protocol._recovery import MAX_PTO_COUNT, AckTracker, LossRecovery, SentRecord
from dtp.protocol._state import ControlKind, RecvState, SendState
from dtp.protocol.connection._config import (
    DATAGRAM_SEND_BACKLOG,
    MAX_RECEIPT,
    MAX_RECORD_PLAINTEXT,
    MAX_STREAM_FRAME_OVERHEAD,
    VARINT_MAX,
    ConnectionConfig,
)
from dtp.protocol.connection._stream_table import Stream, StreamTable, own_ranges


class _StreamChunk(NamedTuple):
    """Stream bytes a record carried (sent again from the stream's buffer if lost)."""

    stream_id: int
    offset: int
    length: int
    fin: bool


class _ResendFrame(NamedTuple):
    """A control frame sent again as it was."""

    frame: RawFrame


class _ResendCredit(NamedTuple):
    """A flow-control credit frame (MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS)."""

    frame_type: int
    stream_id: int


_Item = _StreamChunk | _ResendFrame | _ResendCredit


#: What a frame other than an ACK takes beyond its data, at most (the C encoder's
#: budget): its type, three varints and the data's length
_FRAME_OVERHEAD = 33


def _frame_bound(frame: RawFrame) -> int:
    """An upper bound of a frame's encoded size (the C encoder's budget):
    :data:`_FRAME_OVERHEAD` plus the data; an ACK's ranges at 16 bytes each."""
    if frame.type == FRAME_ACK:
        return 27 + 16 * len(frame.ranges)
    padding = frame.a if frame.type == FRAME_PADDING else 0
    return _FRAME_OVERHEAD + len(frame.data) + padding


_RETRANSMITTED_CONTROL = {FRAME_RESET_STREAM, FRAME_STOP_SENDING, FRAME_CONTROL, FRAME_RECEIPT}


_SHORT_VARINTS = tuple(bytes((v,)) for v in range(64))
#: a DATAGRAM frame's head for each length with a one-byte varint
_DATAGRAM_HEADS = tuple(bytes((FRAME_DATAGRAM, n)) for n in range(64))


def _varint(value: int) -> bytes:
    # (the one- and two-byte forms inline: a short reply's stream ID, offset and length)
    if 0 <= value < 64:
        return _SHORT_VARINTS[value]
    if 64 <= value < 16384:
        return (0x4000 | value).to_bytes(2, "big")
    encoded = varint_encode(value)
    if encoded is None:
        raise LocalProtocolError("value out of varint range", ErrorCode.VARINT)
    return encoded


class RecordLayer:
    """The records one connection sends: what waits for the next record (control
    frames, credit, a PING, a CLOSE), the send counter and the sealing, and on lossy
    carriers the ACK ranges to send (:attr:`acks`), the records in flight and the probe
    timeout (:attr:`recovery`), and what a lost record carried, queued again.

    The fast paths of the connection seal stream records themselves, through the same
    fields (:attr:`send_aead`, :attr:`send_counter`, :attr:`out`, :attr:`records_sent`).
    """

    __slots__ = (
        "ack_lead",
        "acks",
        "by_id",
        "close_frame",
        "closing",
        "closing_inputs",
        "closing_interval",
        "closing_next",
        "closing_resend_at",
        "closing_until",
        "config",
        "ctrl",
        "out",
        "pack_after",
        "pending_max_data",
        "pending_max_streams",
        "pending_stream_credit",
        "ping_pending",
        "records_sent",
        "recovery",
        "send_aead",
        "send_counter",
        "streams",
        "streams_dirty",
        "unacked",
        "unacked_blocked",
    )

    def __init__(self, config: ConnectionConfig, streams: StreamTable, now: float) -> None:
        self.config = config
        self.streams = streams
        self.by_id = streams.by_id  # (bound once: the packing loops read it per stream)
        self.send_aead: Any = None  # set when the handshake gives the transport keys
        self.send_counter = 0
        self.out: list[bytes] = []  # sealed records (and handshake messages) to go
        self.records_sent = 0
        self.streams_dirty = False  # some stream may have something to send
        # the stream that took the last of the connection's credit in a packing: the
        # next packing starts with the streams after it (_pack_streams)
        self.pack_after: int | None = None
        # frames waiting for the next record
        self.ctrl: list[RawFrame] = []
        self.pending_max_data = False
        # (made at the first credit update: a connection that never sends one holds no set)
        self.pending_stream_credit: set[int] | None = None
        self.pending_max_streams = False
        self.ping_pending = False
        self.close_frame: RawFrame | None = None
        # lossy carriers, after our CLOSE went out (QUIC's closing state): its plaintext,
        # sealed again until closing_until in reply to what still arrives, after the
        # 1st, 2nd, 4th, 8th... input (closing_next), and at closing_resend_at, every
        # closing_interval (a probe timeout), whatever arrives (docs/protocol.md 3.1)
        self.closing: bytes | None = None
        self.closing_until = 0.0
        self.closing_resend_at = 0.0
        self.closing_interval = 0.0
        self.closing_inputs = 0
        self.closing_next = 1
        # lossy carriers
        lossy = not config.reliable_carrier
        self.acks: AckTracker | None = AckTracker() if lossy else None
        # an ACK frame (encoded) that goes in the next stream record it fits in, while
        # build() packs the streams
        self.ack_lead: bytes | None = None
        self.recovery: LossRecovery | None = LossRecovery() if lossy else None
        if self.recovery is not None:
            self.recovery.last_ack_time = now
        # stream bytes sent and not acknowledged yet (kept for resending), over all
        # streams: packing stops at our own connection window of them, whatever credit
        # the peer grants (docs/protocol.md, section 9)
        self.unacked = 0
        self.unacked_blocked = False  # packing stopped there: an ACK making room says so

    def waiting(self) -> bool:
        """Whether frames wait for the next record (the fast paths seal stream data at
        once only when nothing must go before it)."""
        # The definition: build() and the fast paths repeat it inline, a call saved on
        # every send; tests/protocol/test_waiting_checks.py holds the four to agree.
        return bool(
            self.ctrl
            or self.pending_max_data
            or self.pending_stream_credit
            or self.pending_max_streams
            or self.ping_pending
            or self.close_frame is not None
        )

    def awaiting_acks(self) -> bool:
        """Lossy carriers: whether something we sent may still have to be sent again (a
        record not yet acknowledged, or lost and queued for retransmission). Always
        False over a reliable carrier."""
        recovery = self.recovery
        if recovery is None:
            return False
        if any(r.ack_eliciting for r in recovery.in_flight.values()):
            return True
        return any(s.retransmit or s.fin_pending_resend for s in self.by_id.values())

    # ----------------------------------------------------------------------------------
    # frames queued for the next record (the connection checks it is open first)

    def record_room(self) -> int:
        """The largest plaintext of a record we may send one frame in."""
        if self.config.reliable_carrier:
            return MAX_RECORD_PLAINTEXT
        return self.config.max_record_plaintext

    def max_datagram_size(self) -> int:
        """The largest datagram :meth:`queue_datagrams` takes (a DATAGRAM frame has 3
        bytes of header, and must fit one record)."""
        return min(self.config.max_datagram_size, self.record_room() - 3)

    def queue_control(self, kind: int, data: bytes) -> None:
        """Queue an application CONTROL frame (kind >= 16)."""
        if kind < ControlKind.APPLICATION:
            raise LocalProtocolError("control kinds below 16 are reserved for DTP")
        body = bytes(data)
        # checked here, not when build() seals it (which failed, losing the frames
        # queued with it): the frame must fit one record
        room = self.record_room() - 1 - len(_varint(kind)) - 2
        if len(body) > room:
            raise LocalProtocolError(f"control body of {len(body)} bytes exceeds {room}")
        self.ctrl.append(RawFrame(FRAME_CONTROL, kind, 0, 0, body))

    def queue_receipt(self, receipt: bytes) -> None:
        """Queue a RECEIPT frame (a signed cumulative fee receipt)."""
        body = bytes(receipt)
        room = min(MAX_RECEIPT, self.record_room() - 3)
        if len(body) > room:
            raise LocalProtocolError(f"receipt of {len(body)} bytes exceeds {room}")
        self.ctrl.append(RawFrame(FRAME_RECEIPT, 0, 0, 0, body))

    def queue_datagrams(
        self, datagrams: Iterable[bytes | bytearray | memoryview], backlog: int
    ) -> tuple[int, int, int]:
        """Queue DATAGRAM frames: all of them, or (on a TypeError or LocalProtocolError
        for any one) none; those that would take ``backlog`` past DATAGRAM_SEND_BACKLOG
        are dropped instead. Returns (queued, dropped, payload bytes queued)."""
        bodies, dropped, size = self._datagram_bodies(datagrams, backlog)
        self.ctrl.extend([RawFrame(FRAME_DATAGRAM, 0, 0, 0, body) for body in bodies])
        return len(bodies), dropped, size

    def seal_datagrams(
        self, datagrams: Iterable[bytes | bytearray | memoryview], backlog: int
    ) -> tuple[int, int, int]:
        """:meth:`queue_datagrams`, sealed at once into records of DATAGRAM frames alone
        (one C call frames the run: ``encode_datagram_run``) -- for a reliable carrier
        when nothing waits to go before them (the stream data fast path's test)."""
        bodies, dropped, size = self._datagram_bodies(datagrams, backlog)
        if len(bodies) == 1:
            # a quiet flow's run of one: its frame (the type, a minimal varint length:
            # _datagram_bodies kept it below 2**14 and within a record) made here and
            # sealed in one call, encode_datagram_run's plaintext without the run's
            # arrays (tests/protocol/test_datagram_sealing.py)
            body = bodies[0]
            n = len(body)
            head = (
                _DATAGRAM_HEADS[n] if n < 64 else bytes((FRAME_DATAGRAM, 0x40 | n >> 8, n & 0xFF))
            )
            first = self.send_counter
            self.out.append(self.send_aead.seal_one(first, head + body))
            self.send_counter = first + 1
            self.records_sent += 1
        elif bodies:
            limit = self.config.max_record_plaintext
            if max(map(len, bodies)) + 3 > limit:
                # (a datagram up to max_datagram_size goes in a record of its own, as
                # _pack_control lets it: a frame has at most 3 bytes of header)
                limit = self.record_room()
            plaintexts = encode_datagram_run(bodies, limit)
            # (seal, inline: over a reliable carrier no record is tracked for loss)
            first = self.send_counter
            self.out.append(self.send_aead.seal(first, plaintexts))
            self.send_counter = first + len(plaintexts)
            self.records_sent += len(plaintexts)
        return len(bodies), dropped, size

    def _datagram_bodies(
        self, datagrams: Iterable[bytes | bytearray | memoryview], backlog: int
    ) -> tuple[list[bytes], int, int]:
        """The datagrams to send (all of them, or on a TypeError or LocalProtocolError
        for any one none), how many of them the backlog drops, and their size."""
        # (max_datagram_size and record_room, inline: two calls saved on every send)
        config = self.config
        room = MAX_RECORD_PLAINTEXT if config.reliable_carrier else config.max_record_plaintext
        limit = min(config.max_datagram_size, room - 3)
        # (bytes as they are: bytes_like would copy each through a memoryview; a loop
        # here, not a comprehension's call, on every send)
        bodies: list[Any] = list(datagrams)
        for i, data in enumerate(bodies):
            if type(data) is not bytes:
                bodies[i] = bytes_like(data)
        sizes = list(map(len, bodies))
        if sizes and (n := max(sizes)) > limit:
            raise LocalProtocolError(f"datagram of {n} bytes exceeds {limit}")
        size = sum(sizes)
        dropped = 0
        if backlog + size > DATAGRAM_SEND_BACKLOG:
            room = DATAGRAM_SEND_BACKLOG - backlog
            kept = size = 0
            for n in sizes:
                room -= n
                if room < 0:
                    break
                size += n
                kept += 1
            dropped = len(bodies) - kept
            del bodies[kept:]
        return bodies, dropped, size

    # ----------------------------------------------------------------------------------
    # acknowledgements, losses and probes (lossy carriers only)

    def on_ack(self, ranges: tuple[tuple[int, int], ...], delay: int, now: float) -> bool:
        """An ACK frame arrived: acknowledged stream bytes leave the send buffers, and
        what the records it shows lost carried is queued again. Returns whether packing
        had stopped at our window of unacknowledged bytes and now has room (a
        SendWindowOpened is due)."""
        recovery = self.recovery
        if recovery is None:
            return False
        if ranges and ranges[0][1] >= self.send_counter:
            # recovery clips it harmlessly, but no honest peer acknowledges a record we
            # never sealed (QUIC's PROTOCOL_VIOLATION as well)
            raise RemoteProtocolError(
                f"ACK of record {ranges[0][1]}, which was never sent", ErrorCode.FRAME_VALUE
            )
        acked, lost = recovery.on_ack(ranges, delay, now)
        opened = False
        if acked:
            unacked = self.unacked
            self._on_acked(acked)
            if self.unacked_blocked and self.unacked < unacked:
                self.unacked_blocked = False
                self.streams_dirty = True
                opened = True
        self.requeue(lost)
        return opened

    def deadline(self) -> float | None:
        """The earliest of the ACK, loss and probe deadlines (None: none is set)."""
        deadlines = []
        if self.acks is not None and self.acks.ack_deadline is not None:
            deadlines.append(self.acks.ack_deadline)
        if self.recovery is not None:
            for d in (self.recovery.loss_deadline(), self.recovery.pto_deadline()):
                if d is not None:
                    deadlines.append(d)
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float, idle_timeout: float) -> bool:
        """Records declared lost by time, and a probe at the probe timeout, queued to go.
        Returns False when the peer is to be given up for acknowledging nothing through
        MAX_PTO_COUNT probes and ``idle_timeout`` seconds (nothing is queued then)."""
        recovery = self.recovery
        if recovery is None:
            return True
        lost = recovery.detect_lost(now)
        pto = recovery.pto_deadline()
        if pto is not None and now >= pto:
            if recovery.pto_count == 0:
                recovery.probing_since = now
            # (the idle timeout counted from when the probing began, too: counted from
            # the last acknowledgement alone, a side that had sent nothing to
            # acknowledge for a while closed a few seconds into a short outage)
            if recovery.pto_count >= MAX_PTO_COUNT and now >= (
                max(recovery.last_ack_time, recovery.probing_since) + idle_timeout
            ):
                # A peer that goes on sending (its PINGs keep the idle timer alive) but
                # acknowledges nothing of ours is as gone as a silent one (never before
                # the idle timeout: a link down both ways gets as long).
                return False
            lost += recovery.on_pto()
            # the probe must elicit an ACK even when the records it gives up held
            # nothing to send again (datagrams, ACK-only): else nothing goes out, the
            # next probe waits twice as long, and data behind them stalls
            self.ping_pending = True
        self.requeue(lost)
        return True

    def acknowledged_nothing(self) -> bool:
        """Whether the peer has acknowledged none of our records yet (lossy carriers)."""
        return self.recovery is not None and self.recovery.largest_acked < 0

    def resend_handshake_flight(self) -> None:
        """A handshake message goes again over a lossy carrier (the client's, on its
        timer; the server's answer to a copy of the client's), and with it the two
        oldest records the peer has not acknowledged -- the rest of the handshake's
        flight: the client's AUTH, the server's verdict -- rather than at the probe
        timeout, which has no RTT sample to go by yet (RFC 9002 6.2.3). Nothing once
        the peer acknowledged one of our records: it has that flight then."""
        if self.acknowledged_nothing():
            assert self.recovery is not None
            self.requeue(self.recovery.take_probes())

    # ----------------------------------------------------------------------------------
    # our CLOSE on a lossy carrier (QUIC's closing state, docs/protocol.md 3.1)

    def closing_deadline(self) -> float | None:
        """When :meth:`closing_timer` is due (None: not closing)."""
        if self.closing is None:
            return None
        return min(self.closing_resend_at, self.closing_until)

    def input_while_closing(self, now: float) -> None:
        """Something arrived after our CLOSE went out. The peer sends on because the
        CLOSE was lost, perhaps: it goes again (alone, in a new record), as QUIC's
        closing state does -- without it the peer ended only at its idle timeout, never
        learning the code and reason. For the closing period (``close_copies`` probe
        timeouts), and rate-limited: after the 1st, 2nd, 4th, 8th... input, whatever it
        is (what arrives is not opened: anyone could have sent it)."""
        if now >= self.closing_until:
            self.closing = None  # the closing period is over
            return
        self.closing_inputs += 1
        if self.closing_inputs < self.closing_next:
            return
        self.closing_next *= 2
        assert self.closing is not None
        self.seal([self.closing], [[]], [False], now)

    def closing_timer(self, now: float) -> None:
        """The closing period ends at ``closing_until``; before it, the CLOSE goes again
        (alone, in a new record) at every probe timeout, whatever arrives or not. A peer
        with nothing to send, which would never make :meth:`input_while_closing` answer,
        still gets it, unless the carrier loses each copy."""
        if now >= self.closing_until:
            self.closing = None
            return
        if now < self.closing_resend_at:
            return
        self.closing_resend_at = now + self.closing_interval
        assert self.closing is not None
        self.seal([self.closing], [[]], [False], now)

    # ----------------------------------------------------------------------------------
    # building and sealing records

    def forget_if_done(self, stream: Stream) -> None:
        """A stream both of whose halves ended leaves the table; a peer stream's place
        going back to the peer makes a MAX_STREAMS due."""
        if self.streams.forget_if_done(stream):
            self.pending_max_streams = True

    def return_credit(self, stream: Stream | None) -> None:
        """After the application consumed bytes (of ``stream``): queue credit updates
        for the windows that are used up enough."""
        # Credit goes back once a quarter of the window is used (or a paced step of it:
        # Connection.pace_credit), so a sender always has most of a window to go on
        # while the update travels. Limits are varints: they stop at VARINT_MAX.
        table = self.streams
        if table.conn_recv_limit - table.conn_consumed < table.conn_credit_at:
            limit = min(table.conn_consumed + self.config.connection_window, VARINT_MAX)
            if limit > table.conn_recv_limit:
                table.conn_recv_limit = limit
                self.pending_max_data = True
        if (
            stream is not None
            and stream.recv_state is RecvState.OPEN
            and stream.recv_limit - stream.consumed < table.stream_credit_at
        ):
            limit = min(stream.consumed + self.config.stream_window, VARINT_MAX)
            if limit > stream.recv_limit:
                stream.recv_limit = limit
                self._credit_due(stream.stream_id)

    def _credit_due(self, stream_id: int) -> None:
        credit = self.pending_stream_credit
        if credit is None:
            credit = self.pending_stream_credit = set()
        credit.add(stream_id)

    def build(self, now: float, streams_may_go: bool) -> None:
        """Build and seal (into :attr:`out`) the records of everything queued: the ACK
        due, credit, control frames, a PING, stream data (where ``streams_may_go``: the
        connection's state lets stream data out) and a CLOSE."""
        if self.send_aead is None:
            return
        # (waiting(), inline: build runs at every send and input; test_waiting_checks.py)
        if self.acks is None and not (
            self.streams_dirty
            or self.ctrl
            or self.pending_max_data
            or self.pending_stream_credit
            or self.pending_max_streams
            or self.ping_pending
            or self.close_frame is not None
        ):
            return  # nothing to send (the common case after a fast-path seal)
        frames_now: list[RawFrame] = []
        ack: RawFrame | None = None
        acks = self.acks
        if (
            acks is not None
            and acks.ack_deadline is not None
            and (now >= acks.ack_deadline or self._has_outgoing())
        ):
            # Only once a record that asks for one arrived since the last ACK, at its
            # deadline or with what goes out anyway (not a record of its own per call).
            # A lost ACK is made up for by the next: each holds every range received (up
            # to MAX_ACK_RANGES).
            ranges, delay = acks.take_ack(now)
            if ranges:
                ack = RawFrame(FRAME_ACK, c=delay, ranges=ranges)
                frames_now.append(ack)
        if self.pending_max_data:
            frames_now.append(RawFrame(FRAME_MAX_DATA, self.streams.conn_recv_limit))
        if self.pending_stream_credit:
            for sid in sorted(self.pending_stream_credit):
                stream = self.by_id.get(sid)
                if stream is not None and stream.recv_state is RecvState.OPEN:
                    frames_now.append(RawFrame(FRAME_MAX_STREAM_DATA, sid, stream.recv_limit))
        if self.pending_max_streams:
            frames_now.append(RawFrame(FRAME_MAX_STREAMS, self.streams.max_streams_limit()))
        frames_now.extend(self.ctrl)
        if self.ping_pending:
            frames_now.append(RawFrame(FRAME_PING))

        plaintexts: list[bytes] = []
        items_per_record: list[list[_Item]] = []
        eliciting: list[bool] = []
        pack_streams = self.streams_dirty and streams_may_go
        if ack is not None and pack_streams and len(frames_now) == 1:
            # an ACK alone rides in a stream record where it fits (_emit_stream_chunk)
            self.ack_lead = _core.encode_frames(frames_now)
            frames_now.clear()
        # control frames first, packed into as few records as fit
        if frames_now:
            self._pack_control(frames_now, plaintexts, items_per_record, eliciting)
        # What was queued is let go only once it is encoded (a failed encoding keeps it
        # and raises), or when nothing encodes (credit for streams no longer open: kept,
        # it would defeat the early return above).
        self.pending_max_data = False
        if self.pending_stream_credit:
            self.pending_stream_credit.clear()
        self.pending_max_streams = False
        self.ctrl.clear()
        self.ping_pending = False
        if frames_now and self.acks is None:
            # reliable carriers: stream data is sealed straight from the send buffers
            # below, so the control records must be sealed before it
            self.seal(plaintexts, items_per_record, eliciting, now)
            plaintexts, items_per_record, eliciting = [], [], []
        if pack_streams:
            # packing sends everything that flow control allows, so the streams are
            # clean until new data, new credit or a loss marks them dirty again
            self.streams_dirty = False
            self._pack_streams(plaintexts, items_per_record, eliciting)
            if self.ack_lead is not None:
                # no stream record had room for it (or none went): a record of its own
                plaintexts.append(self.ack_lead)
                items_per_record.append([])
                eliciting.append(False)
                self.ack_lead = None
        if self.close_frame is not None:
            close = _core.encode_frames([self.close_frame])
            self.close_frame = None
            if self.recovery is not None:
                # a lossy carrier may lose it: kept to be sent again for the closing
                # period (input_while_closing, closing_timer; docs/protocol.md 3.1)
                pto = self.recovery.pto_interval()
                self.closing = close
                self.closing_until = now + self.config.close_copies * pto
                self.closing_interval = pto
                self.closing_resend_at = now + pto
            plaintexts.append(close)
            items_per_record.append([])
            eliciting.append(False)
        self.seal(plaintexts, items_per_record, eliciting, now)

    def seal(
        self,
        plaintexts: list[bytes],
        items_per_record: list[list[_Item]],
        eliciting: list[bool],
        now: float,
    ) -> None:
        """Seal ``plaintexts`` (one record each) into :attr:`out`; on a lossy carrier
        those ``eliciting`` an ACK are tracked with the items they carried, to be sent
        again if lost."""
        if not plaintexts:
            return
        first = self.send_counter
        sealed = self.send_aead.seal(first, plaintexts)
        self.send_counter += len(plaintexts)
        self.records_sent += len(plaintexts)
        self.out.append(sealed)
        if self.recovery is not None:
            for i, items in enumerate(items_per_record):
                if eliciting[i]:
                    evicted = self.recovery.on_sent(SentRecord(first + i, now, items, True))
                    if evicted is not None:
                        self.requeue([evicted])

    def _has_outgoing(self) -> bool:
        """Whether the next records will carry something an ACK can ride along with.
        Stream data blocked by flow control does not count: an ACK frame would then
        travel alone, on every call, while the peer's credit is awaited."""
        if self.ctrl or self.ping_pending:
            return True
        conn_credit = (
            self.streams.conn_send_credit > self.streams.conn_sent
            and self.unacked < self.config.connection_window
        )
        return any(
            s.retransmit or (s.unsent() and conn_credit and s.send_credit > s.next_offset)
            for s in self.by_id.values()
        )

    def _pack_control(
        self,
        frames: list[RawFrame],
        plaintexts: list[bytes],
        items_per_record: list[list[_Item]],
        eliciting: list[bool],
    ) -> None:
        # Frames are grouped by an upper bound of their encoded size (the C encoder's own
        # budget), so each record's frames are encoded in one call, not one per frame.
        limit = self.config.max_record_plaintext
        group: list[RawFrame] = []
        items: list[_Item] = []
        bound = 0
        any_eliciting = False
        for frame in frames:
            ftype = frame.type
            # (a datagram's bound inline: a burst of them is most of what comes here)
            cost = (
                _FRAME_OVERHEAD + len(frame.data)
                if ftype == FRAME_DATAGRAM
                else _frame_bound(frame)
            )
            if group and bound + cost > limit:
                plaintexts.append(_core.encode_frames(group))
                items_per_record.append(items)
                eliciting.append(any_eliciting)
                group, items, bound, any_eliciting = [], [], 0, False
            group.append(frame)
            bound += cost
            if ftype == FRAME_DATAGRAM:
                any_eliciting = True
                continue  # (never resent: nothing to keep for it)
            if ftype != FRAME_ACK:
                any_eliciting = True
            if ftype in _RETRANSMITTED_CONTROL:
                items.append(_ResendFrame(frame))
            elif ftype in (FRAME_MAX_DATA, FRAME_MAX_STREAM_DATA, FRAME_MAX_STREAMS):
                # credit is re-sent with its newest value, not the lost one
                items.append(_ResendCredit(frame.type, frame.a))
        if group:
            plaintexts.append(_core.encode_frames(group))
            items_per_record.append(items)
            eliciting.append(any_eliciting)

    def _pack_streams(
        self,
        plaintexts: list[bytes],
        items_per_record: list[list[_Item]],
        eliciting: list[bool],
    ) -> None:
        budget = self.config.max_record_plaintext - MAX_STREAM_FRAME_OVERHEAD
        lossy = self.acks is not None
        streams = list(self.by_id.values())
        after = self.pack_after
        if after is not None and len(streams) > 1:
            # Round robin over the connection's credit: packed always in the same order,
            # a stream whose writer keeps its queue full took every credit update, and
            # the bytes queued on the streams after it went out only once it stopped.
            for i, stream in enumerate(streams):
                if stream.stream_id == after:
                    streams = streams[i + 1 :] + streams[: i + 1]
                    break
        for stream in streams:
            if stream.send_state is SendState.RESET:
                continue
            packed = False
            # retransmissions first (lossy carriers only)
            while stream.retransmit:
                lo, hi = stream.retransmit.ranges[0]
                length = min(hi - lo + 1, budget)
                self._emit_stream_chunk(
                    stream, lo, length, plaintexts, items_per_record, eliciting, retransmit=True
                )
            if stream.fin_pending_resend and not stream.unsent():
                stream.fin_pending_resend = False
                self._emit_stream_chunk(
                    stream,
                    stream.end_offset,
                    0,
                    plaintexts,
                    items_per_record,
                    eliciting,
                    retransmit=True,
                )
            while True:
                unsent = stream.unsent()
                credit = min(
                    stream.send_credit - stream.next_offset,
                    self.streams.conn_send_credit - self.streams.conn_sent,
                )
                if lossy:
                    room = self.config.connection_window - self.unacked
                    if room < credit:
                        credit = room
                        if unsent and room <= 0:
                            self.unacked_blocked = True
                wants_fin = stream.send_state is SendState.FIN_QUEUED and unsent <= max(credit, 0)
                if unsent and credit > 0:
                    length = min(unsent, credit, budget)
                    packed = True
                    if self.acks is None:
                        # reliable carrier: all that flow control allows in one call
                        self._seal_queued(stream, min(unsent, credit))
                        if stream.send_state is SendState.FIN_SENT:
                            break
                        continue
                elif (wants_fin or stream.announce) and not unsent:
                    length = 0
                else:
                    if packed and unsent and stream.send_credit > stream.next_offset:
                        # cut short by what the connection allows, not by its own credit
                        self.pack_after = stream.stream_id
                    break
                self._emit_stream_chunk(
                    stream,
                    stream.next_offset,
                    length,
                    plaintexts,
                    items_per_record,
                    eliciting,
                    retransmit=False,
                )
                if stream.send_state is SendState.FIN_SENT:
                    break

    def _seal_queued(self, stream: Stream, length: int) -> None:
        """Reliable carriers: seal ``length`` queued bytes of ``stream`` (from its
        first unsent byte) in one C call, straight from the send buffer, into the
        records _emit_stream_chunk would build one by one; then drop them."""
        offset = stream.next_offset
        end = offset + length
        fin = stream.send_state is SendState.FIN_QUEUED and end == stream.end_offset
        start = offset - stream.base_offset
        with memoryview(stream.send_buf) as view:
            sealed, records = self.send_aead.seal_stream(
                self.send_counter, stream.stream_id, offset, view[start : start + length], fin
            )
        self.send_counter += records
        self.records_sent += records
        self.out.append(sealed)
        stream.announce = False
        stream.next_offset = end
        self.streams.conn_sent += length
        del stream.send_buf[: end - stream.base_offset]
        stream.base_offset = end
        if fin:
            stream.send_state = SendState.FIN_SENT
            stream.fin_acked = True
            self.forget_if_done(stream)

    def _emit_stream_chunk(
        self,
        stream: Stream,
        offset: int,
        length: int,
        plaintexts: list[bytes],
        items_per_record: list[list[_Item]],
        eliciting: list[bool],
        retransmit: bool,
    ) -> None:
        start = offset - stream.base_offset
        data = bytes(stream.send_buf[start : start + length])
        end = offset + length
        fin = stream.send_state in (SendState.FIN_QUEUED, SendState.FIN_SENT) and (
            end == stream.end_offset
        )
        header = bytes([FRAME_STREAM_FIN if fin else FRAME_STREAM])
        header += _varint(stream.stream_id) + _varint(offset) + _varint(length)
        lead = self.ack_lead
        if lead is not None and (
            len(lead) + len(header) + length <= self.config.max_record_plaintext
        ):
            plaintexts.append(lead + header + data)  # the ACK due rides along
            self.ack_lead = None
        else:
            plaintexts.append(header + data)
        stream.announce = False
        items_per_record.append([_StreamChunk(stream.stream_id, offset, length, fin)])
        eliciting.append(True)
        if retransmit:
            if fin:
                # the FIN goes again with the bytes that end the stream: no empty
                # STREAM_FIN of its own after them (docs/protocol.md section 9)
                stream.fin_pending_resend = False
            if length:
                hi = stream.retransmit.ranges[0][1]
                if end - 1 >= hi:
                    stream.retransmit.ranges.pop(0)
                else:
                    stream.retransmit.ranges[0][0] = end
            return
        stream.next_offset = end
        self.streams.conn_sent += length
        if fin:
            stream.send_state = SendState.FIN_SENT
        if self.config.reliable_carrier:
            # TCP delivers what it accepts: no copy kept for retransmission
            del stream.send_buf[: end - stream.base_offset]
            stream.base_offset = end
            if fin:
                stream.fin_acked = True
                self.forget_if_done(stream)
        else:
            self.unacked += length

    # ----------------------------------------------------------------------------------
    # acknowledged and lost records (lossy carriers only: a reliable carrier
    # acknowledges nothing)

    def _on_acked(self, records: list[SentRecord]) -> None:
        for record in records:
            for item in record.items:
                if not isinstance(item, _StreamChunk):
                    continue
                stream = self.by_id.get(item.stream_id)
                if stream is None:
                    continue
                if item.length:
                    stream.acked = own_ranges(stream.acked)
                    stream.acked.add(item.offset, item.offset + item.length - 1)
                    self._advance_acked(stream)
                if item.fin:
                    stream.fin_acked = True
                    self.forget_if_done(stream)

    def _advance_acked(self, stream: Stream) -> None:
        ranges = stream.acked.ranges
        if ranges and ranges[0][0] <= stream.base_offset:
            new_base = min(ranges[0][1] + 1, stream.next_offset)
            if new_base > stream.base_offset:
                self.unacked -= new_base - stream.base_offset
                del stream.send_buf[: new_base - stream.base_offset]
                stream.base_offset = new_base

    def requeue(self, lost: list[SentRecord]) -> None:
        for record in lost:
            for item in record.items:
                if isinstance(item, _StreamChunk):
                    self._requeue_chunk(item)
                elif isinstance(item, _ResendFrame):
                    frame = item.frame
                    if frame.type == FRAME_CONTROL and frame.a == ControlKind.AUTH:
                        # An XX server drops a record with frames before the AUTH: sent
                        # again behind frames queued since, it went with them each time.
                        self.ctrl.insert(0, frame)
                    else:
                        self.ctrl.append(frame)
                elif isinstance(item, _ResendCredit):
                    if item.frame_type == FRAME_MAX_DATA:
                        self.pending_max_data = True
                    elif item.frame_type == FRAME_MAX_STREAM_DATA:
                        self._credit_due(item.stream_id)
                    else:
                        self.pending_max_streams = True

    def _requeue_chunk(self, item: _StreamChunk) -> None:
        stream = self.by_id.get(item.stream_id)
        if stream is None or stream.send_state is SendState.RESET:
            return
        self.streams_dirty = True
        if item.length:
            lo = max(item.offset, stream.base_offset)
            hi = item.offset + item.length - 1
            for alo, ahi in stream.acked.ranges:
                if alo <= lo and hi <= ahi:
                    lo = hi + 1
            if lo <= hi:
                stream.retransmit = own_ranges(stream.retransmit)
                stream.retransmit.add(lo, hi)
        if item.fin and not stream.fin_acked:
            stream.fin_pending_resend = True
        if not item.length and not item.fin:
            stream.announce = True  # the lost record only opened the stream
