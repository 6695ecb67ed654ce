"""The records a connection sends (:class:`_Records`): control frames, receipts and
datagrams queued, packed with stream data into records and sealed in batches; and, on
lossy carriers, what acknowledgements and losses do to them -- acknowledged stream bytes
leave the streams' send buffers, and what a lost record carried is queued to go again:
stream ranges not acknowledged since, control frames as they were, flow-control credits
as they are now (:mod:`dtp.protocol.recovery` tells which records were acknowledged or
lost)."""

from __future__ import annotations

from collections.abc import Iterable

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native import core as _core
from dtp.native.reference.varint import varint_encode
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
from dtp.protocol.buffers import bytes_like
from dtp.protocol.connection.base import (
    Stream,
    _ConnectionState,
    _Item,
    _ResendCredit,
    _ResendFrame,
    _StreamChunk,
)
from dtp.protocol.connection.config import (
    DATAGRAM_SEND_BACKLOG,
    MAX_RECEIPT,
    MAX_RECORD_PLAINTEXT,
    MAX_STREAM_FRAME_OVERHEAD,
)
from dtp.protocol.recovery import SentRecord
from dtp.protocol.state import ConnState, ControlKind, RecvState, SendState


def _frame_bound(frame: RawFrame) -> int:
    """An upper bound of a frame's encoded size (the C encoder's budget): type, three
    varints and a length, plus the data; an ACK's ranges at 16 bytes each."""
    if frame.type == FRAME_ACK:
        return 27 + 16 * len(frame.ranges)
    padding = frame.a if frame.type == FRAME_PADDING else 0
    return 33 + len(frame.data) + padding


_RETRANSMITTED_CONTROL = {FRAME_RESET_STREAM, FRAME_STOP_SENDING, FRAME_CONTROL, FRAME_RECEIPT}


_SHORT_VARINTS = tuple(bytes((v,)) for v in range(64))


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


class _Records(_ConnectionState):
    """Building and sealing the records of a
    :class:`~dtp.protocol.connection.core.Connection` (a mixin), and on lossy carriers
    what acknowledgements and losses do to them (:meth:`_on_acked`, :meth:`_requeue`).

    Attributes of ``Connection.__init__`` it uses: ``config``, ``is_client``,
    ``_state``, ``_out``, ``_send_aead``, ``_send_counter``, ``lent_lane``,
    ``streams``, ``_streams``, ``_streams_dirty``, ``_conn_send_credit``, ``_conn_sent``,
    ``_conn_recv_limit``, ``_ctrl``,
    ``_pending_max_data``, ``_pending_stream_credit``, ``_pending_max_streams``,
    ``_ping_pending``, ``_close_frame``, ``_closing`` and its ``_closing_*`` fields, ``_acks``,
    ``_ack_lead``, ``_recovery``, ``_unacked``, ``_unacked_blocked``, ``records_sent``,
    ``datagrams_send_dropped``, ``datagram_bytes``.
    """

    def awaiting_acks(self) -> bool:
        """Lossy carriers: whether something we sent may still have to be sent again (a
        record not yet acknowledged, or lost and queued for retransmission). Always
        False over a reliable carrier. Graceful closes wait for this to clear."""
        recovery = self._recovery
        if recovery is None:
            return False
        if any(r.ack_eliciting for r in recovery.in_flight.values()):
            return True
        return any(s.retransmit or s.fin_pending_resend for s in self._streams.values())

    def send_control(self, kind: int, data: bytes = b"") -> None:
        """Send an application CONTROL frame (kind >= 16)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        if kind < ControlKind.APPLICATION:
            raise LocalProtocolError("control kinds below 16 are reserved for DTP")
        body = bytes(data)
        # checked here, not when data_to_send seals it (which failed, losing the frames
        # queued with it): the frame must fit one record
        room = self._record_room() - 1 - len(_varint(kind)) - 2
        if len(body) > room:
            raise LocalProtocolError(f"control body of {len(body)} bytes exceeds {room}")
        self._ctrl.append(RawFrame(FRAME_CONTROL, kind, 0, 0, body))

    def send_receipt(self, receipt: bytes) -> None:
        """Send a RECEIPT frame (a signed cumulative fee receipt)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        body = bytes(receipt)
        room = min(MAX_RECEIPT, self._record_room() - 3)
        if len(body) > room:
            raise LocalProtocolError(f"receipt of {len(body)} bytes exceeds {room}")
        self._ctrl.append(RawFrame(FRAME_RECEIPT, 0, 0, 0, body))

    def _record_room(self) -> int:
        """The largest plaintext of a record we may send one frame in."""
        if self.config.reliable_carrier:
            return MAX_RECORD_PLAINTEXT
        return self.config.max_record_plaintext

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram :meth:`send_datagrams` takes: ``max_datagram_size`` of the
        config, or less where a DATAGRAM frame (3 bytes of header) must fit a smaller
        record (lossy carriers: ``max_record_plaintext``)."""
        return min(self.config.max_datagram_size, self._record_room() - 3)

    def send_datagram(self, data: bytes | bytearray | memoryview, backlog: int = 0) -> int:
        """Send an unreliable datagram (never retransmitted); see :meth:`send_datagrams`."""
        return self.send_datagrams((data,), backlog)

    def send_datagrams(
        self, datagrams: Iterable[bytes | bytearray | memoryview], backlog: int = 0
    ) -> int:
        """Send unreliable datagrams: all of them, or (on a TypeError or
        LocalProtocolError for any one) none. ``backlog``: bytes the I/O adapter holds
        that the carrier has not taken yet. Those that would take it past
        DATAGRAM_SEND_BACKLOG are dropped and counted in :attr:`datagrams_send_dropped`
        instead (never a wait: a late datagram is worth less than a lost one). Returns
        how many were queued."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        limit = self.max_datagram_size
        frames = []
        size = 0
        for data in datagrams:
            # (bytes as they are: bytes_like would copy each through a memoryview)
            body = data if type(data) is bytes else bytes_like(data)
            n = len(body)
            if n > limit:
                raise LocalProtocolError(f"datagram of {n} bytes exceeds {limit}")
            frames.append(RawFrame(FRAME_DATAGRAM, 0, 0, 0, body))
            size += n
        if backlog + size > DATAGRAM_SEND_BACKLOG:
            room = DATAGRAM_SEND_BACKLOG - backlog
            kept = size = 0
            for frame in frames:
                room -= len(frame.data)
                if room < 0:
                    break
                size += len(frame.data)
                kept += 1
            self.datagrams_send_dropped += len(frames) - kept
            del frames[kept:]
        # metered as they are framed to go (dropped ones never are): over an ordered
        # carrier the peer counts exactly these as it accepts them
        self.datagram_bytes += size
        self._ctrl.extend(frames)
        return len(frames)

    def _build_records(self, now: float) -> None:
        if self._send_aead is None:
            return
        if self._acks is None and not (
            self._streams_dirty
            or self._ctrl
            or self._pending_max_data
            or self._pending_stream_credit
            or self._pending_max_streams
            or self._ping_pending
            or self._close_frame is not None
        ):
            return  # nothing to send (the common case after a fast-path seal)
        frames_now: list[RawFrame] = []
        ack: RawFrame | None = None
        acks = self._acks
        if (
            acks is not None
            and acks.ack_deadline is not None
            and (now >= acks.ack_deadline or self._has_outgoing())
        ):
            # Only once a record that asks for one arrived since the last ACK (its
            # deadline is set until then), and then at the deadline or with what goes
            # out anyway. Sent on every call with anything to go (the ranges received
            # are never cleared), it cost a record of its own per call. A lost ACK is
            # made up for by the next: the sender's resends and probes ask for one, and
            # each ACK holds every range received (up to MAX_ACK_RANGES).
            ranges, delay = acks.take_ack(now)
            if ranges:
                ack = RawFrame(FRAME_ACK, c=delay, ranges=ranges)
                frames_now.append(ack)
        if self._pending_max_data:
            frames_now.append(RawFrame(FRAME_MAX_DATA, self._conn_recv_limit))
        if self._pending_stream_credit:
            for sid in sorted(self._pending_stream_credit):
                stream = self._streams.get(sid)
                if stream is not None and stream.recv_state is RecvState.OPEN:
                    frames_now.append(RawFrame(FRAME_MAX_STREAM_DATA, sid, stream.recv_limit))
        if self._pending_max_streams:
            frames_now.append(RawFrame(FRAME_MAX_STREAMS, self.streams.max_streams_limit()))
        frames_now.extend(self._ctrl)
        if self._ping_pending:
            frames_now.append(RawFrame(FRAME_PING))

        plaintexts: list[bytes] = []
        items_per_record: list[list[_Item]] = []
        eliciting: list[bool] = []
        # A client may send data right behind its AUTH frame (the server holds it until
        # it accepts), but only where records cannot overtake each other.
        pack_streams = self._streams_dirty and (
            self._state is ConnState.ESTABLISHED
            or (
                self.is_client
                and self._state is ConnState.AUTHENTICATING
                and self.config.reliable_carrier
            )
        )
        if ack is not None and pack_streams and len(frames_now) == 1:
            # an ACK alone rides in a stream record where it fits (_emit_stream_chunk)
            self._ack_lead = _core.encode_frames(frames_now)
            frames_now.clear()
        # control frames first, packed into as few records as fit
        if frames_now:
            self._pack_control(frames_now, plaintexts, items_per_record, eliciting)
        # What was queued is let go only once it is encoded: an encoding that failed
        # lost it all (every frame queued with the one that failed), and raised. (Let
        # go with nothing encoded too: credit for streams no longer open sends nothing,
        # and kept, it made every later call skip the early return above.)
        self._pending_max_data = False
        self._pending_stream_credit.clear()
        self._pending_max_streams = False
        self._ctrl.clear()
        self._ping_pending = False
        if frames_now and self._acks is None:
            # reliable carriers: stream data is sealed straight from the send buffers
            # below, so the control records must be sealed before it
            self._seal_plaintexts(plaintexts, items_per_record, eliciting, now)
            plaintexts, items_per_record, eliciting = [], [], []
        if pack_streams:
            # packing sends everything that flow control allows, so the streams are
            # clean until new data, new credit or a loss marks them dirty again
            self._streams_dirty = False
            self._pack_streams(plaintexts, items_per_record, eliciting)
            if self._ack_lead is not None:
                # no stream record had room for it (or none went): a record of its own
                plaintexts.append(self._ack_lead)
                items_per_record.append([])
                eliciting.append(False)
                self._ack_lead = None
        if self._close_frame is not None:
            close = _core.encode_frames([self._close_frame])
            self._close_frame = None
            if self._recovery is not None:
                # a lossy carrier may lose it: kept to be sent again for the closing
                # period (_input_while_closing, _closing_timer; docs/protocol.md 3.1)
                pto = self._recovery.pto_interval()
                self._closing = close
                self._closing_until = now + 3 * pto
                self._closing_interval = pto
                self._closing_resend_at = now + pto
            plaintexts.append(close)
            items_per_record.append([])
            eliciting.append(False)
        self._seal_plaintexts(plaintexts, items_per_record, eliciting, now)

    def _seal_plaintexts(
        self,
        plaintexts: list[bytes],
        items_per_record: list[list[_Item]],
        eliciting: list[bool],
        now: float,
    ) -> None:
        if not plaintexts:
            return
        first = self._send_counter
        sealed = self._send_aead.seal(first, plaintexts)
        self._send_counter += len(plaintexts)
        self.records_sent += len(plaintexts)
        self._out.append(sealed)
        if self._recovery is not None:
            for i, items in enumerate(items_per_record):
                if eliciting[i]:
                    evicted = self._recovery.on_sent(SentRecord(first + i, now, items, True))
                    if evicted is not None:
                        self._requeue([evicted])

    def _has_outgoing(self) -> bool:
        """Whether the next records will carry something an ACK can ride along with.
        Stream data blocked by flow control does not count: an ACK frame would then
        travel alone, on every call, while the peer's credit is awaited."""
        if self._ctrl or self._ping_pending:
            return True
        conn_credit = (
            self._conn_send_credit > self._conn_sent
            and self._unacked < self.config.connection_window
        )
        return any(
            s.retransmit or (s.unsent() and conn_credit and s.send_credit > s.next_offset)
            for s in self._streams.values()
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
            cost = 33 + len(frame.data) if ftype == FRAME_DATAGRAM else _frame_bound(frame)
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
        lossy = self._acks is not None
        for stream in list(self._streams.values()):
            if stream.send_state is SendState.RESET:
                continue
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
                    self._conn_send_credit - self._conn_sent,
                )
                if lossy:
                    room = self.config.connection_window - self._unacked
                    if room < credit:
                        credit = room
                        if unsent and room <= 0:
                            self._unacked_blocked = True
                wants_fin = stream.send_state is SendState.FIN_QUEUED and unsent <= max(credit, 0)
                if unsent and credit > 0:
                    length = min(unsent, credit, budget)
                    if self._acks is None:
                        # reliable carrier: all that flow control allows in one call
                        self._seal_queued(stream, min(unsent, credit))
                        if stream.send_state is SendState.FIN_SENT:
                            break
                        continue
                elif (wants_fin or stream.announce) and not unsent:
                    length = 0
                else:
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
            sealed, records = self._send_aead.seal_stream(
                self._send_counter, stream.stream_id, offset, view[start : start + length], fin
            )
        self._send_counter += records
        self.records_sent += records
        self._out.append(sealed)
        stream.announce = False
        stream.next_offset = end
        self._conn_sent += length
        del stream.send_buf[: end - stream.base_offset]
        stream.base_offset = end
        if fin:
            stream.send_state = SendState.FIN_SENT
            stream.fin_acked = True
            self._maybe_forget(stream)

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
        lead = self._ack_lead
        if lead is not None and (
            len(lead) + len(header) + length <= self.config.max_record_plaintext
        ):
            plaintexts.append(lead + header + data)  # the ACK due rides along
            self._ack_lead = None
        else:
            plaintexts.append(header + data)
        stream.announce = False
        items_per_record.append([_StreamChunk(stream.stream_id, offset, length, fin)])
        eliciting.append(True)
        if retransmit:
            if length:
                hi = stream.retransmit.ranges[0][1]
                if end - 1 >= hi:
                    stream.retransmit.ranges.pop(0)
                else:
                    stream.retransmit.ranges[0][0] = end
            return
        stream.next_offset = end
        self._conn_sent += length
        if fin:
            stream.send_state = SendState.FIN_SENT
        if self.config.reliable_carrier:
            # TCP delivers what it accepts: no copy kept for retransmission
            del stream.send_buf[: end - stream.base_offset]
            stream.base_offset = end
            if fin:
                stream.fin_acked = True
                self._maybe_forget(stream)
        else:
            self._unacked += length

    # ----------------------------------------------------------------------------------
    # acknowledged and lost records (lossy carriers only: a reliable carrier
    # acknowledges nothing)

    def _on_acked(self, records: list[SentRecord]) -> None:
        for record in records:
            for item in record.items:
                if not isinstance(item, _StreamChunk):
                    continue
                stream = self._streams.get(item.stream_id)
                if stream is None:
                    continue
                if item.length:
                    stream.acked.add(item.offset, item.offset + item.length - 1)
                    self._advance_acked(stream)
                if item.fin:
                    stream.fin_acked = True
                    self._maybe_forget(stream)

    def _advance_acked(self, stream: Stream) -> None:
        ranges = stream.acked.ranges
        if ranges and ranges[0][0] <= stream.base_offset:
            new_base = min(ranges[0][1] + 1, stream.next_offset)
            if new_base > stream.base_offset:
                self._unacked -= new_base - stream.base_offset
                del stream.send_buf[: new_base - stream.base_offset]
                stream.base_offset = new_base

    def _requeue(self, lost: list[SentRecord]) -> None:
        for record in lost:
            for item in record.items:
                if isinstance(item, _StreamChunk):
                    self._requeue_chunk(item)
                elif isinstance(item, _ResendFrame):
                    frame = item.frame
                    if frame.type == FRAME_CONTROL and frame.a == ControlKind.AUTH:
                        # An XX server drops a record with frames before the AUTH: sent
                        # again behind frames queued since, it went with them each time.
                        self._ctrl.insert(0, frame)
                    else:
                        self._ctrl.append(frame)
                elif isinstance(item, _ResendCredit):
                    if item.frame_type == FRAME_MAX_DATA:
                        self._pending_max_data = True
                    elif item.frame_type == FRAME_MAX_STREAM_DATA:
                        self._pending_stream_credit.add(item.stream_id)
                    else:
                        self._pending_max_streams = True

    def _requeue_chunk(self, item: _StreamChunk) -> None:
        stream = self._streams.get(item.stream_id)
        if stream is None or stream.send_state is SendState.RESET:
            return
        self._streams_dirty = True
        if item.length:
            lo = max(item.offset, stream.base_offset)
            hi = item.offset + item.length - 1
            for alo, ahi in stream.acked.ranges:
                if alo <= lo and hi <= ahi:
                    lo = hi + 1
            if lo <= hi:
                stream.retransmit.add(lo, hi)
        if item.fin and not stream.fin_acked:
            stream.fin_pending_resend = True
        if not item.length and not item.fin:
            stream.announce = True  # the lost record only opened the stream
