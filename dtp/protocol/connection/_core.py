"""The connection itself: :class:`Connection` -- its state machine, the sans-I/O
interface, the handshake and the server's verdict, and the dispatch of what arrives --
and :func:`error_for_termination`; the life of a connection is told in
:mod:`dtp.protocol.connection`.

What has state of its own is an object the connection holds and calls one way, which
never calls back (the connection acts on what they return):
:class:`~dtp.protocol.connection._stream_table.StreamTable` (``self.streams``) and
:class:`~dtp.protocol.connection._records.RecordLayer` (``self.records``). The rest is
in two mixins over the connection's own fields (declared once in
:mod:`~dtp.protocol.connection._base`): :mod:`~dtp.protocol.connection._streams` and
:mod:`~dtp.protocol.connection._fast_paths`."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from dtp.errors import (
    CLOSE_PAYMENT_REQUIRED,
    CLOSE_SUBSCRIPTION_ENDED,
    ConnectionClosed,
    ConnectionLost,
    DecryptionError,
    DTPError,
    ErrorCode,
    HandshakeError,
    LocalProtocolError,
    PaymentRequired,
    RemoteProtocolError,
    ReplayError,
    SubscriptionEnded,
    refusal_error,
)
from dtp.identity._noise import (
    ANY_SCHEME_VERSION,
    AUTH_CONTEXT,
    AUTH_EARLY_CONTEXT,
    PATTERN_IK,
    Handshake,
    SuiSigner,
    check_auth_proof,
    is_ed25519_proof,
    make_auth_proof,
)
from dtp.identity._zklogin import ZkLoginCheck
from dtp.identity.keys import HostIdentity
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
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    FULL,
    REC_DATA,
    REC_HS_FINAL,
    REC_HS_INIT,
    REC_HS_RESP,
    STOP,
    OpenedFrames,
    OpenFramesResult,
    RawFrame,
)
from dtp.protocol._events import (
    ConnectionAccepted,
    ConnectionTerminated,
    ControlReceived,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    PeerAuthenticated,
    ReceiptReceived,
    SendWindowOpened,
    StopSendingReceived,
)
from dtp.protocol._recovery import MAX_PTO_COUNT
from dtp.protocol._state import (
    CONN_CLOSED,
    CONN_ESTABLISHED,
    RECV_OPEN,
    CloseCode,
    ConnState,
    ControlKind,
    SendState,
    transition,
)
from dtp.protocol.connection._config import (
    MAX_PENDING_EARLY_RECORDS,
    MIN_KEEPALIVE,
    TRANSPORT_VERSION,
    ConnectionConfig,
    first_handshake_resend,
    next_handshake_resend,
    parse_params,
)
from dtp.protocol.connection._fast_paths import _FastPaths
from dtp.protocol.connection._frame_order import (
    allowed_before_auth,
    repeat_safe_before,
    stream_frame_before_accept,
)
from dtp.protocol.connection._records import RecordLayer
from dtp.protocol.connection._stream_table import Stream, StreamTable, send_done
from dtp.protocol.connection._streams import (
    _Streams,
    check_code,
    close_code_for,
    close_reason_bytes,
)

# one logger for the package, by its name (docs/architecture.md lists it)
logger = logging.getLogger("dtp.protocol.connection")


# core statuses for a record header that does not parse: before any authentication
_BAD_HEADER = frozenset({ErrorCode.RECORD_KIND, ErrorCode.RECORD_FLAGS, ErrorCode.RECORD_SIZE})


# a server's packed transport parameters by (id of its config, version): _transport_params
_SERVER_PARAMS: dict[tuple[int, int], tuple[ConnectionConfig, bytes]] = {}
_SERVER_PARAMS_KEPT = 32

# the handshake record each state waits for (built once: each handshake message looks)
_HANDSHAKE_KIND = {
    ConnState.SERVER_WAIT: REC_HS_INIT,
    ConnState.CLIENT_HELLO: REC_HS_RESP,
    ConnState.SERVER_FINAL: REC_HS_FINAL,
}


class Connection(_Streams, _FastPaths):
    """One DTP connection, either side (see :mod:`dtp.protocol.connection`): its state,
    its sans-I/O interface, the handshake and the dispatch of what arrives; its streams
    are :attr:`streams`, its record layer :attr:`records`, the rest its mixins
    :mod:`~dtp.protocol.connection._streams` and
    :mod:`~dtp.protocol.connection._fast_paths`."""

    # The attributes __init__ and the mixins set, as slots (an instance dict took 1.6
    # KiB a connection: idle_memory_10k). The mixins declare none, so an instance still
    # has a ``__dict__`` (made only when something else is set: a subclass's attribute,
    # a test's patch) and a ``__weakref__`` (the replay guard holds the connection
    # deciding a key weakly).
    __slots__ = (
        "_auth_proof",
        "_created",
        "_early_records",
        "_events",
        "_held_bytes",
        "_held_events",
        "_hs",
        "_hs_final",
        "_hs_init",
        "_hs_messages",
        "_hs_resend_at",
        "_hs_resend_interval",
        "_inbuf",
        "_keepalive",
        "_lane",
        "_lane_sid",
        "_last_received",
        "_last_sent",
        "_lent",
        "_lossy",
        "_peer_params",
        "_recv_aead",
        "_state",
        "_streams",
        "_terminated",
        "bytes_received",
        "bytes_sent",
        "config",
        "datagram_bytes",
        "datagram_handler",
        "datagram_run_handler",
        "datagrams_send_dropped",
        "handshake_hash",
        "is_client",
        "lent_can_recv",
        "lent_lane",
        "lent_stream_id",
        "lent_timer",
        "pattern",
        "peer_address",
        "peer_public_key",
        "peer_scheme",
        "peer_static",
        "records",
        "records_dropped_fragmented",
        "records_received",
        "stream_data_handler",
        "streams",
        "transport_version",
    )

    def __init__(self, config: ConnectionConfig, *, ephemeral_key: bytes, now: float) -> None:
        """``ephemeral_key``: 32 random bytes for the Noise ephemeral key (the caller
        draws them: the state machine draws no randomness itself)."""
        # (every value of the config is checked when the config is made: it is frozen,
        # and dataclasses.replace makes it anew)
        self.config = config
        self.is_client = config.is_client
        self._state = ConnState.CLIENT_HELLO if self.is_client else ConnState.SERVER_WAIT
        self._events: deque[Event] = deque()
        self._inbuf = bytearray()
        self._created = now
        self._last_received = now
        self._last_sent = now
        # the keepalive interval in force: ours, or less once the peer's idle timeout
        # (its "it" parameter) says it would give up on a quiet connection sooner
        self._keepalive: float | None = config.keepalive_interval
        # the Noise state until the handshake ends (then dropped: nothing reads it, and
        # the transport keys it holds need not outlive the AEADs made from them)
        self._hs: Handshake | None
        # sent, for lossy-carrier resends (kept over those carriers only): a tuple, so
        # that a connection holds no list of its own for its whole life (one object
        # fewer for the collector)
        self._hs_messages: tuple[tuple[int, bytes], ...] = ()
        self._hs_resend_at: float | None = None
        self._hs_resend_interval = first_handshake_resend(config)
        self._hs_init: bytes | None = None  # server: the message 1 it answered
        self._hs_final: bytes | None = None  # XX server, lossy: the message 3 it took
        self._recv_aead: Any = None
        self._lane: Any = None  # _core.Lane, made on first use
        self._lane_sid: int | None = None  # the stream that got data last (lane's guess)
        #: The lane while a stream is lent to it (:meth:`lend`), else None; with the
        #: stream's ID and a time no later than the connection's next timer.
        self.lent_lane: Any = None
        self.lent_stream_id: int | None = None
        self.lent_timer: float | None = None
        self.lent_can_recv = False  # whether the lane may take the lent stream's bytes
        self._lent: Stream | None = None
        self._early_records: tuple[bytes, ...] = ()  # (lossy carriers; a few at most)
        self.peer_static: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.peer_address: str | None = None
        self.peer_public_key: bytes | None = None
        self.peer_scheme: str | None = None
        #: The transport version in force, once both sides' parameters are known
        #: (docs/protocol.md 8.2): 1 or 2.
        self.transport_version: int | None = None
        self._auth_proof: bytes | None = None
        self.pattern: str | None = None
        # streams and connection-level flow control: which streams exist, how many each
        # side may open, and the conn_* counts are the table's; its dict is bound here
        # too, for the per-record paths
        self.streams = StreamTable(
            is_client=self.is_client,
            max_streams=config.max_streams,
            stream_window=config.stream_window,
            connection_window=config.connection_window,
        )
        self._streams: dict[int, Stream] = self.streams.by_id
        # the records we send: what waits for the next one, sealing and the send
        # counter, and on lossy carriers acknowledgements, losses and probes
        self.records = RecordLayer(config, self.streams, now)
        # a lossy carrier: records are acknowledged and sent again (read per record)
        self._lossy = not config.reliable_carrier
        self._peer_params: dict[str, Any] = {}
        # server: data before accept(), made at the first (most connections hold none)
        self._held_events: list[Event] | None = None
        self._held_bytes = 0  # what the held datagrams, controls and receipts weigh
        self._terminated: ConnectionTerminated | None = None
        self.stream_data_handler: Callable[[int, bytes | memoryview, bool], None] | None = None
        """When set (by the I/O adapters' Session), in-order stream bytes go straight to
        ``handler(stream_id, data, end_stream)`` instead of becoming StreamDataReceived
        events; ``data`` may be a view that is only valid during the call."""
        self.datagram_handler: Callable[[bytes], None] | None = None
        """When set (by the I/O adapters' Session), each DATAGRAM frame of an established
        connection goes straight to ``handler(data)`` instead of becoming a
        DatagramReceived event -- while no event waits, so that the order of datagrams
        and events holds for a handler whose datagrams are taken before the events."""
        self.datagram_run_handler: Callable[[list[bytes]], None] | None = None
        """With :attr:`datagram_handler` (and under the same rule), a record's DATAGRAM
        frames go to ``handler(payloads)`` in one call, when the record holds nothing
        else (the list is the handler's to keep)."""
        # statistics
        self.bytes_sent = 0
        self.bytes_received = 0
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
            message = self._handshake().write_message(self._transport_params())
            self._send_handshake(REC_HS_INIT, message, now)
        else:
            self._hs = Handshake.responder(config.identity.noise_private_bytes(), ephemeral_key)

    def _handshake(self) -> Handshake:
        hs = self._hs
        if hs is None:
            raise LocalProtocolError("the handshake is over")
        return hs

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is ConnState.ESTABLISHED

    @property
    def first_handshake_message(self) -> bytes | None:
        """Server: the handshake message 1 it answered, as it came (pattern byte first;
        :mod:`dtp.transport._admission` reads its ephemeral key); None before one came, and
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
        queued to go out or accepted from an authenticated record; requests,
        :meth:`requests_made`)."""
        # (both inlined: a paid connection reads its usage several times a request)
        table = self.streams
        lane = self.lent_lane
        if lane is not None:
            f = lane.flow
            used: int = f.conn_sent + f.rx.conn_received + self.datagram_bytes
        else:
            used = table.conn_sent + table.conn_received + self.datagram_bytes
        opened = table.opened_by_us if table.is_client else table.peer_opened
        if opened and not table.first_carried and not self._first_carries():
            return used, opened - 1
        return used, opened

    def requests_made(self) -> int:
        """The requests of :attr:`usage`: the streams the client opened, its first one
        (stream 0, which the connection opens with it) only once data went on it, either
        way -- a first stream held open and ended empty carries no request."""
        table = self.streams
        opened = table.opened_by_us if table.is_client else table.peer_opened  # (client_streams)
        if opened and not table.first_carried and not self._first_carries():
            return opened - 1
        return opened

    @property
    def requests_pending(self) -> int:
        """1 while the client's first stream is open and carries no request yet (its
        first bytes, either way, make it one: a paid client's deposit keeps room for
        it), else 0."""
        table = self.streams
        return int(table.client_streams() > self.requests_made() and 0 in table.by_id)

    def _first_carries(self) -> bool:
        """Whether the client's first stream carries a request now (read where a loan
        of it to the lane keeps its offsets)."""
        table = self.streams
        stream = table.by_id.get(0)
        if stream is None:
            return False  # (not open yet, or ended carrying nothing: remembered so)
        lane = self.lent_lane
        if lane is not None and self.lent_stream_id == 0:
            f = lane.flow
            if f.send_offset > 0 or f.rx.offset > 0:
                table.first_carried = True
                return True
        return table.first_carries(stream)

    def used_bytes(self) -> int:
        """The bytes of :attr:`usage` alone (docs/escrow.md §6.1): cheap enough for a
        paid client's check before every send."""
        lane = self.lent_lane
        if lane is not None:
            # read where the loan keeps them, without ending it: metering threads read
            # this without the adapter's lock (datagrams never move on the lane)
            f = lane.flow
            used: int = f.conn_sent + f.rx.conn_received + self.datagram_bytes
            return used
        streams = self.streams
        return streams.conn_sent + streams.conn_received + self.datagram_bytes

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
        return self.records.closing is not None

    @property
    def termination(self) -> ConnectionTerminated | None:
        """The final event once the connection is closed."""
        return self._terminated

    def receive_data(
        self, data: bytes | bytearray | memoryview, now: float, size: int | None = None
    ) -> None:
        """Feed bytes from the carrier (any split: whole, partial, many records).
        ``size``: the bytes are ``data[:size]``, ``data`` being the adapter's long-lived
        read buffer, never resized nor released (the lane keeps its C pointer from one
        read to the next: ``NativeLane.take``)."""
        if self.lent_lane is not None:
            self._take_back()
        if size is None:
            n = len(data)
        elif 0 <= size <= len(data):
            n = size
        else:
            raise LocalProtocolError("size past the buffer's end", ErrorCode.ARG)
        if self._state is CONN_CLOSED or not n:
            if self.records.closing is not None and n:
                self.records.input_while_closing(now)
            return
        if not self._lossy:
            # lossy carriers count only what authenticates (_handle_records): anyone can
            # send a datagram, and forged ones would hold off the idle timeout for good
            self._last_received = now
        self.bytes_received += n
        if (
            self.stream_data_handler is not None
            and not self._lossy
            and self._state is CONN_ESTABLISHED
        ):
            sid = self._lane_sid
            if sid is not None:
                # the stream that got data last probably gets this too: the lane opens
                # its run of records into one buffer, for one handler call
                stream = self._streams.get(sid)
                if (
                    stream is not None
                    and stream.recv_state is RECV_OPEN
                    and stream.recv_highest == stream.delivered
                ):
                    self._feed_stream(data, stream, now, size)
                    return
            if not self._inbuf and self._recv_aead is not None:
                self._receive_whole_stream(data if size is None else data[:size], now)
                return
        self._receive(data if size is None else data[:size], now)

    def _receive(
        self,
        data: bytes | bytearray | memoryview,
        now: float,
        opened: OpenFramesResult | None = None,
    ) -> None:
        """:meth:`receive_data` after its bookkeeping; ``opened``: the records at the
        start of ``data``, already opened (:meth:`_receive_whole_stream`), nothing
        buffered before them."""
        if self._state is CONN_CLOSED or not data:
            return
        try:
            if self._recv_aead is not None:
                if self._inbuf:
                    data = self._complete_partial(data, now)
                    if self.closed:  # (the completed record ended it)
                        return
                # (else the state is what the test above found: not closed)
                if not self._inbuf and data:
                    # whole records are opened straight from the caller's buffer; only
                    # a trailing partial record (or anything unusual) is copied
                    data = self._process_direct(data, now, opened)
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
            if self.records.closing is not None:
                self.records.input_while_closing(now)
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
        records = self.records
        if self._state is not CONN_CLOSED or records.close_frame is not None:
            # (the state is asked only when some stream has something to send)
            records.build(now, records.streams_dirty and self._streams_may_go())
        out = records.out
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

    def has_output(self) -> bool:
        """False when :meth:`data_to_send` would return nothing and queue nothing: no
        record sealed, no ACK, frame or stream data waiting. A driver's pass after a
        read asks this before its flush: a run of datagrams taken in queues nothing."""
        # (RecordLayer.waiting, inline: this runs after every read; test_waiting_checks.py)
        rl = self.records
        return bool(
            self.lent_lane is not None
            or rl.out
            or rl.acks is not None  # a lossy carrier: an ACK may be due
            or rl.streams_dirty
            or rl.ctrl
            or rl.pending_max_data
            or rl.pending_stream_credit
            or rl.pending_max_streams
            or rl.ping_pending
            or rl.close_frame is not None
        )

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Like :meth:`data_to_send`, but as separate records for datagram carriers."""
        if self.lent_lane is not None:
            self._take_back()
        records = self.records
        if self._state is not ConnState.CLOSED or records.close_frame is not None:
            records.build(now, records.streams_dirty and self._streams_may_go())
        out = [piece for blob in records.out for piece in _split_records(blob)]
        records.out.clear()
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
        if self._state is CONN_CLOSED:
            return self.records.closing_deadline()
        steady = self.steady_timer()  # (the common case: idle timeout and keepalive)
        if steady is not None:
            return steady
        deadlines = [self._last_received + self.config.idle_timeout]
        if self._state is not CONN_ESTABLISHED:
            deadlines.append(self._created + self.config.handshake_timeout)
        if self._state is CONN_ESTABLISHED and self._keepalive:
            deadlines.append(self._last_sent + self._keepalive)
        if self._hs_resend_at is not None:
            deadlines.append(self._hs_resend_at)
        if self._lossy:
            deadline = self.records.deadline()
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Act on whatever timers have expired at ``now``."""
        if self.lent_lane is not None:
            self._take_back()
        if self._state is ConnState.CLOSED:
            if self.records.closing is not None:
                self.records.closing_timer(now)
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
            self.records.ping_pending = True
        if self._hs_resend_at is not None and now >= self._hs_resend_at:
            self._resend_handshake()
            self.records.resend_handshake_flight()  # (XX: the AUTH's record, if lost)
            self._hs_resend_interval = next_handshake_resend(self._hs_resend_interval, self.config)
            self._hs_resend_at = now + self._hs_resend_interval
        if self._lossy and not self.records.on_timer(now, self.config.idle_timeout):
            # a peer that goes on sending but acknowledges nothing of ours is gone
            self._fail(
                CloseCode.IDLE_TIMEOUT,
                f"nothing acknowledged through {MAX_PTO_COUNT} probe timeouts "
                f"and {self.config.idle_timeout:g} s",
                now,
            )

    def _streams_may_go(self) -> bool:
        """Whether stream data may go out in the next records: once established, and
        on a client right behind its AUTH frame (the server holds it until it accepts),
        but only where records cannot overtake each other."""
        state = self._state
        return state is CONN_ESTABLISHED or (
            self.is_client and state is ConnState.AUTHENTICATING and self.config.reliable_carrier
        )

    @property
    def records_sent(self) -> int:
        """Records sealed so far (a statistic)."""
        return self.records.records_sent

    def awaiting_acks(self) -> bool:
        """Lossy carriers: whether something we sent may still have to be sent again (a
        record not yet acknowledged, or lost and queued for retransmission). Always
        False over a reliable carrier. Graceful closes wait for this to clear."""
        return self.records.awaiting_acks()

    def send_control(self, kind: int, data: bytes = b"") -> None:
        """Send an application CONTROL frame (kind >= 16)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        self.records.queue_control(kind, data)

    def send_receipt(self, receipt: bytes) -> None:
        """Send a RECEIPT frame (a signed cumulative fee receipt)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        self.records.queue_receipt(receipt)

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram :meth:`send_datagrams` takes: ``max_datagram_size`` of the
        config, or less where a DATAGRAM frame (3 bytes of header) must fit a smaller
        record (lossy carriers: ``max_record_plaintext``)."""
        return self.records.max_datagram_size()

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
        if self._state is not ConnState.ESTABLISHED:  # (else open: a call saved a send)
            self._require_open()
        if self._can_seal_now():
            # nothing waits to go first: sealed at once, the run framed in one call
            queued, dropped, size = self.records.seal_datagrams(datagrams, backlog)
        else:
            queued, dropped, size = self.records.queue_datagrams(datagrams, backlog)
        self.datagrams_send_dropped += dropped
        # metered as they are framed to go (dropped ones never are): over an ordered
        # carrier the peer counts exactly these as it accepts them
        self.datagram_bytes += size
        return queued

    def ping(self) -> None:
        """Send a PING (keeps the peer's idle timer alive)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        self.records.ping_pending = True

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
        if self.records.send_aead is not None:
            self.records.close_frame = RawFrame(
                FRAME_CLOSE, int(error_code), 0, 0, close_reason_bytes(reason)
            )
        self._terminate(int(error_code), reason, by_peer=False, now=None)

    # ==================================================================================
    # The handshake: Noise handshake records and their resends, the transport
    # parameters, the client's identity proof, and the server's verdict (accept, answer,
    # refuse) with the events held until it.

    # ----------------------------------------------------------------------------------
    # the server's verdict

    def accept(self) -> None:
        """Server: let the authenticated client in (after PeerAuthenticated)."""
        if self.lent_lane is not None:
            self._take_back()
        if self.is_client or self._state not in (
            ConnState.AUTHENTICATING,
            ConnState.SERVER_DECIDING,
        ):
            raise LocalProtocolError("accept() is for a server whose client has authenticated")
        if self.peer_address is None:
            raise LocalProtocolError("the client has not proved its identity yet")
        if self._state is ConnState.SERVER_DECIDING:
            self._answer_hello()
            self._finish_handshake(ConnState.ESTABLISHED)
        else:
            self._state = transition(self._state, ConnState.ESTABLISHED)
        self.records.ctrl.append(RawFrame(FRAME_CONTROL, int(ControlKind.ACCEPT)))
        self._events.append(ConnectionAccepted(self.peer_address))
        if self._held_events is not None:
            self._events.extend(self._held_events)
            self._held_events = None
        self._open_first_stream()

    @property
    def handshake_deadline(self) -> float:
        """When the handshake times out (``handshake_timeout`` after the connection was
        made), on the clock ``now`` is given in: what a server's wait on a Sui node for
        a zkLogin proof must end before."""
        return self._created + self.config.handshake_timeout

    def answer(self) -> None:
        """Server, IK: send message 2 now, before the verdict, so that the client works
        on it (two Diffie-Hellman operations and the key derivation) while the server
        decides; :meth:`accept` or :meth:`refuse` then adds only the verdict. It gives
        the client nothing the verdict would not: a refusal sends message 2 as well, so
        that its reason travels under the connection's transport keys. Nothing happens in any other
        state (XX answers as the messages come)."""
        if self.is_client or self._state is not ConnState.SERVER_DECIDING:
            return
        self._answer_hello()
        self._finish_handshake(ConnState.AUTHENTICATING)

    def refuse(self, reason: str = "refused", code: int = CloseCode.REFUSED) -> None:
        """Server: turn the client away; it sees ConnectionRefused with ``reason``."""
        if self.lent_lane is not None:
            self._take_back()
        if self.is_client:
            raise LocalProtocolError("refuse() is for servers")
        self._held_events = None
        if self._state is ConnState.SERVER_DECIDING:
            # IK: the verdict goes out as a CLOSE right behind message 2, so that the
            # client reads the reason under the connection's transport keys
            self._answer_hello()
            self._finish_handshake(ConnState.AUTHENTICATING)
        self.close(code, reason)

    def _handle_late_handshake_record(self) -> bool:
        """The handshake record at the head of the input once the session keys exist
        (docs/protocol.md 8.1): :meth:`_late_handshake_message`. False while its body
        is not whole over a lossy carrier (the input waits for more, as for any partial
        record: a datagram's truncated end is dropped)."""
        batch = _core.parse_records(self._inbuf, max_records=1)
        if not batch.records:
            if self.config.reliable_carrier:
                # its header is enough (this raises): waiting for the rest of its body
                # looped for good, the opener stopping at the same header each time
                self._late_handshake_message(self._inbuf[0], 0, b"")
            return False
        record = batch.records[0]
        start = record.offset + 12
        body = bytes(self._inbuf[start : start + record.body_len])
        del self._inbuf[: 12 + record.body_len]
        self._late_handshake_message(record.kind, record.counter, body)
        return True

    def _late_handshake_message(self, kind: int, counter: int, body: bytes) -> None:
        """A handshake message after the session keys: over a reliable carrier it breaks
        the protocol (RemoteProtocolError, PROTOCOL_VIOLATION); over a lossy one it is a
        repeat or a forgery, dropped -- but a copy of a message a server took is
        answered (8.6: :meth:`_answer_copy`)."""
        if self.config.reliable_carrier:
            raise RemoteProtocolError("handshake record after the handshake", ErrorCode.ARG)
        if not self.is_client and counter == 0:
            self._answer_copy(kind, body)

    def _answer_copy(self, kind: int, body: bytes) -> None:
        """Server, lossy carrier: a handshake record of the client's that is not the one
        the handshake waits for. A copy of the message 1 it answered, or of the XX
        message 3 it took, says the client lacks what came after (the client sends its
        message again until the verdict arrives: 8.6): message 2 goes again (for a
        message 1), and so does the verdict (:meth:`RecordLayer.resend_handshake_flight`),
        until the client acknowledges one of our records. Only an exact copy: any other,
        which anyone can forge, would have us send on demand."""
        if kind == REC_HS_INIT and body == self._hs_init:
            if self.records.acknowledged_nothing():
                self._resend_handshake()
        elif not (kind == REC_HS_FINAL and body == self._hs_final):
            return
        self.records.resend_handshake_flight()

    def _resend_handshake(self) -> None:
        for kind, message in self._hs_messages:
            self.records.out.append(_core.write_record_header(kind, 0, len(message), 0) + message)

    def _process_handshake_records(self, now: float) -> bool:
        try:
            batch = _core.parse_records(self._inbuf, max_records=1)
        except RemoteProtocolError as exc:
            if self.config.reliable_carrier:
                raise
            # a datagram that does not parse (forged or damaged): dropped, like a
            # handshake message that fails Noise; the handshake goes on
            logger.debug("dropping a datagram that does not parse: %s", exc)
            self._inbuf = bytearray()  # rebind, not clear(): the parser's view may live on
            return False
        if not batch.records:
            return False
        record = batch.records[0]
        start = record.offset + 12
        body = bytes(self._inbuf[start : start + record.body_len])
        if record.kind == REC_DATA:
            # a lossy carrier may deliver the client's first DATA record before the
            # XX final message; hold a few, and reject them on ordered carriers
            if self.config.reliable_carrier:
                raise RemoteProtocolError("data before the handshake finished", ErrorCode.ARG)
            if len(self._early_records) < MAX_PENDING_EARLY_RECORDS:
                self._early_records += (bytes(self._inbuf[: batch.consumed]),)
            # else dropped, as lossy carriers drop what they cannot take: anyone can
            # forge unauthenticated records, and failing here let a few dozen of them
            # end a handshake in progress
            del self._inbuf[: batch.consumed]
            return True
        del self._inbuf[: batch.consumed]
        hs = self._hs
        # _process_input calls this only before the receiving keys exist, and the state
        # goes only after them (_finish_handshake): late records take the keys' path
        assert hs is not None
        if record.counter != 0:
            # docs/protocol.md 8.1: a handshake record's counter is 0, like a reserved
            # field; anything else is a damaged or forged handshake message
            if self.config.reliable_carrier:
                raise HandshakeError(
                    f"handshake record with counter {record.counter} (it must be 0)"
                )
            logger.debug("dropping a handshake record with counter %d", record.counter)
            return True
        self._handle_handshake_message(hs, record.kind, body, now)
        return True

    def _handle_handshake_message(self, hs: Handshake, kind: int, body: bytes, now: float) -> None:
        expected = _HANDSHAKE_KIND.get(self._state)
        if kind != expected:
            if not self.config.reliable_carrier:
                if not self.is_client:
                    self._answer_copy(kind, body)  # our reply was lost: the client repeats
                return  # any other stray repeat on a lossy carrier
            raise HandshakeError(f"unexpected handshake record kind {kind}")
        if self.config.reliable_carrier:
            payload = hs.read_message(body)
        else:
            # anyone can slip a forged or damaged message in before the genuine one: it
            # is dropped, the handshake left as it was for the genuine one (or its resend)
            try:
                payload = hs.read_message(body, keep_state=True)
            except HandshakeError as exc:
                logger.debug("dropping a handshake message that failed: %s", exc)
                return
        self._last_received = now  # an authentic message (lossy carriers wait for one)
        if kind == REC_HS_INIT:
            try:
                params = parse_params(payload, from_client=True)
                proof = params.pop("auth", None)
                version = min(params["v"], TRANSPORT_VERSION)
                if hs.pattern == PATTERN_IK:
                    if proof is None:
                        raise HandshakeError("IK message 1 carries no identity proof")
                    signer = check_auth_proof(proof, hs.auth_binding, early=True, version=version)
                elif proof is not None:
                    raise HandshakeError(
                        "an identity proof in XX message 1 (it goes after message 3)"
                    )
            except HandshakeError as exc:
                if self.config.reliable_carrier:
                    raise
                # Noise took it, but an XX message 1 is not authenticated at all (and an
                # IK one only says its sender knows our key): a forgery or damage must
                # not end the handshake the genuine message 1, or its resend, comes for
                logger.debug("dropping a handshake message 1 whose payload fails: %s", exc)
                hs.unread_first_message()
                return
            # only a copy of this very message is answered again (lossy carriers): any
            # other, which anyone can forge, would have us send message 2 on demand
            self._hs_init = body
            self._peer_params = params
            self.transport_version = version
            self.streams.send_window = params.get("msd", 0)
            if hs.pattern == PATTERN_IK:
                assert proof is not None
                self._authenticated(proof, signer, hs.auth_binding, early=True)
                self.peer_static = hs.remote_static
                # message 2 waits for the application's verdict (accept / refuse)
                self._state = transition(self._state, ConnState.SERVER_DECIDING)
                return
            reply = hs.write_message(self._transport_params())
            self._send_handshake(REC_HS_RESP, reply, now, resend=False)
            if hs.complete:
                self._finish_handshake(ConnState.AUTHENTICATING)
            else:
                self._state = transition(self._state, ConnState.SERVER_FINAL)
        elif kind == REC_HS_RESP:
            # before XX message 3, which carries our static key: an impostor gets nothing
            expected_key = self.config.expected_server_static
            if expected_key is not None and hs.remote_static != expected_key:
                raise HandshakeError("the server's static key is not the expected one")
            self._peer_params = parse_params(payload, offered=self._offered_version())
            self.transport_version = self._peer_params["v"]
            self.streams.send_window = self._peer_params.get("msd", 0)
            proof = None
            if not hs.complete:  # XX: message 3, then our proof (in IK it went in message 1)
                final = hs.write_message(b"")
                proof = make_auth_proof(self._prover(), hs.handshake_hash)
                version = self.transport_version
                if version < ANY_SCHEME_VERSION and not is_ed25519_proof(proof):
                    # (before message 3, which carries our static key, goes out)
                    raise HandshakeError(
                        f"the server speaks transport version {version}, which takes only "
                        "Ed25519 identity proofs: this wallet's proof is of another scheme"
                    )
                self._hs_messages = ()
                self._send_handshake(REC_HS_FINAL, final, now)
            # (IK: message 1 goes on being sent again, as message 3 in XX, until the
            # verdict arrives: a copy tells the server that its verdict was lost, 8.6)
            self._finish_handshake(ConnState.AUTHENTICATING)
            if proof is not None:
                self.records.ctrl.insert(
                    0, RawFrame(FRAME_CONTROL, int(ControlKind.AUTH), 0, 0, proof)
                )
        else:  # REC_HS_FINAL
            if not self.config.reliable_carrier:
                self._hs_final = body  # (its copies are answered: _answer_copy)
            self._finish_handshake(ConnState.AUTHENTICATING)
        early, self._early_records = self._early_records, ()
        for blob in early:
            self._inbuf[:0] = blob

    def _finish_handshake(self, new_state: ConnState) -> None:
        hs = self._handshake()
        send_key, recv_key = hs.transport_keys()
        self.records.send_aead = _core.Aead(send_key)
        self._recv_aead = _core.Aead(recv_key)
        if self.config.reliable_carrier:
            # records come as they were sent (0, 1, 2, ...): one missing or moved was
            # removed or moved on the way (a CONTROL message, a DATAGRAM or a
            # RESET_STREAM dropped without a trace), which a window of unseen counters
            # would not notice
            self._recv_aead.set_in_order()
        self.peer_static = hs.remote_static
        self.handshake_hash = hs.handshake_hash
        self.pattern = "IK" if hs.pattern == PATTERN_IK else "XX"
        self._hs = None
        params = self._peer_params
        self.streams.conn_send_credit = params["md"]
        self.streams.peer_max = params["ms"]
        if self._keepalive:
            # a PING at half the peer's idle timeout, or a quiet connection (or one we
            # only send on) dies at its end; not below MIN_KEEPALIVE, whatever the peer
            # asks
            peer_idle = params["it"] / 1000
            self._keepalive = min(self._keepalive, max(peer_idle / 2, MIN_KEEPALIVE))
        self._state = transition(self._state, new_state)
        assert self.peer_static is not None and self.handshake_hash is not None
        self._events.append(HandshakeCompleted(self.pattern, self.peer_static, self.handshake_hash))

    def _on_control(self, kind: int, data: bytes) -> None:
        lossy = not self.config.reliable_carrier
        if kind == ControlKind.AUTH:
            if lossy and self.peer_address is not None and data == self._auth_proof:
                return  # a retransmitted copy of the proof we already accepted
            if self.is_client or self.peer_address is not None:
                raise RemoteProtocolError("unexpected AUTH frame", ErrorCode.FRAME_VALUE)
            assert self.handshake_hash is not None and self.transport_version is not None
            signer = check_auth_proof(data, self.handshake_hash, version=self.transport_version)
            self._authenticated(data, signer, self.handshake_hash, early=False)
        elif kind == ControlKind.ACCEPT:
            if lossy and self.is_client and self._state is ConnState.ESTABLISHED:
                return  # a retransmitted copy
            if not self.is_client or self._state is not ConnState.AUTHENTICATING:
                raise RemoteProtocolError("unexpected ACCEPT frame", ErrorCode.FRAME_VALUE)
            self._state = transition(self._state, ConnState.ESTABLISHED)
            # the verdict arrived: our handshake messages did, and need not go again
            self._hs_resend_at = None
            self._hs_messages = ()
            self._events.append(ConnectionAccepted(None))
            self._open_first_stream()
        elif kind >= ControlKind.APPLICATION:
            self._deliver(ControlReceived(kind, data))
        else:
            raise RemoteProtocolError(f"unknown control kind {kind}", ErrorCode.FRAME_VALUE)

    def _open_first_stream(self) -> None:
        """IK, on acceptance: the client's stream 0 opens on both sides with no frame of
        its own, so that either side may send on it first (the server's first bytes can
        arrive in the client's very read that brings the ACCEPT)."""
        table = self.streams
        if self.pattern != "IK" or 0 in table.by_id:
            return
        if not self.is_client and table.peer_opened:
            # the client opened it already, with frames of its own (before the hooks
            # decided), and may have ended it since: it is not opened again, since the
            # peer's next stream ID is past it already
            return
        if self.is_client:
            table.open_first()
        elif table.local_max > 0:
            self._open_peer_streams_up_to(0)

    def _authenticated(self, proof: bytes, signer: SuiSigner, bound: bytes, early: bool) -> None:
        """The client's identity proof checked out: it is ``signer``'s address -- once a
        Sui node confirms its zkLogin parts, if it has any (the event says what to ask;
        the server's driver asks before it decides)."""
        self.peer_address = signer.address
        self.peer_public_key = signer.public_key
        self.peer_scheme = signer.scheme
        self._auth_proof = proof
        node = signer.node_check
        zklogin = None
        if node is not None:
            context = AUTH_EARLY_CONTEXT if early else AUTH_CONTEXT
            zklogin = ZkLoginCheck(context + bound, proof, node.address, node.max_epochs)
        self._events.append(
            PeerAuthenticated(signer.address, signer.public_key, signer.scheme, zklogin)
        )

    def _answer_hello(self) -> None:
        """Server, IK: message 2, which completes the handshake (sent with the verdict)."""
        reply = self._handshake().write_message(self._transport_params())
        self._send_handshake(REC_HS_RESP, reply, None, resend=False)

    def _deliver(self, event: Event) -> None:
        """Application-facing events wait for accept() on the server."""
        if not self.is_client and self._state is ConnState.AUTHENTICATING:
            if isinstance(event, (DatagramReceived, ControlReceived, ReceiptReceived)):
                # flow control bounds held stream bytes, nothing these: a client could
                # fill the server's memory while the application decides on it
                self._held_bytes += len(event.data) + 64
            else:
                # every other event weighs too: flow control bounds the held stream
                # bytes, not the events that carry them, and a stream opened, reset and
                # stopped gives its place back in MAX_STREAMS, so unweighed, that cycle
                # held events without end
                self._held_bytes += 64
            if self._held_bytes > self.config.connection_window:
                if isinstance(event, DatagramReceived):
                    return  # unreliable anyway: dropped, as a full carrier would
                raise RemoteProtocolError(
                    "too many frames before the server accepted", ErrorCode.FRAME_VALUE
                )
            held = self._held_events
            if held is None:
                held = self._held_events = []
            held.append(event)
        else:
            self._events.append(event)

    # ----------------------------------------------------------------------------------
    # what the handshake sends

    def _transport_params(self) -> bytes:
        version = self._offered_version()
        if not self.is_client:
            # a server's are its config's and the version it answers: the same bytes for
            # every client of that version, packed once (a client's carry its proof)
            key = (id(self.config), version)
            kept = _SERVER_PARAMS.get(key)
            if kept is not None and kept[0] is self.config:
                return kept[1]
        params: dict[str, Any] = {
            "v": version,
            "md": self.config.connection_window,
            "msd": self.config.stream_window,
            "ms": self.config.max_streams,
            "it": int(min(self.config.idle_timeout * 1000, 2**62 - 1)),
        }
        if self.is_client:
            if self._handshake().pattern == PATTERN_IK:
                params["auth"] = make_auth_proof(
                    self._prover(), self._handshake().auth_binding, early=True
                )
            # optional binding to a ledger connection: part of message 1's payload, which
            # only the holder of the ephemeral key the identity proof names can write
            if self.config.connection_id is not None:
                params["cid"] = bytes(self.config.connection_id)
            if self.config.port is not None:
                params["port"] = self.config.port
        packed: bytes = msgpack.packb(params)
        if not self.is_client:
            if len(_SERVER_PARAMS) >= _SERVER_PARAMS_KEPT:
                _SERVER_PARAMS.clear()  # (configs made and dropped by the dozen)
            _SERVER_PARAMS[key] = (self.config, packed)  # (held: its id is not reused)
        return packed

    def _prover(self) -> Any:
        """Client: what signs our identity proof (docs/protocol.md 8.4)."""
        wallet = self.config.wallet
        return self.config.identity if wallet is None else wallet

    def _offered_version(self) -> int:
        """The transport version we say (docs/protocol.md 8.2). A client offers 1 when
        its proof is Ed25519 (a version-1 server takes it; the bytes are those of
        version 1), else 2; a server answers the highest it speaks that is not above
        the client's (known by the time it writes)."""
        if not self.is_client:
            # (set as message 1 was read; before, for a look at our parameters alone,
            # version 1's, as docs/protocol.md 8.2's default vector shows them)
            return 1 if self.transport_version is None else self.transport_version
        wallet = self.config.wallet
        if wallet is None or isinstance(wallet, HostIdentity):
            return 1
        return TRANSPORT_VERSION

    def _send_handshake(
        self, kind: int, message: bytes, now: float | None, resend: bool = True
    ) -> None:
        record = _core.write_record_header(kind, 0, len(message), 0) + message
        self.records.out.append(record)
        # kept to be sent again over a lossy carrier only: a reliable one never resends
        if not self.config.reliable_carrier:
            kept = self._hs_messages if resend else ()
            self._hs_messages = (*kept, (kind, message))
        if not self.config.reliable_carrier and self.is_client:
            assert now is not None  # only the client resends on its own
            self._hs_resend_at = now + self._hs_resend_interval

    # ==================================================================================
    # What arrives: records opened from the carrier's bytes and their frames dispatched
    # to the parts that act on them (:meth:`_process_input`, :meth:`_handle_records`,
    # :meth:`_handle_record`, :meth:`_handle_frame`), input after our CLOSE on a lossy
    # carrier, and the failures and termination that end a connection.

    def _process_input(self, now: float) -> None:
        while self._inbuf and self._state is not ConnState.CLOSED:
            if self._recv_aead is None:
                if not self._process_handshake_records(now):
                    return
                continue
            result = self._recv_aead.open_frames(self._inbuf, datagram_runs=True)
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
                if not self._handle_late_handshake_record():
                    return
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
        lossy = self._lossy
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
            run = record.datagrams
            if run is not None:
                if self._take_datagram_run(record.counter, run, now):
                    continue
                frames = [RawFrame(FRAME_DATAGRAM, 0, 0, 0, data, ()) for data in run]
            elif fast and len(frames) == 1:
                frame = frames[0]
                ftype = frame.type
                if ftype == FRAME_STREAM and self._fast_stream_frame(frame.a, frame.b, frame.data):
                    continue
                if (
                    ftype == FRAME_STREAM_FIN
                    and self._state is ConnState.ESTABLISHED
                    and type(frame.data) is bytes
                ):
                    # a stream's end alone in a record (a request's, a reply's): what
                    # _handle_record and _handle_frame would do with it, over a reliable
                    # carrier once established (no ACKs, no check before AUTH), without
                    # their two calls
                    self._on_stream_frame(frame.a, frame.b, frame.data, True)
                    # (mypy keeps the state narrowed across the call, which may close)
                    if self._state is ConnState.CLOSED:  # type: ignore[comparison-overlap]
                        return False
                    continue
            self._handle_record(record.counter, frames, now)
            if self._state is ConnState.CLOSED:  # a frame in the record ended it
                return False
        return True

    def _take_datagram_run(self, counter: int, run: list[bytes], now: float) -> bool:
        """A record of DATAGRAM frames alone, to :attr:`datagram_run_handler` as
        :meth:`_handle_record` would hand each to :attr:`datagram_handler` (metered, the
        record acknowledged); False when that rule would not take them (an event waits,
        no handler, not established, a client's handshake not known to have arrived):
        the general path then has them."""
        handler = self.datagram_run_handler
        if (
            handler is None
            or self.datagram_handler is None
            or self._events
            or self._state is not ConnState.ESTABLISHED
            or self._hs_resend_at is not None
        ):
            return False
        self.datagram_bytes += sum(map(len, run))
        handler(run)
        acks = self.records.acks
        if acks is not None:
            acks.on_record(counter, True, now)
        return True

    def _handle_record(self, counter: int, frames: list[RawFrame], now: float) -> None:
        """Act on one opened record's frames (their data may be views into the AEAD's
        scratch buffer: whatever outlives this call is copied)."""
        if self._state is ConnState.AUTHENTICATING:
            if self.is_client:
                if self._lossy and stream_frame_before_accept(frames):
                    # a lossy carrier lost the ACCEPT's record or brought it late: the
                    # server's first stream frames got here first. Dropped
                    # unacknowledged, they come again; taken, they would be data before
                    # authentication (and a reset of stream 0, not open before the
                    # ACCEPT, would be lost).
                    return
            elif self.peer_address is None and not allowed_before_auth(frames):
                # XX: the client's first DATA record opens with its AUTH: what came
                # before it would be answered (a STOP_SENDING's reset) before
                # authentication, and reach the application after accept() as if the
                # authenticated client had sent it.
                if not self._lossy:
                    raise RemoteProtocolError(
                        "a frame before the client's AUTH", ErrorCode.FRAME_VALUE
                    )
                # A lossy carrier lost the AUTH's record or brought it late: this one is
                # dropped whole and unacknowledged, so the client sends its frames again.
                return
        ack_eliciting = False
        datagrams = self.datagram_handler if self._state is ConnState.ESTABLISHED else None
        events = self._events
        try:
            for frame in frames:
                ftype = frame.type
                if ftype not in (FRAME_ACK, FRAME_PADDING):
                    ack_eliciting = True
                if ftype == FRAME_STREAM and self._fast_stream_frame(frame.a, frame.b, frame.data):
                    continue
                if ftype == FRAME_DATAGRAM and datagrams is not None and not events:
                    # metered as _handle_frame meters it; no event object, no dispatch
                    data = frame.data
                    if type(data) is not bytes:
                        data = bytes(data)  # a view into scratch space
                    self.datagram_bytes += len(data)
                    datagrams(data)
                    continue
                self._handle_frame(frame, now)
                if self._state is ConnState.CLOSED:
                    return
        except RemoteProtocolError as exc:
            if not (
                exc.code == ErrorCode.REASM_FRAGMENTED
                and self._lossy
                and repeat_safe_before(frames, frame)
            ):
                raise
            # A lossy carrier: an honest sender with many small records in flight, some
            # lost, outran the reassembly's range limit. Dropped unacknowledged (taking
            # it again is harmless), the record comes again once the gaps before it are
            # filled; the limit still bounds what a peer can make us buffer.
            self.records_dropped_fragmented += 1
            return
        acks = self.records.acks
        if acks is not None:
            acks.on_record(counter, ack_eliciting, now)

    def _handle_frame(self, frame: RawFrame, now: float) -> None:
        ftype = frame.type
        if frame.data and type(frame.data) is not bytes:
            frame = frame._replace(data=bytes(frame.data))  # a view into scratch space
        if ftype in (FRAME_STREAM, FRAME_STREAM_FIN):
            self._on_stream_frame(frame.a, frame.b, frame.data, ftype == FRAME_STREAM_FIN)
        elif ftype == FRAME_ACK:
            if self._lossy and self.records.on_ack(frame.ranges, frame.c, now):
                self._events.append(SendWindowOpened(None))
        elif ftype == FRAME_MAX_DATA:
            if frame.a > self.streams.conn_send_credit:
                self.streams.conn_send_credit = frame.a
                self.records.streams_dirty = True
                self._events.append(SendWindowOpened(None))
        elif ftype == FRAME_MAX_STREAM_DATA:
            self.streams.check_not_unopened(frame.a)
            stream = self._streams.get(frame.a)
            if stream is not None and frame.b > stream.send_credit:
                stream.send_credit = frame.b
                self.records.streams_dirty = True
                self._events.append(SendWindowOpened(frame.a))
        elif ftype == FRAME_MAX_STREAMS:
            self.streams.peer_max = max(self.streams.peer_max, frame.a)
        elif ftype == FRAME_RESET_STREAM:
            self._on_reset(frame.a, frame.b, frame.c)
        elif ftype == FRAME_STOP_SENDING:
            self.streams.check_not_unopened(frame.a)
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
        if send and self.records.send_aead is not None:
            self.records.close_frame = RawFrame(
                FRAME_CLOSE, int(code), 0, 0, close_reason_bytes(reason)
            )
        self._terminate(code, reason, by_peer=False, now=now)

    def _terminate(self, code: int, reason: str, by_peer: bool, now: float | None) -> None:
        if self._state is ConnState.CLOSED:
            return
        self._state = ConnState.CLOSED
        self._held_events = None
        # nothing is delivered once closed: the handlers, bound methods of the Session,
        # hold it and through it this connection, so dropping them lets reference
        # counting free the pair at once, not the collector's next full collection
        self.stream_data_handler = self.datagram_handler = self.datagram_run_handler = None
        self._inbuf = bytearray()  # rebind, not clear(): a decoder may still view the old one
        self._terminated = ConnectionTerminated(code, reason, by_peer)
        self._events.append(self._terminated)


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
