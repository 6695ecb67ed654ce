"""The streams API of a connection (:class:`_Streams`): opening, sending, resetting and
reading streams, flow-control credit, and the peer's STREAM and RESET_STREAM frames, and
the close codes and reasons of the wire. Which streams exist (and the state of one) is
the connection's :class:`~dtp.protocol.connection._stream_table.StreamTable`."""

from __future__ import annotations

import math

from dtp.errors import (
    ConnectionClosed,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM_FIN,
    OK,
    OpenFramesResult,
    RawFrame,
)
from dtp.protocol._events import StreamDataReceived, StreamOpened, StreamResetReceived
from dtp.protocol._state import (
    CONN_CLOSED,
    CloseCode,
    ConnState,
    RecvState,
    SendState,
)
from dtp.protocol.connection._base import _ConnectionState
from dtp.protocol.connection._config import MAX_CLOSE_REASON
from dtp.protocol.connection._stream_table import NO_RANGES
from dtp.protocol.connection._stream_table import Stream as Stream
from dtp.protocol.connection._stream_table import send_done as send_done

_tuple_new = tuple.__new__


class _FlowControlViolation(RemoteProtocolError):
    pass


def close_code_for(exc: ProtocolError) -> CloseCode:
    """The CLOSE code for a peer's protocol error ``exc``."""
    if isinstance(exc, _FlowControlViolation):
        return CloseCode.FLOW_CONTROL_ERROR
    if exc.code in (
        ErrorCode.VARINT,
        ErrorCode.FRAME_TYPE,
        ErrorCode.FRAME_SIZE,
        ErrorCode.FRAME_TRUNCATED,
        ErrorCode.RECORD_KIND,
        ErrorCode.RECORD_FLAGS,
        ErrorCode.RECORD_SIZE,
    ):
        return CloseCode.FRAME_ENCODING_ERROR
    return CloseCode.PROTOCOL_VIOLATION


def close_reason_bytes(reason: str, limit: int = MAX_CLOSE_REASON) -> bytes:
    """``reason`` as a CLOSE frame carries it: UTF-8, at most ``limit`` bytes
    (:data:`MAX_CLOSE_REASON`), cut at a character boundary (not inside a character,
    which the peer would show as U+FFFD); a lone surrogate becomes "?" (raising here
    would leave a close half done)."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded
    cut = limit
    # the first byte left out is a continuation byte (0b10xxxxxx): the character it
    # belongs to started before the cut, and goes whole
    while cut > 0 and encoded[cut] & 0xC0 == 0x80:
        cut -= 1
    return encoded[:cut]


def check_code(code: int) -> None:
    """An error code for the wire: checked when the application passes it, not when
    data_to_send encodes it (which then failed on every call)."""
    if not 0 <= code < 1 << 62:
        raise LocalProtocolError(f"error code {code} is outside 0 .. 2**62 - 1", ErrorCode.VARINT)


#: The time's worth of a reader's rate that :meth:`_Streams.pace_credit` returns as
#: credit at once: an eighth of a second. The sender moves each step at once, and a
#: one-second window holds its share of the rate give or take the step a window's edge
#: splits: 12.5 % here, 25 % at a quarter second (tests/protocol/test_credit_pacing.py).
CREDIT_PACE_SECONDS = 0.125


def _credit_at(window: int, step: int) -> int:
    """How little of a ``window`` may be left before credit goes back: a quarter of it
    used, or ``step`` bytes when smaller (0: no step)."""
    if step <= 0 or step >= window // 4:
        return window * 3 // 4
    return window - step + 1


class _Streams(_ConnectionState):
    """The streams API of a :class:`~dtp.protocol.connection._core.Connection` (a
    mixin): sending, resetting and reading streams, flow-control credit, and the peer's
    stream frames, over the fields ``Connection.__init__`` declares
    (:mod:`~dtp.protocol.connection._base`). Which streams exist and how many each side
    may open is the :class:`StreamTable` the connection holds (``streams``)."""

    def can_open_stream(self) -> bool:
        """True when :meth:`open_stream` would not hit the peer's stream limit (a
        read-only look: the adapters wait on it for a stream slot to free)."""
        return self.streams.can_open()

    def open_stream(self) -> int:
        """Open a new stream; returns its ID."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        stream_id = self.streams.open()
        self.records.streams_dirty = True
        return stream_id

    def peer_may_send_credit(self) -> bool:
        """Whether the peer, as it reads what we sent, will still send flow-control
        credit (it does each quarter window read past its last update:
        RecordLayer.return_credit), so its reading is not over: a carrier closed under
        it would be reset by its late bytes, destroying the end of our data (RFC 1122
        4.2.2.13). A peer pacing its credit (:meth:`pace_credit`) updates sooner than
        this tells; its clients' close waits for the server's end anyway
        (``ConnectionHook.close_wait``). A lent stream's counts must be taken back
        first."""
        params = self._peer_params
        md, msd = params.get("md"), params.get("msd")
        if (
            isinstance(md, int)
            and self.streams.conn_sent > self.streams.conn_send_credit - md * 3 // 4
        ):
            return True
        if isinstance(msd, int):
            at = msd * 3 // 4
            for stream in self._streams.values():
                # (a stream whose end we sent gets no more credit)
                if stream.send_state is SendState.OPEN and stream.next_offset > (
                    stream.send_credit - at
                ):
                    return True
        return False

    def send_stream_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> None:
        """Queue bytes on a stream (and optionally its end). Never blocks: callers
        bound their own buffering with :meth:`send_buffered`."""
        if self.lent_lane is not None:
            self._take_back()
        # (_require_open's and StreamTable.get's tests inline, each raising through its
        # own call: every write comes here)
        if self._state is ConnState.CLOSED or self.records.send_aead is None:
            self._require_open()
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self.streams.get(stream_id)
        if stream.send_state is not SendState.OPEN:
            raise LocalProtocolError(f"stream {stream_id} is closed for sending")
        if not stream.send_buf and self._can_seal_now():
            # Fast path: nothing queued anywhere that must go first, so seal what flow
            # control allows straight from the caller's buffer (the bytes and records
            # are the ones _pack_streams would produce) and queue only the rest.
            data = self._seal_stream_now(stream, data, end_stream)
            if not data:
                # all of it sealed, and the FIN with the last byte if asked for (queued
                # again here, as it was, a second empty STREAM_FIN followed)
                return
        if data:
            stream.send_buf += data
        if end_stream:
            stream.send_state = SendState.FIN_QUEUED
        self.records.streams_dirty = True

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """Abandon sending on a stream; unsent bytes are dropped. Nothing is sent when
        its sending was reset already or is done (its FIN and every byte before it
        acknowledged; on a reliable carrier, handed to it)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        check_code(error_code)
        stream = self.streams.get(stream_id)
        # Nothing to abandon once our sending is reset already, or done (RFC 9000 3.1,
        # "Data Recvd": the peer has every byte and the FIN, and a RESET_STREAM then
        # is only a frame to send and drop), as for the peer's STOP_SENDING
        if stream.send_state is SendState.RESET or send_done(stream):
            return
        stream.send_state = SendState.RESET
        final = stream.next_offset
        self.records.unacked -= final - stream.base_offset  # (always 0 on a reliable carrier)
        stream.send_buf.clear()
        stream.base_offset = final
        stream.retransmit = NO_RANGES
        self.records.ctrl.append(RawFrame(FRAME_RESET_STREAM, stream_id, error_code, final))
        self.records.forget_if_done(stream)

    def stop_sending(self, stream_id: int, error_code: int = 0) -> None:
        """Ask the peer to stop sending on a stream (we will not read it)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        check_code(error_code)
        stream = self.streams.get(stream_id)
        if stream.recv_state in (RecvState.OPEN, RecvState.FIN_RECEIVED):
            self.records.ctrl.append(RawFrame(FRAME_STOP_SENDING, stream_id, error_code))

    def acknowledge_read(self, stream_id: int, nbytes: int) -> None:
        """The application consumed ``nbytes`` of a stream: return flow-control credit."""
        if self.lent_lane is not None:
            self._take_back()
        if nbytes <= 0 or self._state is CONN_CLOSED:
            return
        table = self.streams
        table.conn_consumed += nbytes
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.consumed += nbytes
        # (RecordLayer.return_credit's thresholds, inline: most reads return none)
        if table.conn_recv_limit - table.conn_consumed < table.conn_credit_at or (
            stream is not None and stream.recv_limit - stream.consumed < table.stream_credit_at
        ):
            self.records.return_credit(stream)

    def credit_due(self) -> bool:
        """Whether flow-control credit waits to go to the peer (after a read that
        returned some): an adapter that read without sending flushes only then."""
        rl = self.records
        return bool(rl.pending_max_data or rl.pending_stream_credit)

    def pace_credit(self, bytes_per_sec: float) -> None:
        """Return flow-control credit in steps of what ``bytes_per_sec`` allows in
        :data:`CREDIT_PACE_SECONDS` (0: in quarter windows, the default), when the
        application reads at that rate (a paid server's client limit): the sender is
        then paced by the credit as the reader is by its limit. In quarter windows, a
        4 MiB stream window read at 200,000 B/s gave a sender 1 MiB at once every 5 s
        (tests/protocol/test_credit_pacing.py). Each update still reaches a whole window
        past what was read; only how often they go changes. A rate that is not a
        finite number >= 0 is refused (ValueError), before anything changes."""
        if (
            isinstance(bytes_per_sec, bool)
            or not isinstance(bytes_per_sec, int | float)
            or not math.isfinite(bytes_per_sec)
            or bytes_per_sec < 0
        ):
            raise ValueError(f"bytes_per_sec must be a finite number >= 0, got {bytes_per_sec!r}")
        if self.lent_lane is not None:
            self._take_back()
        config = self.config
        step = 0
        if bytes_per_sec > 0:
            step = max(1, int(bytes_per_sec * CREDIT_PACE_SECONDS))
        self.streams.conn_credit_at = _credit_at(config.connection_window, step)
        self.streams.stream_credit_at = _credit_at(config.stream_window, step)

    def defer_stream_credit(self) -> None:
        """From now on a stream the peer opens goes back to its stream limit
        (MAX_STREAMS) only once it ended *and* the application took it
        (:meth:`stream_taken`), so that ``max_streams`` also bounds the streams waiting
        to be accepted: the Session keeps a buffer for each until then, which a peer
        could otherwise grow without end."""
        self.streams.defers_credit = True

    def stream_taken(self, stream_id: int) -> None:
        """The application took the peer's stream ``stream_id`` (after
        :meth:`defer_stream_credit`): if it ended already, its place in the stream
        limit goes back to the peer now."""
        table = self.streams
        untaken = table.untaken
        if untaken is None or stream_id not in untaken:
            return
        untaken.discard(stream_id)
        if not untaken:
            table.untaken = None
        if stream_id not in table.by_id and self._state is not ConnState.CLOSED:
            if self.lent_lane is not None:
                self._take_back()
            table.peer_done += 1
            self.records.pending_max_streams = True

    def send_buffered(self, stream_id: int | None = None) -> int:
        """Bytes queued but not yet sent (on one stream, or on all)."""
        if stream_id is not None:
            stream = self._streams.get(stream_id)
            # (Stream.unsent, inline: every drain() asks)
            return stream.base_offset + len(stream.send_buf) - stream.next_offset if stream else 0
        # (the same, inline: a paid client's every send asks for this total)
        n = 0
        for s in self._streams.values():
            n += s.base_offset + len(s.send_buf) - s.next_offset
        return n

    def _on_stream_frame(self, stream_id: int, offset: int, data: bytes, fin: bool) -> None:
        if self._state is ConnState.AUTHENTICATING and (self.is_client or not self.peer_address):
            raise RemoteProtocolError("stream data before authentication", ErrorCode.FRAME_VALUE)
        stream = self._streams.get(stream_id)
        if stream is None:
            table = self.streams
            # (is_ours and peer_next_id inline: a stream a call opens each comes here)
            if (stream_id % 2 == 0) == table.is_client:
                table.check_not_unopened(stream_id)
                return  # a late frame for a stream we already forgot
            next_id = (1 if table.is_client else 0) + 2 * table.peer_opened
            if stream_id < next_id:
                return  # a late frame for a finished peer stream
            if fin and not offset and stream_id == next_id and self._open_whole(stream_id, data):
                return
            stream = self._open_peer_streams_up_to(stream_id)
        end = offset + len(data)
        # checked before a finished stream's frames are let go: a late copy of what was
        # sent is fine, but data past the final size (or a second, other FIN) never is
        if stream.final_size is not None and (
            end > stream.final_size or (fin and end != stream.final_size)
        ):
            raise RemoteProtocolError("data beyond the stream's final size", ErrorCode.FRAME_VALUE)
        if stream.recv_state in (RecvState.DONE, RecvState.RESET):
            return
        if fin and end < stream.recv_highest:
            # a lossy carrier's reassembly would drop the bytes past the end, and a FIN
            # below what was already delivered would leave the stream never finishing
            raise RemoteProtocolError("data beyond the stream's final size", ErrorCode.FRAME_VALUE)
        if end > stream.recv_limit:
            raise _FlowControlViolation(f"stream {stream_id} exceeded its flow-control window")
        grown = end - stream.recv_highest
        if grown > 0 and self.streams.conn_received + grown > self.streams.conn_recv_limit:
            raise _FlowControlViolation("connection exceeded its flow-control window")
        reasm = None
        if self.config.reliable_carrier:
            if offset != stream.delivered:
                raise RemoteProtocolError("stream data out of order", ErrorCode.FRAME_VALUE)
        elif stream.reasm is not None or offset != stream.delivered:
            reasm = stream.reasm
            if reasm is None:
                reasm = stream.reasm = _core.Reassembler(
                    start_seq=stream.delivered, window=self.config.stream_window
                )
            if data:
                # Before anything is counted: a push past the reassembly's range limit
                # changes nothing, and its record is dropped (see _handle_record).
                reasm.push(offset, data)
        if grown > 0:
            self.streams.conn_received += grown
            stream.recv_highest = end
        if fin:
            stream.final_size = end
            if stream.recv_state is RecvState.OPEN:
                stream.recv_state = RecvState.FIN_RECEIVED
        if reasm is None:
            chunk = data  # in order with nothing held: no reassembly needed
        else:
            chunk = reasm.pop()
            if not reasm.buffered:
                # its ring grew to the widest gap it bridged and never shrinks: kept once
                # it holds nothing, every stream a peer sent last byte first held up to
                # a stream window for good (max_streams of them: 512 MiB by default)
                stream.reasm = None
        stream.delivered += len(chunk)
        if chunk:
            self._lane_sid = stream_id
        done = stream.final_size is not None and stream.delivered == stream.final_size
        if chunk or (done and stream.recv_state is not RecvState.DONE):
            if done:
                stream.recv_state = RecvState.DONE
            handler = self.stream_data_handler
            if handler is not None and (
                self.is_client or self._state is not ConnState.AUTHENTICATING
            ):
                handler(stream_id, chunk, done)
            else:
                self._deliver(StreamDataReceived(stream_id, chunk, done))
            if done and stream.send_state is not SendState.OPEN:
                # (a sending half still open keeps the stream, as forget_if_done would
                # find: a request's stream, its answer not written yet)
                self.records.forget_if_done(stream)

    def _receive_whole_stream(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes from the carrier of an established connection over a reliable carrier,
        with a stream data handler and nothing buffered: when they are one record of
        one frame that opens the peer's next stream whole (a short call's request), the
        stream is opened and handed on here, as :meth:`_handle_records` and
        :meth:`_on_stream_frame` would (:meth:`_open_whole`), without their loops and
        checks; when it is one datagram (a quiet flow's), it goes to the datagram run
        handler as :meth:`_handle_records` would hand it on. Anything else goes the
        general way (:meth:`_receive`), so its errors and events are the general path's
        (tests/protocol/test_receive_whole_stream.py): already opened when it is one
        record of one frame (``open_lone_frame`` opened it), else unopened."""
        record = self._recv_aead.open_lone_frame(data)
        if record is None:
            self._receive(data, now)
            return
        run = record.datagrams
        if run is not None:
            self.records_received += 1
            if self._take_datagram_run(record.counter, run, now):
                return
            self.records_received -= 1  # (the general path counts it again)
        else:
            frame = record.frames[0]
            stream_id = frame.a
            table = self.streams
            if (
                frame.type == FRAME_STREAM_FIN
                and not frame.b
                and type(frame.data) is bytes
                and stream_id == (1 if table.is_client else 0) + 2 * table.peer_opened
                and stream_id not in self._streams
            ):
                self.records_received += 1
                if self._open_whole(stream_id, frame.data):
                    return
                self.records_received -= 1  # (the general path counts it again)
        # (the record as open_frames reports it: the general path takes it from there)
        self._receive(data, now, _tuple_new(OpenFramesResult, ([record], len(data), OK, None)))

    def _open_whole(self, stream_id: int, data: bytes) -> bool:
        """The peer's next stream, arriving whole: its bytes from offset 0 and its end
        in one frame (a short call's request). Opened, and its bytes and end handed on,
        as :meth:`_open_peer_streams_up_to` and the rest of :meth:`_on_stream_frame`
        would, without the checks and states a stream under way goes through; False,
        with nothing changed, when a rule there refuses it (the stream limit, a flow
        control window: the general path raises its error)."""
        table = self.streams
        n = len(data)
        if (
            n > table.stream_window
            or table.conn_received + n > table.conn_recv_limit
            or table.peer_opened >= table.local_max + table.peer_done
        ):
            return False
        # (StreamTable.open_peer_up_to's bookkeeping for one stream)
        untaken = table.untaken
        if untaken is None and table.defers_credit:
            untaken = table.untaken = set()
        table.by_id[stream_id] = Stream(
            stream_id,
            send_credit=table.send_window,
            recv_limit=table.stream_window,
            recv_state=RecvState.DONE,
            delivered=n,
            recv_highest=n,
            final_size=n,
        )
        table.peer_opened += 1
        if untaken is not None:
            untaken.add(stream_id)
        table.conn_received += n
        if n:
            self._lane_sid = stream_id
        self._deliver(StreamOpened(stream_id))
        handler = self.stream_data_handler
        if handler is not None and (self.is_client or self._state is not ConnState.AUTHENTICATING):
            handler(stream_id, data, True)
        else:
            self._deliver(StreamDataReceived(stream_id, data, True))
        return True

    def _on_reset(self, stream_id: int, error_code: int, final_size: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            table = self.streams
            table.check_not_unopened(stream_id)
            if table.is_ours(stream_id) or stream_id < table.peer_next_id():
                return
            stream = self._open_peer_streams_up_to(stream_id)
        if stream.final_size is not None and final_size != stream.final_size:
            # the FIN (or an earlier reset) fixed the stream's size: a reset may not
            # move it (QUIC's FINAL_SIZE_ERROR), nor charge the windows for bytes past it
            raise RemoteProtocolError(
                "reset with a final size other than the stream's", ErrorCode.FRAME_VALUE
            )
        if stream.recv_state in (RecvState.DONE, RecvState.RESET):
            return
        if final_size < stream.recv_highest:
            raise RemoteProtocolError("reset below data already received", ErrorCode.FRAME_VALUE)
        # the final size counts against the windows as data up to it would: the peer may
        # not claim to have sent more than it was allowed to
        if final_size > stream.recv_limit:
            raise _FlowControlViolation(f"stream {stream_id} exceeded its flow-control window")
        unsent = final_size - stream.recv_highest
        self.streams.conn_received += unsent
        if self.streams.conn_received > self.streams.conn_recv_limit:
            raise _FlowControlViolation("connection exceeded its flow-control window")
        stream.recv_highest = final_size
        stream.final_size = final_size  # later frames past it are violations
        stream.recv_state = RecvState.RESET
        # bytes never delivered will never be read: their credit comes back now (what was
        # delivered is still read, and acknowledged then). On a lossy carrier these
        # include bytes the reassembly held behind a gap, which it now lets go.
        undelivered = final_size - stream.delivered
        stream.reasm = None
        if undelivered:
            self.streams.conn_consumed += undelivered
            self.records.return_credit(None)
        self._deliver(StreamResetReceived(stream_id, error_code))
        self.records.forget_if_done(stream)

    # ----------------------------------------------------------------------------------
    # stream bookkeeping

    def _require_open(self) -> None:
        if self._state is ConnState.CLOSED:
            raise ConnectionClosed("the connection is closed")
        if self.records.send_aead is None:
            raise LocalProtocolError("the handshake has not finished")

    def stream_ended(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was opened (by either side) and the connection is done
        with it (forgotten: both ways ended)."""
        return self.streams.ended(stream_id)

    def _open_peer_streams_up_to(self, stream_id: int) -> Stream:
        """The peer's ``stream_id``, opened with every lower peer stream ID (reported
        in a StreamOpened each)."""
        deliver = self._deliver
        for sid in self.streams.open_peer_up_to(stream_id):
            deliver(StreamOpened(sid))
        return self._streams[stream_id]
