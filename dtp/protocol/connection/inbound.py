"""What arrives on a connection (:class:`_Inbound`, a mixin of
:class:`~dtp.protocol.connection.core.Connection`): records opened from the carrier's
bytes and their frames dispatched to the parts that act on them, input after our CLOSE
on a lossy carrier, and the failures and termination that end a connection."""

from __future__ import annotations

import logging

from dtp.errors import DecryptionError, ErrorCode, RemoteProtocolError, ReplayError
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
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
    FULL,
    STOP,
    OpenedFrames,
    RawFrame,
)
from dtp.protocol.connection.base import _ConnectionState
from dtp.protocol.connection.streams import close_reason_bytes, send_done
from dtp.protocol.events import (
    ConnectionTerminated,
    DatagramReceived,
    ReceiptReceived,
    SendWindowOpened,
    StopSendingReceived,
)
from dtp.protocol.state import ConnState, ControlKind, SendState

# the package's one logger (the same object as core.py's: logging keeps one per name)
logger = logging.getLogger("dtp.protocol.connection")

# core statuses for a record header that does not parse: before any authentication
_BAD_HEADER = frozenset({ErrorCode.RECORD_KIND, ErrorCode.RECORD_FLAGS, ErrorCode.RECORD_SIZE})


class _Inbound(_ConnectionState):
    """What arrives on a :class:`~dtp.protocol.connection.core.Connection` (a mixin):
    :meth:`_process_input` opens records (handshake records go to the handshake part),
    :meth:`_handle_records` delivers the in-order stream bytes of a reliable carrier at
    once and hands every other record to :meth:`_handle_record` and each of its frames
    to :meth:`_handle_frame`; :meth:`_fail` and :meth:`_terminate` end the connection.
    """

    def _input_while_closing(self, now: float) -> None:
        """Lossy carriers: something arrived after our CLOSE went out. The peer sends on
        because the CLOSE was lost, perhaps: it goes again (alone, in a new record), as
        QUIC's closing state does -- without it the peer ended only at its idle timeout,
        never learning the code and reason. For about three probe timeouts, and
        rate-limited: after the 1st, 2nd, 4th, 8th... input, whatever it is (what
        arrives is not opened: anyone could have sent it)."""
        if now >= self._closing_until:
            self._closing = None  # the closing period is over
            return
        self._closing_inputs += 1
        if self._closing_inputs < self._closing_next:
            return
        self._closing_next *= 2
        assert self._closing is not None
        self._seal_plaintexts([self._closing], [[]], [False], now)

    def _closing_timer(self, now: float) -> None:
        """Lossy carriers, our CLOSE out: the closing period ends at ``_closing_until``;
        before it, the CLOSE goes again (alone, in a new record) at every probe timeout,
        whatever arrives or not. A peer with nothing to send, which would never make
        :meth:`_input_while_closing` answer, still gets it, unless the carrier loses
        each copy (docs/protocol.md 3.1)."""
        if now >= self._closing_until:
            self._closing = None
            return
        if now < self._closing_resend_at:
            return
        self._closing_resend_at = now + self._closing_interval
        assert self._closing is not None
        self._seal_plaintexts([self._closing], [[]], [False], now)

    def _process_input(self, now: float) -> None:
        while self._inbuf and self._state is not ConnState.CLOSED:
            if self._recv_aead is None:
                if not self._process_handshake_records(now):
                    return
                continue
            result = self._recv_aead.open_frames(self._inbuf)
            if not self._handle_records(result.records, now):
                return
            del self._inbuf[: result.consumed]
            if result.error is not None:
                if not self.config.reliable_carrier:
                    if isinstance(result.error, DecryptionError):
                        # damage on a lossy carrier: drop the record, keep the connection
                        self._drop_bad_record()
                        continue
                    if result.status in _BAD_HEADER:
                        # a header that does not parse (anyone can send a datagram, and
                        # nothing in it is authenticated): the rest of the datagram is
                        # dropped, as a lossy carrier drops what it cannot take
                        logger.debug("dropping a datagram: %s", result.error)
                        self._inbuf = bytearray()  # rebind: the parser's view may live on
                        return
                raise result.error
            if result.status == STOP:
                self._handle_late_handshake_record(now)
                continue
            if result.status == FULL:
                continue
            return

    def _drop_bad_record(self) -> None:
        batch = _core.parse_records(self._inbuf, max_records=1)
        skip = (12 + batch.records[0].body_len) if batch.records else len(self._inbuf)
        del self._inbuf[:skip]

    def _handle_records(self, records: list[OpenedFrames], now: float) -> bool:
        """Act on opened records; False if one of them ended the connection.

        Records holding one in-order STREAM frame (the bulk of any transfer) are
        delivered right here when :meth:`_fast_stream_frame` would accept them; every
        other record goes through :meth:`_handle_record`."""
        lossy = self._acks is not None
        fast = not lossy and self.stream_data_handler is not None
        for record in records:
            if record.replayed:
                if self.config.reliable_carrier:
                    raise ReplayError(
                        f"record {record.counter} out of order on an in-order carrier "
                        "(replayed, or records before it removed or moved on the way)"
                    )
                continue  # lossy carriers duplicate records: drop silently
            self.records_received += 1
            if lossy:
                self._last_received = now
            frames = record.frames
            if fast and len(frames) == 1:
                frame = frames[0]
                if frame.type == FRAME_STREAM and self._fast_stream_frame(
                    frame.a, frame.b, frame.data
                ):
                    continue
            self._handle_record(record.counter, frames, now)
            if self._state is ConnState.CLOSED:  # a frame in the record ended it
                return False
        return True

    def _handle_record(self, counter: int, frames: list[RawFrame], now: float) -> None:
        """Act on one opened record's frames (their data may be views into the AEAD's
        scratch buffer: whatever outlives this call is copied)."""
        if self.is_client and self._hs_resend_at is not None:
            # the server answered with sealed data: our handshake messages arrived
            self._hs_resend_at = None
            self._hs_messages.clear()
        if self._state is ConnState.AUTHENTICATING:
            if self.is_client:
                if self._acks is not None and _stream_frame_before_accept(frames):
                    # a lossy carrier lost the ACCEPT's record or brought it late: the
                    # server's first stream frames got here first. Dropped
                    # unacknowledged, they are sent again; taken, stream data would be
                    # data before authentication, and a reset of stream 0 (not open
                    # before the ACCEPT) would be lost.
                    return
            elif self.peer_address is None and not _allowed_before_auth(frames):
                # XX: the client's first DATA record opens with its AUTH. Taken, what
                # comes before it had us answer (a STOP_SENDING's reset) a peer not yet
                # authenticated, and reach the application after accept() as if the
                # authenticated client had sent it.
                if self._acks is None:
                    raise RemoteProtocolError(
                        "a frame before the client's AUTH", ErrorCode.FRAME_VALUE
                    )
                # A lossy carrier lost the AUTH's record or brought it late: this one is
                # dropped whole and unacknowledged, so the client sends its frames again.
                return
        ack_eliciting = False
        try:
            for frame in frames:
                ftype = frame.type
                if ftype not in (FRAME_ACK, FRAME_PADDING):
                    ack_eliciting = True
                if ftype == FRAME_STREAM and self._fast_stream_frame(frame.a, frame.b, frame.data):
                    continue
                self._handle_frame(frame, now)
                if self._state is ConnState.CLOSED:
                    return
        except RemoteProtocolError as exc:
            if not (
                exc.code == ErrorCode.REASM_FRAGMENTED
                and self._acks is not None
                and _repeat_safe_before(frames, frame)
            ):
                raise
            # A lossy carrier: an honest sender with many small records in flight,
            # some of them lost, outran the reassembly's range limit. The record is
            # dropped unacknowledged (its STREAM frame changed nothing, and what came
            # before it in the record is harmless to take again), so the sender sends
            # it again -- by then the gaps before it are filled. The limit still bounds
            # what a peer can make us buffer.
            self.records_dropped_fragmented += 1
            return
        if self._acks is not None:
            self._acks.on_record(counter, ack_eliciting, now)

    def _handle_frame(self, frame: RawFrame, now: float) -> None:
        ftype = frame.type
        if frame.data and type(frame.data) is not bytes:
            frame = frame._replace(data=bytes(frame.data))  # a view into scratch space
        if ftype in (FRAME_STREAM, FRAME_STREAM_FIN):
            self._on_stream_frame(frame.a, frame.b, frame.data, ftype == FRAME_STREAM_FIN)
        elif ftype == FRAME_ACK:
            if self._recovery is not None:
                if frame.ranges and frame.ranges[0][1] >= self._send_counter:
                    # recovery clips it harmlessly, but no honest peer acknowledges a
                    # record we never sealed (QUIC's PROTOCOL_VIOLATION as well)
                    raise RemoteProtocolError(
                        f"ACK of record {frame.ranges[0][1]}, which was never sent",
                        ErrorCode.FRAME_VALUE,
                    )
                acked, lost = self._recovery.on_ack(frame.ranges, frame.c, now)
                if acked:
                    unacked = self._unacked
                    self._on_acked(acked)
                    if self._unacked_blocked and self._unacked < unacked:
                        self._unacked_blocked = False
                        self._streams_dirty = True
                        self._events.append(SendWindowOpened(None))
                self._requeue(lost)
        elif ftype == FRAME_MAX_DATA:
            if frame.a > self._conn_send_credit:
                self._conn_send_credit = frame.a
                self._streams_dirty = True
                self._events.append(SendWindowOpened(None))
        elif ftype == FRAME_MAX_STREAM_DATA:
            self._check_not_unopened(frame.a)
            stream = self._streams.get(frame.a)
            if stream is not None and frame.b > stream.send_credit:
                stream.send_credit = frame.b
                self._streams_dirty = True
                self._events.append(SendWindowOpened(frame.a))
        elif ftype == FRAME_MAX_STREAMS:
            self._peer_max_streams = max(self._peer_max_streams, frame.a)
        elif ftype == FRAME_RESET_STREAM:
            self._on_reset(frame.a, frame.b, frame.c)
        elif ftype == FRAME_STOP_SENDING:
            self._check_not_unopened(frame.a)
            stream = self._streams.get(frame.a)
            # Nothing to stop once our sending is done (RFC 9000 3.5, "Data Recvd"):
            # the peer has every byte and the FIN, and ignores a RESET_STREAM then
            if (
                stream is not None
                and stream.send_state is not SendState.RESET
                and not send_done(stream)
            ):
                self.reset_stream(frame.a, frame.b)
                self._deliver(StopSendingReceived(frame.a, frame.b))
        elif ftype == FRAME_CONTROL:
            self._on_control(frame.a, frame.data)
        elif ftype == FRAME_CLOSE:
            reason = frame.data.decode("utf-8", "replace")
            self._terminate(frame.a, reason, by_peer=True, now=now)
        elif ftype == FRAME_RECEIPT:
            self._deliver(ReceiptReceived(frame.data))
        elif ftype == FRAME_DATAGRAM:
            # metered here, before any queue drops it: the sender counted it as sent, and
            # both sides' usage must agree for receipts to match what the server saw
            self.datagram_bytes += len(frame.data)
            self._deliver(DatagramReceived(frame.data))
        # PING and PADDING need nothing beyond the idle timer and the ACK

    def _fail(self, code: int, reason: str, now: float, send: bool = True) -> None:
        logger.debug("closing connection: %s (%s)", reason, code)
        if send and self._send_aead is not None:
            self._close_frame = RawFrame(FRAME_CLOSE, int(code), 0, 0, close_reason_bytes(reason))
        self._terminate(code, reason, by_peer=False, now=now)

    def _terminate(self, code: int, reason: str, by_peer: bool, now: float | None) -> None:
        if self._state is ConnState.CLOSED:
            return
        self._state = ConnState.CLOSED
        self._held_events.clear()
        self._inbuf = bytearray()  # rebind, not clear(): a decoder may still view the old one
        self._terminated = ConnectionTerminated(code, reason, by_peer)
        self._events.append(self._terminated)


_STREAM_FRAMES = frozenset(
    {FRAME_STREAM, FRAME_STREAM_FIN, FRAME_RESET_STREAM, FRAME_STOP_SENDING, FRAME_MAX_STREAM_DATA}
)


def _stream_frame_before_accept(frames: list[RawFrame]) -> bool:
    """Whether a frame about a stream comes before any ACCEPT in ``frames``."""
    for frame in frames:
        if frame.type == FRAME_CONTROL and frame.a == ControlKind.ACCEPT:
            return False
        if frame.type in _STREAM_FRAMES:
            return True
    return False


#: The frames an XX server takes before the client's AUTH (section 8 of the spec).
_BEFORE_AUTH = frozenset({FRAME_ACK, FRAME_PADDING, FRAME_PING, FRAME_CLOSE})


def _allowed_before_auth(frames: list[RawFrame]) -> bool:
    """Whether every frame before the first AUTH in ``frames`` (all of them if there is
    none) is one a server takes from a client not yet authenticated."""
    for frame in frames:
        if frame.type == FRAME_CONTROL and frame.a == ControlKind.AUTH:
            return True
        if frame.type not in _BEFORE_AUTH:
            return False
    return True


#: Frames whose effect is the same when a copy comes again: what a record holds before
#: a STREAM frame it is dropped at may be taken twice (the record is sent again).
#: (RESET_STREAM and STOP_SENDING are no-ops once taken; a DATAGRAM is never resent.)
_REPEAT_SAFE = frozenset(
    {
        FRAME_PADDING,
        FRAME_PING,
        FRAME_ACK,
        FRAME_STREAM,
        FRAME_STREAM_FIN,
        FRAME_MAX_DATA,
        FRAME_MAX_STREAM_DATA,
        FRAME_MAX_STREAMS,
        FRAME_RESET_STREAM,
        FRAME_STOP_SENDING,
        FRAME_DATAGRAM,
    }
)


def _repeat_safe_before(frames: list[RawFrame], failed: RawFrame) -> bool:
    """Whether every frame of ``frames`` before ``failed`` is in :data:`_REPEAT_SAFE`."""
    for frame in frames:
        if frame is failed:
            return True
        if frame.type not in _REPEAT_SAFE:
            return False
    return False
