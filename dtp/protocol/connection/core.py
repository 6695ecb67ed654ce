"""The connection itself: :class:`Connection` (its state, and the sans-I/O interface: the
carrier's bytes in and out, events, timers and close; what arrives is dispatched by its
mixin :mod:`~dtp.protocol.connection.inbound`) and :func:`error_for_termination`. The
life of a connection is told in :mod:`dtp.protocol.connection`."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from dtp.errors import (
    CLOSE_PAYMENT_REQUIRED,
    CLOSE_SUBSCRIPTION_ENDED,
    ConnectionClosed,
    ConnectionLost,
    DecryptionError,
    DTPError,
    HandshakeError,
    PaymentRequired,
    RemoteProtocolError,
    ReplayError,
    SubscriptionEnded,
    refusal_error,
)
from dtp.identity.noise import Handshake
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_CLOSE,
    REC_HS_INIT,
    RawFrame,
)
from dtp.protocol.connection.config import ConnectionConfig
from dtp.protocol.connection.fast_receive import _FastReceive, give_back, lane_buffer
from dtp.protocol.connection.fast_send import _FastSend
from dtp.protocol.connection.handshake import _Handshake
from dtp.protocol.connection.inbound import _Inbound
from dtp.protocol.connection.lending import _Lending
from dtp.protocol.connection.records import _Records
from dtp.protocol.connection.retransmit import _Retransmit
from dtp.protocol.connection.streams import (
    Stream,
    _Streams,
    check_code,
    close_code_for,
    close_reason_bytes,
)
from dtp.protocol.events import (
    ConnectionTerminated,
    Event,
)
from dtp.protocol.recovery import MAX_PTO_COUNT, AckTracker, LossRecovery
from dtp.protocol.state import CloseCode, ConnState, RecvState

# one logger for the package, by its name (docs/architecture.md lists it)
logger = logging.getLogger("dtp.protocol.connection")


class Connection(
    _Handshake, _Streams, _FastSend, _FastReceive, _Lending, _Records, _Retransmit, _Inbound
):
    """One DTP connection, either side. See :mod:`dtp.protocol.connection`.

    This class holds its state (``__init__``, the public properties) and its sans-I/O
    interface (:meth:`receive_data`, :meth:`data_to_send`, :meth:`next_event`, the
    timers, :meth:`close`); the rest is in its mixins, each in a module of its own:
    :mod:`~dtp.protocol.connection.handshake`, :mod:`~dtp.protocol.connection.streams`,
    the fast paths (:mod:`~dtp.protocol.connection.fast_send`,
    :mod:`~dtp.protocol.connection.fast_receive`, :mod:`~dtp.protocol.connection.lending`),
    :mod:`~dtp.protocol.connection.records`, :mod:`~dtp.protocol.connection.retransmit`
    and :mod:`~dtp.protocol.connection.inbound`.
    """

    def __init__(self, config: ConnectionConfig, *, ephemeral_key: bytes, now: float) -> None:
        """``ephemeral_key``: 32 random bytes for the Noise ephemeral key (the caller
        draws them: the state machine draws no randomness itself)."""
        # (every value of the config is checked when the config is made: it is frozen,
        # and dataclasses.replace makes it anew)
        self.config = config
        self.is_client = config.is_client
        self._state = ConnState.CLIENT_HELLO if self.is_client else ConnState.SERVER_WAIT
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._inbuf = bytearray()
        self._created = now
        self._last_received = now
        self._last_sent = now
        # the keepalive interval in force: ours, or less once the peer's idle timeout
        # (its "it" parameter) says it would give up on a quiet connection sooner
        self._keepalive: float | None = config.keepalive_interval
        self._hs: Handshake
        self._hs_messages: list[tuple[int, bytes]] = []  # sent, for lossy-carrier resends
        self._hs_resend_at: float | None = None
        self._hs_resend_interval = 0.5
        self._hs_init: bytes | None = None  # server: the message 1 it answered
        self._send_aead: Any = None
        self._recv_aead: Any = None
        self._send_counter = 0
        self._lane: Any = None  # _core.Lane, made on first use
        self._lane_sid: int | None = None  # the stream that got data last (lane's guess)
        #: The lane while a stream is lent to it (:meth:`lend`), else None; with the
        #: stream's ID and a time no later than the connection's next timer.
        self.lent_lane: Any = None
        self.lent_stream_id: int | None = None
        self.lent_timer: float | None = None
        self.lent_can_recv = False  # whether the lane may take the lent stream's bytes
        self._lent: Stream | None = None
        self._early_records: list[bytes] = []
        self.peer_static: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.peer_address: str | None = None
        self.peer_public_key: bytes | None = None
        self._auth_proof: bytes | None = None
        self.pattern: str | None = None
        # streams and flow control
        self._streams: dict[int, Stream] = {}
        self._streams_dirty = False  # some stream may have something to send
        self._next_stream_id = 0 if self.is_client else 1
        self._peer_params: dict[str, Any] = {}
        self._conn_send_credit = 0
        self._conn_sent = 0  # new bytes sent over all streams
        self._conn_recv_limit = config.connection_window
        self._conn_received = 0  # highest offsets received, summed
        self._conn_consumed = 0
        # credit updates go out when less than this much of a window is left
        self._conn_credit_at = config.connection_window * 3 // 4
        self._stream_credit_at = config.stream_window * 3 // 4
        self._peer_max_streams = 0  # how many streams we may open in total
        self._opened_by_us = 0
        self._local_max_streams = config.max_streams  # total peer-opened streams allowed
        self._peer_opened = 0
        self._peer_streams_done = 0
        # peer streams the application has not taken yet (None: not tracked, their
        # credit returns as they end; see defer_stream_credit)
        self._untaken: set[int] | None = None
        # client, IK: stream 0 was opened by the acceptance; open_stream() hands it out
        self._first_stream_unclaimed = False
        # frames waiting for the next record
        self._ctrl: list[RawFrame] = []
        self._pending_max_data = False
        self._pending_stream_credit: set[int] = set()
        self._pending_max_streams = False
        self._held_events: list[Event] = []  # server: data before accept()
        self._held_bytes = 0  # what the held datagrams, controls and receipts weigh
        self._ping_pending = False
        self._close_frame: RawFrame | None = None
        # lossy carriers, after our CLOSE went out (QUIC's closing state): its plaintext,
        # sealed again until _closing_until in reply to what still arrives, after the
        # 1st, 2nd, 4th, 8th... input (_closing_next), and at _closing_resend_at, every
        # _closing_interval (a probe timeout) when nothing does (docs/protocol.md 3.1)
        self._closing: bytes | None = None
        self._closing_until = 0.0
        self._closing_resend_at = 0.0
        self._closing_interval = 0.0
        self._closing_inputs = 0
        self._closing_next = 1
        self._terminated: ConnectionTerminated | None = None
        # lossy carriers
        self._acks: AckTracker | None = None if config.reliable_carrier else AckTracker()
        # an ACK frame (encoded) that goes in the next stream record it fits in, while
        # _build_records packs the streams (lossy carriers)
        self._ack_lead: bytes | None = None
        self._recovery: LossRecovery | None = None if config.reliable_carrier else LossRecovery()
        if self._recovery is not None:
            self._recovery.last_ack_time = now
        # stream bytes sent and not acknowledged yet (kept for resending), over all
        # streams: packing stops at our own connection window of them, whatever credit
        # the peer grants (docs/protocol.md, section 9)
        self._unacked = 0
        self._unacked_blocked = False  # packing stopped there: an ACK making room says so
        self.stream_data_handler: Callable[[int, bytes | memoryview, bool], None] | None = None
        """When set (by the I/O adapters' Session), in-order stream bytes go straight to
        ``handler(stream_id, data, end_stream)`` instead of becoming StreamDataReceived
        events; ``data`` may be a view that is only valid during the call."""
        # statistics
        self.bytes_sent = 0
        self.bytes_received = 0
        self.records_sent = 0
        self.records_received = 0
        #: Datagrams dropped instead of sent because the carrier was backed up
        self.datagrams_send_dropped = 0
        #: Records of a lossy carrier dropped unacknowledged (to come again) because
        #: their stream data would have passed the reassembly's range limit
        self.records_dropped_fragmented = 0
        #: Datagram payload bytes sent plus received, for :attr:`usage`: a paid
        #: connection meters them as stream bytes (else datagrams moved any amount of
        #: data for free)
        self.datagram_bytes = 0

        if self.is_client:
            self._hs = Handshake.initiator(
                config.identity.noise_private_bytes(),
                ephemeral_key,
                remote_static=config.server_static,
            )
            message = self._hs.write_message(self._transport_params())
            self._send_handshake(REC_HS_INIT, message, now)
        else:
            self._hs = Handshake.responder(config.identity.noise_private_bytes(), ephemeral_key)

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is ConnState.ESTABLISHED

    @property
    def first_handshake_message(self) -> bytes | None:
        """Server: the handshake message 1 it answered, as it came (pattern byte first;
        :mod:`dtp.transport.admission` reads its ephemeral key); None before one came, and
        always on a client."""
        return self._hs_init

    @property
    def peer_params(self) -> dict[str, Any]:
        """The peer's validated transport parameters (empty before its handshake
        message arrives)."""
        return dict(self._peer_params)

    @property
    def usage(self) -> tuple[int, int]:
        """What paid connections meter (docs/escrow.md §6.1): (application bytes sent
        plus received -- stream bytes over all streams, and datagram payloads as they are
        queued to go out or accepted from an authenticated record; streams opened by the
        client)."""
        client_streams = self._opened_by_us if self.is_client else self._peer_opened
        if self.lent_lane is not None:
            # read where the loan keeps them, without ending it: metering threads read
            # this without the adapter's lock (datagrams never move on the lane)
            f = self.lent_lane.flow
            return f.conn_sent + f.rx.conn_received + self.datagram_bytes, client_streams
        return self._conn_sent + self._conn_received + self.datagram_bytes, client_streams

    @property
    def peer_connection_id(self) -> bytes | None:
        """Server side: the ledger connection ID (32 bytes) the client named in its
        handshake, if any. Authenticated once the client's AUTH proof is verified."""
        cid: bytes | None = self._peer_params.get("cid")
        return cid

    @property
    def peer_port(self) -> int | None:
        """Server side: the DTP port the client named in its handshake, if any."""
        port: int | None = self._peer_params.get("port")
        return port

    @property
    def closed(self) -> bool:
        return self._state is ConnState.CLOSED

    @property
    def closing(self) -> bool:
        """Lossy carriers: our CLOSE went out and is still sent again, at each probe
        timeout and in reply to what arrives, until the closing period ends (at a
        :meth:`handle_timer` call; docs/protocol.md 3.1). Meanwhile a driver keeps the
        carrier open, reads it and runs the timers: closed, a carrier that signals its
        end would tell the peer of the end, and not the CLOSE it may have lost. The peer
        closing its side ends the wait: it has the CLOSE, or closed too. Always False
        over a reliable carrier."""
        return self._closing is not None

    @property
    def termination(self) -> ConnectionTerminated | None:
        """The final event once the connection is closed."""
        return self._terminated

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes from the carrier (any split: whole, partial, many records)."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is ConnState.CLOSED or not data:
            if self._closing is not None and data:
                self._input_while_closing(now)
            return
        if self._acks is None:
            # lossy carriers count only what authenticates (_handle_records): anyone can
            # send a datagram, and forged ones would hold off the idle timeout for good
            self._last_received = now
        self.bytes_received += len(data)
        sid = self._lane_sid
        if (
            sid is not None
            and self.stream_data_handler is not None
            and self._acks is None
            and self._state is ConnState.ESTABLISHED
        ):
            # the stream that got data last probably gets this too: the lane opens its
            # run of records into one buffer, for one handler call
            stream = self._streams.get(sid)
            if (
                stream is not None
                and stream.recv_state is RecvState.OPEN
                and stream.recv_highest == stream.delivered
            ):
                buf = lane_buffer(len(data))
                try:
                    self._lane_feed(memoryview(data), stream, buf, now, True)
                finally:
                    give_back(buf)
                return
        self._receive(data, now)

    def _receive(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """:meth:`receive_data` after its bookkeeping."""
        if self._state is ConnState.CLOSED or not data:
            return
        try:
            if self._recv_aead is not None:
                if self._inbuf:
                    data = self._complete_partial(data, now)
                if not self._inbuf and data and not self.closed:
                    # whole records are opened straight from the caller's buffer; only
                    # a trailing partial record (or anything unusual) is copied
                    data = self._process_direct(data, now)
                if not data or self.closed:
                    return
            self._inbuf += data
            self._process_input(now)
        except HandshakeError as exc:
            self._fail(CloseCode.HANDSHAKE_FAILED, str(exc), now)
        except DecryptionError:
            self._fail(CloseCode.DECRYPT_ERROR, "record failed authentication", now)
        except ReplayError as exc:
            self._fail(CloseCode.REPLAY_DETECTED, str(exc), now)
        except RemoteProtocolError as exc:
            self._fail(close_code_for(exc), str(exc), now)

    def receive_datagram(self, datagram: bytes, now: float) -> None:
        """Feed one datagram from a message-oriented carrier (one or more whole
        records). A datagram that does not parse is dropped, as lossy carriers must."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is ConnState.CLOSED:
            if self._closing is not None:
                self._input_while_closing(now)
            return
        self.receive_data(datagram, now)
        if self._inbuf and not self.closed:
            # a datagram is whole: any leftover is a truncated record, i.e. damage
            logger.debug("dropping %d trailing bytes of a datagram", len(self._inbuf))
            self._inbuf.clear()

    def data_to_send(self, now: float) -> bytes:
        """Bytes to hand to the carrier now (possibly empty)."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is not ConnState.CLOSED or self._close_frame is not None:
            self._build_records(now)
        out = self._out
        if not out:
            return b""
        if len(out) == 1:
            data = out.pop()
            self._last_sent = now
            self.bytes_sent += len(data)
            return data
        joined = b"".join(out)
        out.clear()
        self._last_sent = now
        self.bytes_sent += len(joined)
        return joined

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Like :meth:`data_to_send`, but as separate records for datagram carriers."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is not ConnState.CLOSED or self._close_frame is not None:
            self._build_records(now)
        out = [piece for blob in self._out for piece in _split_records(blob)]
        self._out.clear()
        if out:
            self._last_sent = now
            self.bytes_sent += sum(map(len, out))
        return out

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called next (None: no timer)."""
        if self.lent_lane is not None:
            # no later than the real one (sends and receives only move timers later),
            # and read-only: timer threads ask without the adapter's lock
            return self.lent_timer
        if self._state is ConnState.CLOSED:
            if self._closing is not None:
                return min(self._closing_resend_at, self._closing_until)
            return None
        config = self.config
        if (
            self._state is ConnState.ESTABLISHED
            and self._acks is None
            and self._hs_resend_at is None
        ):
            # the common case, without building a list: idle timeout and keepalive
            idle = self._last_received + config.idle_timeout
            if self._keepalive:
                keepalive = self._last_sent + self._keepalive
                return keepalive if keepalive < idle else idle
            return idle
        deadlines = [self._last_received + self.config.idle_timeout]
        if self._state is not ConnState.ESTABLISHED:
            deadlines.append(self._created + self.config.handshake_timeout)
        if self._state is ConnState.ESTABLISHED and self._keepalive:
            deadlines.append(self._last_sent + self._keepalive)
        if self._hs_resend_at is not None:
            deadlines.append(self._hs_resend_at)
        if self._acks is not None and self._acks.ack_deadline is not None:
            deadlines.append(self._acks.ack_deadline)
        if self._recovery is not None:
            for d in (self._recovery.loss_deadline(), self._recovery.pto_deadline()):
                if d is not None:
                    deadlines.append(d)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Act on whatever timers have expired at ``now``."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is ConnState.CLOSED:
            if self._closing is not None:
                self._closing_timer(now)
            return
        if now >= self._last_received + self.config.idle_timeout:
            self._terminate(CloseCode.IDLE_TIMEOUT, "idle timeout", by_peer=False, now=now)
            return
        if self._state is not ConnState.ESTABLISHED and (
            now >= self._created + self.config.handshake_timeout
        ):
            self._fail(CloseCode.HANDSHAKE_FAILED, "handshake timed out", now, send=False)
            return
        if (
            self._state is ConnState.ESTABLISHED
            and self._keepalive
            and now >= self._last_sent + self._keepalive
        ):
            self._ping_pending = True
        if self._hs_resend_at is not None and now >= self._hs_resend_at:
            self._resend_handshake()
            self._hs_resend_interval = min(self._hs_resend_interval * 2, 8.0)
            self._hs_resend_at = now + self._hs_resend_interval
        if self._recovery is not None:
            lost = self._recovery.detect_lost(now)
            pto = self._recovery.pto_deadline()
            if pto is not None and now >= pto:
                recovery = self._recovery
                if recovery.pto_count == 0:
                    recovery.probing_since = now
                # (the idle timeout counted from when the probing began, too: counted
                # from the last acknowledgement alone, a side that had sent nothing to
                # acknowledge for a while closed a few seconds into a short outage)
                if recovery.pto_count >= MAX_PTO_COUNT and now >= (
                    max(recovery.last_ack_time, recovery.probing_since) + self.config.idle_timeout
                ):
                    # A peer that goes on sending (its PINGs keep the idle timer alive)
                    # but acknowledges nothing of ours is as gone as a silent one: held
                    # on, our data would be probed for, and kept, for good. (Never
                    # before the idle timeout: a link down both ways gets as long.)
                    self._fail(
                        CloseCode.IDLE_TIMEOUT,
                        f"nothing acknowledged through {MAX_PTO_COUNT} probe timeouts "
                        f"and {self.config.idle_timeout:g} s",
                        now,
                    )
                    return
                lost += self._recovery.on_pto()
                # the probe must elicit an ACK even when the records it gives up held
                # nothing to send again (datagrams, ACK-only): else nothing goes out,
                # the next probe waits twice as long, and data behind them stalls
                self._ping_pending = True
            self._requeue(lost)

    def ping(self) -> None:
        """Send a PING (keeps the peer's idle timer alive)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        self._ping_pending = True

    def carrier_lost(self, reason: str = "the peer vanished") -> None:
        """The carrier failed or was closed under us: end the connection at once."""
        if self.lent_lane is not None:
            self._take_back()
        self._terminate(CloseCode.CONNECTION_LOST, reason, by_peer=True, now=None)

    def close(self, error_code: int = CloseCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection with a code and reason; idempotent."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is ConnState.CLOSED:
            return
        check_code(error_code)
        if self._send_aead is not None:
            self._close_frame = RawFrame(
                FRAME_CLOSE, int(error_code), 0, 0, close_reason_bytes(reason)
            )
        self._terminate(int(error_code), reason, by_peer=False, now=None)


def _split_records(blob: bytes) -> list[bytes]:
    batch = _core.parse_records(blob)
    return [blob[r.offset : r.offset + 12 + r.body_len] for r in batch.records]


def error_for_termination(event: ConnectionTerminated) -> DTPError | None:
    """The exception an I/O adapter raises after ``event`` (None: a clean EOF)."""
    code, reason = event.error_code, event.reason
    if code == CloseCode.NO_ERROR:
        return None
    if code == CloseCode.REFUSED and event.by_peer:
        return refusal_error(reason, code)
    if code == CloseCode.HANDSHAKE_FAILED:
        return HandshakeError(reason or "handshake failed")
    if code == CloseCode.CONNECTION_LOST:
        return ConnectionLost(reason or "the connection was lost")
    if code == CloseCode.IDLE_TIMEOUT:
        # the connection is dead, not a call slow: a TimeoutError here, raised again by
        # every later call at once, made "except TimeoutError: continue" loops spin
        return ConnectionLost(
            "the peer stopped answering (nothing came for longer than the idle timeout)"
        )
    if code == CloseCode.DECRYPT_ERROR and not event.by_peer:
        return DecryptionError()
    if 2 <= code <= 8 and not event.by_peer:
        return RemoteProtocolError(f"peer violated the protocol: {reason}")
    if code == CLOSE_PAYMENT_REQUIRED and event.by_peer:
        return PaymentRequired(reason or "payment required", code)
    if code == CLOSE_SUBSCRIPTION_ENDED and event.by_peer:
        return SubscriptionEnded(reason or "the subscription is over", code)
    if code >= CloseCode.APPLICATION or not event.by_peer:
        return ConnectionClosed(reason, code)
    return ConnectionLost(f"peer closed the connection: {reason} (code {code})")
