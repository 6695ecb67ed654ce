"""The DTP connection: a sans-I/O state machine.

It never opens a socket, reads the clock or draws randomness: bytes go in with
:meth:`Connection.receive_data`, bytes to transmit come out of
:meth:`Connection.data_to_send`, what happened comes out of :meth:`Connection.next_event`,
and time is passed in (``now``, in seconds, from any monotonic clock). Timers are
:meth:`Connection.get_timer` / :meth:`Connection.handle_timer`.

Life of a connection (see :mod:`dtp.protocol.state`):

1. Noise handshake in handshake records (IK when the client knows the server's static
   key, XX otherwise); each side's first handshake payload carries its transport
   parameters (flow-control windows, stream limit, idle timeout).
2. The client proves its Sui address (:mod:`dtp.identity.noise`, channel binding). In IK the
   proof rides in message 1: the server reports :class:`~dtp.protocol.events.PeerAuthenticated`
   and answers only once the application calls :meth:`Connection.accept` (message 2
   and an ACCEPT in one flight) or :meth:`Connection.refuse` (message 2 and a CLOSE),
   so the client has its verdict after one round trip; the client's first stream (0)
   is then open on both sides without a frame of its own (its first
   :meth:`Connection.open_stream` returns it). In XX the client's first DATA
   record carries the proof (an AUTH control frame over the handshake hash) and the
   server holds any application data until it accepts or refuses.
3. Streams: ordered reliable byte streams with per-stream and per-connection flow
   control, half-close and reset; datagrams, control frames and receipts.
4. CLOSE with a code and reason, or an idle timeout.

Records are sealed and opened in batches by the C core (one call per batch). Over a
reliable, ordered carrier (TCP) records are not acknowledged; over any other carrier
(``reliable_carrier=False``) the connection acknowledges, detects loss and retransmits
(:mod:`dtp.protocol.recovery`), and reorders stream data with the C reassembly buffer.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import msgpack

from dtp.errors import (
    CLOSE_PAYMENT_REQUIRED,
    ConnectionClosed,
    ConnectionLost,
    DecryptionError,
    DTPError,
    ErrorCode,
    HandshakeError,
    LocalProtocolError,
    PaymentRequired,
    ProtocolError,
    RemoteProtocolError,
    ReplayError,
    refusal_error,
)
from dtp.identity.keys import HostIdentity
from dtp.identity.noise import (
    AUTH_PROOF_SIZE,
    PATTERN_IK,
    Handshake,
    make_auth_proof,
    verify_auth_proof,
)
from dtp.native import core as _core
from dtp.native.reference.varint import varint_encode
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
    REC_DATA,
    REC_HS_FINAL,
    REC_HS_INIT,
    REC_HS_RESP,
    STOP,
    OpenedFrames,
    RawFrame,
    TakeResult,
)
from dtp.protocol.buffers import bytes_like
from dtp.protocol.events import (
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
    StreamDataReceived,
    StreamOpened,
    StreamResetReceived,
)
from dtp.protocol.recovery import MAX_PTO_COUNT, AckTracker, LossRecovery, RangeSet, SentRecord
from dtp.protocol.state import (
    CloseCode,
    ConnState,
    ControlKind,
    RecvState,
    SendState,
    stream_initiator_is_client,
    transition,
)

__all__ = ["CloseCode", "Connection", "ConnectionConfig", "error_for_termination"]

logger = logging.getLogger(__name__)

MAX_RECORD_PLAINTEXT = 16384
_LANE_BUFFER_KEEP = 1 << 20  # largest lane buffer a connection keeps between reads
MAX_STREAM_FRAME_OVERHEAD = 1 + 8 + 8 + 4  # type + stream id + offset + length varints
MAX_RECEIPT = 1024  # the RECEIPT frame's limit (docs/protocol.md 3.1)
MAX_CLOSE_REASON = 1024  # a CLOSE frame's reason, in bytes (DTP_MAX_CLOSE_REASON)
VARINT_MAX = (1 << 62) - 1  # the largest value a varint holds (docs/protocol.md 1)
#: The transport version this side speaks and offers (parameter ``"v"``, docs/protocol.md 8.2).
TRANSPORT_VERSION = 1
MAX_PENDING_EARLY_RECORDS = 64
#: Unsent bytes on the carrier beyond which new datagrams are dropped (counted in
#: ``Connection.datagrams_send_dropped``) rather than queued behind them: a datagram
#: that waits for a stalled peer only arrives late, and queuing them would grow
#: without bound (docs/udp.md).
DATAGRAM_SEND_BACKLOG = 1 << 20
#: Shortest keepalive interval a peer's idle timeout brings ours down to (seconds).
MIN_KEEPALIVE = 1.0

# core statuses for a record header that does not parse: before any authentication
_BAD_HEADER = frozenset({ErrorCode.RECORD_KIND, ErrorCode.RECORD_FLAGS, ErrorCode.RECORD_SIZE})


@dataclass(frozen=True)
class ConnectionConfig:
    """How one side of a connection behaves. Defaults suit a TCP carrier."""

    identity: HostIdentity
    """Our keys: the Noise static key, and (client) the Sui key that signs the proof."""
    is_client: bool
    server_static: bytes | None = None
    """Client only: the server's X25519 static key. Known → Noise IK; None → XX."""
    expected_server_static: bytes | None = None
    """Client only, XX: refuse the server unless its static key equals this."""
    reliable_carrier: bool = True
    """True for ordered, reliable carriers (TCP); False turns on ACKs and retransmission."""
    stream_window: int = 4 << 20
    """Bytes a peer may send on one stream beyond what our application has read: an
    int from 0 to 2**62 - 1 (from 1 to 2**32 - 1 when ``reliable_carrier`` is False)."""
    connection_window: int = 8 << 20
    """The same, summed over all streams: an int from 0 to 2**62 - 1."""
    max_streams: int = 128
    """Streams the peer may have open at once: an int from 0 to 2**62 - 1."""
    idle_timeout: float = 60.0
    """Close the connection when nothing arrives for this long (seconds)."""
    keepalive_interval: float | None = 15.0
    """Send a PING after this long without sending anything (None: never); less -- half
    the peer's idle timeout, but not below :data:`MIN_KEEPALIVE` -- when the peer's idle
    timeout is under twice this."""
    handshake_timeout: float = 10.0
    """Give up when the connection is not established within this long."""
    max_datagram_size: int = 16000
    """Largest datagram we send (LocalProtocolError above it), at least 1 byte; less
    where a record holds less. What the peer sends is taken up to what one record holds,
    whatever this says."""
    max_record_plaintext: int = MAX_RECORD_PLAINTEXT
    """Lossy carriers: largest plaintext of the DATA records we seal, an int from 22
    (one stream frame's header and a byte) to 16384; from 1 over a reliable carrier. The
    ledger carrier uses less, so that each record fits one ``pipe::send`` whole."""
    connection_id: bytes | None = None
    """Client only: the ledger connection (TransportControl) ID this connection is paid
    by, 32 raw bytes (a bytearray is kept as bytes); sent to the server in the
    handshake (key ``"cid"``)."""
    port: int | None = None
    """Client only: the DTP port (service) we connect to, 0 to 65535; sent in the
    handshake (key ``"port"``)."""

    def __post_init__(self) -> None:
        # Checked when the config is made, not where it is used: 0 or less timed out
        # every handshake at once, NaN never timed one out (nor held a server's
        # handshake slot any less), and a string failed with a TypeError naming no
        # option -- each found only at a connection, on a server in its own thread.
        # Above threading.TIMEOUT_MAX a server's wait for its accept queue overflows.
        # Each is stored as a float: a Fraction (a real number, as dtp.socket's timeouts
        # take) would otherwise meet the floats of the clocks in the timer arithmetic.
        self._set_seconds(
            "handshake_timeout",
            _check_seconds(
                "handshake_timeout",
                self.handshake_timeout,
                "a number of seconds",
                threading.TIMEOUT_MAX,
            ),
        )
        # A negative keepalive_interval made the timer always due (a PING each time it
        # was looked at, a busy loop in the adapters); NaN or 0 meant no keepalive,
        # silently (None says that)
        if self.keepalive_interval is not None:
            self._set_seconds(
                "keepalive_interval",
                _check_seconds(
                    "keepalive_interval", self.keepalive_interval, "a number of seconds or None"
                ),
            )
        # idle_timeout goes to the peer in milliseconds: infinity raised OverflowError
        # (out of receive_data, on a server), and zero or less failed the peer's
        # handshake. No upper limit: above 2**62 - 1 ms the parameter says its largest.
        self._set_seconds(
            "idle_timeout",
            _check_seconds("idle_timeout", self.idle_timeout, "a number of seconds"),
        )
        # A str failed comparing with the record's room in every send_datagram, and 0 or
        # less refused every datagram (but an empty one). The size is of the datagram
        # itself: the DATAGRAM frame's 3 bytes of header come on top, and where a record
        # holds less (a lossy carrier's max_record_plaintext, 22 at least) the limit
        # in force is less -- so any size from 1 byte can be sent. No upper limit: the
        # record's room caps it.
        self._check_int("max_datagram_size", self.max_datagram_size, 1)
        # Checked here, not only by Connection() (a LocalProtocolError), so a bad config
        # is found when it is made, not at a connection: inside a server's accept, or
        # after a ledger deposit for a connect by host ID. The windows and the stream
        # limit go to the peer as transport parameters ("md", "msd", "ms"), which it
        # takes from 0 to 2**62 - 1 (_parse_params): beyond that its handshake would fail
        # and we would see only a handshake timeout (or msgpack's OverflowError from 2**64).
        for name in ("connection_window", "stream_window", "max_streams"):
            self._check_int(name, getattr(self, name), 0, VARINT_MAX)
        lossy = "" if self.reliable_carrier else " over a lossy carrier (reliable_carrier=False)"
        if lossy:
            # the reassembly of a lossy carrier holds at most a 32-bit window: found out
            # at the first stream frame, as an untyped failure of receive_data
            self._check_int("stream_window", self.stream_window, 1, (1 << 32) - 1, lossy)
        # Larger: data_to_send failed sealing a record. Over a lossy carrier, room for
        # no stream byte made packing loop forever (or fail on a negative length).
        lowest = MAX_STREAM_FRAME_OVERHEAD + 1 if lossy else 1
        self._check_int(
            "max_record_plaintext", self.max_record_plaintext, lowest, MAX_RECORD_PLAINTEXT, lossy
        )
        # "port" and "cid": what the peer's _parse_params takes, else its handshake fails
        if self.port is not None:
            self._check_int("port", self.port, 0, 0xFFFF)
        cid = self.connection_id
        if cid is not None:
            if not isinstance(cid, bytes | bytearray):
                raise TypeError(f"connection_id must be bytes or None, not {type(cid).__name__}")
            if len(cid) != 32:
                raise ValueError(f"connection_id must be 32 bytes, not {len(cid)}")
            if not isinstance(cid, bytes):
                # a bytearray changed after this check would reach the peer unchecked
                object.__setattr__(self, "connection_id", bytes(cid))

    @staticmethod
    def _check_int(
        name: str, value: object, least: int, most: int | None = None, where: str = ""
    ) -> None:
        """Refuse ``value`` (the config's ``name``) unless it is an int (a bool is not:
        True passed as 1) from ``least`` to ``most`` (None: no limit): TypeError for
        anything else, ValueError for an int out of range; ``where`` ends the message
        (the case the range is for)."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < least or (most is not None and value > most):
            if most is None:
                accepted = f"of at least {least}"
            elif most > 0xFFFF and (most + 1) & most == 0:  # 2**k - 1, as the wire says it
                accepted = f"from {least} to 2**{most.bit_length()} - 1"
            else:
                accepted = f"from {least} to {most}"
            raise ValueError(f"{name} must be an int {accepted}{where}, not {repr(value)[:40]}")

    def _set_seconds(self, name: str, value: float) -> None:
        # the dataclass is frozen: its own checked value is set past that
        object.__setattr__(self, name, value)


# --------------------------------------------------------------------------------------
# streams


@dataclass
class _Stream:
    stream_id: int
    # sending half: buf holds bytes from base_offset (unacked or unsent)
    send_state: SendState = SendState.OPEN
    send_buf: bytearray = field(default_factory=bytearray)
    base_offset: int = 0
    next_offset: int = 0  # first byte never sent
    send_credit: int = 0  # peer's MAX_STREAM_DATA
    retransmit: RangeSet = field(default_factory=RangeSet)  # offsets to send again
    acked: RangeSet = field(default_factory=RangeSet)
    fin_pending_resend: bool = False
    fin_acked: bool = False
    announce: bool = False  # opened by us: tell the peer even before any data
    # receiving half
    recv_state: RecvState = RecvState.OPEN
    delivered: int = 0  # bytes handed to the application (in events)
    consumed: int = 0  # bytes the application has read (acknowledge_read)
    recv_highest: int = 0  # highest offset + 1 seen (flow-control accounting)
    recv_limit: int = 0  # our advertised MAX_STREAM_DATA
    final_size: int | None = None
    reasm: Any = None  # C reassembly buffer, lossy carriers only

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.send_buf)

    def unsent(self) -> int:
        return self.end_offset - self.next_offset


def checked_noise_key(source: str, key: object) -> bytes | None:
    """``key`` (the argument or config field ``source``: a server's Noise static public
    key, or None) as bytes: TypeError for anything but bytes, bytearray or memoryview,
    ValueError unless 32 bytes. (A bytearray or memoryview key failed the blocking
    adapter's handshake with a TypeError from deep in the crypto; compared as it was, a
    hex string or a key cut short was refused only as one that "differs"; and bytes()
    of an int made that many zero bytes.)"""
    if key is None:
        return None
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(
            f"{source} must be 32 bytes (an X25519 public key) or None, got {type(key).__name__}"
        )
    raw = bytes(key)
    if len(raw) != 32:
        raise ValueError(f"{source} must be 32 bytes (an X25519 public key), not {len(raw)}")
    return raw


def direct_client_config(
    config: ConnectionConfig | None,
    identity: HostIdentity | None,
    server_key: bytes | None,
    expected_server_key: bytes | None,
    anonymous: Callable[[], HostIdentity],
) -> tuple[ConnectionConfig, bool]:
    """The client config of a connect to a carrier endpoint (the adapters'
    ``create_connection`` / ``open_connection`` with ``(host, port)``), and whether its
    identity is a fresh anonymous one (from ``anonymous()``). What ``config`` holds
    stands where the argument is None: its identity, its ``server_static`` and its
    ``expected_server_static`` (they were replaced by the arguments, None when not
    given: the config's keys dropped for an anonymous one, and a pinned server key
    dropped unseen -- an XX handshake then took any server). A key given both ways must
    be the same, and so must the key and the pin (IK to one server while the other is
    pinned sent our static key and proof to a server the pin refuses): ValueError. A
    key is 32 bytes (bytes, bytearray or memoryview, kept as bytes), else TypeError /
    ValueError naming it."""

    fields: dict[str, Any] = {"is_client": True}
    named: dict[str, str] = {}  # each key's source, for the messages
    for name, argument, given in (
        ("server_static", "server_key", server_key),
        ("expected_server_static", "expected_server_key", expected_server_key),
    ):
        from_argument = checked_noise_key(argument, given)
        held = (
            None
            if config is None
            else checked_noise_key(f"the config's {name}", getattr(config, name))
        )
        if from_argument is not None and held is not None and from_argument != held:
            raise ValueError(f"{argument} differs from the config's {name}")
        fields[name] = from_argument if from_argument is not None else held
        named[name] = argument if from_argument is not None else f"the config's {name}"
    key, pin = fields["server_static"], fields["expected_server_static"]
    if key is not None and pin is not None and key != pin:
        raise ValueError(f"{named['server_static']} and {named['expected_server_static']} differ")
    # (after the checks: a refused connect took no identity from the anonymous pool)
    made = False
    if identity is None and config is None:
        identity, made = anonymous(), True
    if identity is not None:
        fields["identity"] = identity
    # one dataclass made, not a default one and then its replacement
    if config is None:
        return ConnectionConfig(**fields), made
    return replace(config, **fields), made


class Connection:
    """One DTP connection, either side. See the module docstring."""

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
        self._lane_buf: memoryview | None = None
        #: The lane while a stream is lent to it (:meth:`lend`), else None; with the
        #: stream's ID and a time no later than the connection's next timer.
        self.lent_lane: Any = None
        self.lent_stream_id: int | None = None
        self.lent_timer: float | None = None
        self.lent_can_recv = False  # whether the lane may take the lent stream's bytes
        self._lent: _Stream | None = None
        self._early_records: list[bytes] = []
        self.peer_static: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.peer_address: str | None = None
        self.peer_public_key: bytes | None = None
        self._auth_proof: bytes | None = None
        self.pattern: str | None = None
        # streams and flow control
        self._streams: dict[int, _Stream] = {}
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
        # sealed again in reply to what still arrives until _closing_until, after the
        # 1st, 2nd, 4th, 8th... input (_closing_next)
        self._closing: bytes | None = None
        self._closing_until = 0.0
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

    # ----------------------------------------------------------------------------------
    # public state

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is ConnState.ESTABLISHED

    @property
    def first_handshake_message(self) -> bytes | None:
        """Server: the handshake message 1 it answered, as it came (pattern byte first;
        :mod:`dtp.replay_guard` reads its ephemeral key); None before one came, and
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
    def termination(self) -> ConnectionTerminated | None:
        """The final event once the connection is closed."""
        return self._terminated

    # ----------------------------------------------------------------------------------
    # the sans-I/O interface

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
                self._lane_feed(memoryview(data), stream, self._lane_buffer(len(data)), now, True)
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
            self._fail(_close_code_for(exc), str(exc), now)

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

    # ----------------------------------------------------------------------------------
    # application API

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
        self._ctrl.append(RawFrame(FRAME_CONTROL, int(ControlKind.ACCEPT)))
        self._events.append(ConnectionAccepted(self.peer_address))
        self._events.extend(self._held_events)
        self._held_events.clear()
        self._open_first_stream()

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
        self._held_events.clear()
        if self._state is ConnState.SERVER_DECIDING:
            # IK: the verdict goes out as a CLOSE right behind message 2, so that the
            # client reads the reason under the connection's transport keys
            self._answer_hello()
            self._finish_handshake(ConnState.AUTHENTICATING)
        self.close(code, reason)

    def can_open_stream(self) -> bool:
        """True when :meth:`open_stream` would not hit the peer's stream limit (a
        read-only look: the adapters wait on it for a stream slot to free)."""
        return self._first_stream_unclaimed or self._opened_by_us < self._peer_max_streams

    def open_stream(self) -> int:
        """Open a new stream; returns its ID."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        if self._first_stream_unclaimed:
            self._first_stream_unclaimed = False
            return 0
        if self._opened_by_us >= self._peer_max_streams:
            raise LocalProtocolError(
                f"peer allows {self._peer_max_streams} streams; wait for one to finish"
            )
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        self._opened_by_us += 1
        self._get_stream(stream_id, create=True).announce = True
        self._streams_dirty = True
        return stream_id

    def peer_may_send_credit(self) -> bool:
        """Whether the peer, as it reads what we sent, will still send flow-control
        credit: it does each time it has read a quarter of a window past its last
        update (Connection._return_credit), so while what we sent reaches beyond that
        point of the window it last gave us, its reading is not over. (A carrier closed
        under such a peer is reset by its late bytes, and the reset destroys what it has
        not read yet: the end of our data, RFC 1122 4.2.2.13.) A lent stream's counts
        must be taken back first."""
        params = self._peer_params
        md, msd = params.get("md"), params.get("msd")
        if isinstance(md, int) and self._conn_sent > self._conn_send_credit - md * 3 // 4:
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
        self._require_open()
        stream = self._get_stream(stream_id, create=False)
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
        self._streams_dirty = True

    def _can_seal_now(self) -> bool:
        return (
            self._acks is None
            and (
                self._state is ConnState.ESTABLISHED
                or (self.is_client and self._state is ConnState.AUTHENTICATING)
            )
            and not (
                self._ctrl
                or self._pending_max_data
                or self._pending_stream_credit
                or self._pending_max_streams
                or self._ping_pending
                or self._close_frame is not None
            )
        )

    def _seal_stream_now(
        self, stream: _Stream, data: bytes | bytearray | memoryview, end_stream: bool
    ) -> bytes | bytearray | memoryview:
        """Seal as much of ``data`` as flow control allows; returns the rest. A FIN
        goes out with the last byte when everything fits; otherwise it stays for the
        caller to queue."""
        size = len(data)
        credit = min(
            stream.send_credit - stream.next_offset, self._conn_send_credit - self._conn_sent
        )
        n = size if size <= credit else max(credit, 0)
        fin = end_stream and n == size
        if not n and not fin:
            return data
        offset = stream.next_offset
        view = data if n == size else memoryview(data)[:n]
        sealed, records = self._send_aead.seal_stream(
            self._send_counter, stream.stream_id, offset, view, fin
        )
        self._send_counter += records
        self.records_sent += records
        self._out.append(sealed)
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        self._conn_sent += n
        if fin:
            stream.send_state = SendState.FIN_SENT
            stream.fin_acked = True
            self._maybe_forget(stream)
            return b""
        return b"" if n == size else memoryview(data)[n:]

    # ----------------------------------------------------------------------------------
    # the lane: an I/O adapter's fast path for the established streams of a connection
    # over a reliable carrier. Same records and state changes as the general path, in
    # one C call each way (dtp.native.core.Lane), with the bytes going straight between the
    # carrier and the application's buffers.

    def _get_lane(self) -> Any:
        if self._lane is None:
            self._lane = _core.Lane(self._send_aead, self._recv_aead)
        return self._lane

    def _nothing_goes_first(self) -> bool:
        """Whether the lane may move stream bytes now: an established connection over a
        reliable carrier with no records or control frames waiting to go first."""
        return not (
            self._state is not ConnState.ESTABLISHED
            or self._acks is not None  # a lossy carrier: records are tracked for resending
            or self._out
            or self._ctrl
            or self._pending_max_data
            or self._pending_stream_credit
            or self._pending_max_streams
            or self._ping_pending
        )

    def seal_fast(
        self, stream_id: int, data: bytes | bytearray | memoryview, now: float
    ) -> tuple[memoryview, int] | None:
        """Seal the start of ``data`` on ``stream_id`` now, as much as flow control
        allows, when nothing else must go first; returns (records, bytes of ``data``
        taken) or None to use :meth:`send_stream_data`. The records are a view into the
        lane's buffer, valid until the next call: the caller writes them to the carrier
        (or copies them) at once, before anything :meth:`data_to_send` returns."""
        if self.lent_lane is not None:
            self._take_back()
        stream = self._streams.get(stream_id)
        if (
            stream is None
            or stream.send_buf
            or stream.send_state is not SendState.OPEN
            or not self._nothing_goes_first()
        ):
            return None
        offset = stream.next_offset
        credit = min(stream.send_credit - offset, self._conn_send_credit - self._conn_sent)
        if credit <= 0 or not data:
            return None
        lane = self._lane or self._get_lane()
        n = min(len(data), credit, lane.max_seal)
        sealed, records = lane.seal(
            self._send_counter, stream_id, offset, data if n == len(data) else data[:n]
        )
        self._send_counter += records
        self.records_sent += records
        self.bytes_sent += len(sealed)
        self._last_sent = now
        stream.announce = False
        stream.next_offset = stream.base_offset = offset + n
        self._conn_sent += n
        return sealed, n

    def sealed_kept(self) -> None:
        """The carrier kept the view :meth:`seal_fast` returned instead of copying what it
        could not send yet: the lane seals into a new buffer from now on."""
        if self._lane is not None:
            self._lane.release_output()

    def take_fast(
        self,
        data: bytes | bytearray | memoryview,
        stream_id: int,
        dst: bytearray | memoryview,
        now: float,
    ) -> tuple[int, bool]:
        """Feed bytes from the carrier, as :meth:`receive_data`, with ``stream_id``'s
        next bytes going straight into ``dst`` instead of to the handler, for as long as
        they come in order (up to a record of that stream the general path had to take,
        or until ``dst`` is full). Those count as read by the application (their
        flow-control credit is returned). Every other record takes the general path,
        in order.

        Returns how many bytes were written to ``dst``, and whether the connection now
        needs the adapter's usual attention (events, output, timers); when it does
        not, all ``data`` held was that stream's bytes."""
        if self.lent_lane is not None:
            self._take_back()
        stream = self._streams.get(stream_id)
        if (
            stream is None
            or stream.recv_state is not RecvState.OPEN
            or stream.recv_highest != stream.delivered
            or self._state is not ConnState.ESTABLISHED
            or self._acks is not None
            or not len(dst)
        ):
            self.receive_data(data, now)
            return 0, True
        self._last_received = now
        self.bytes_received += len(data)
        if self._inbuf:
            return self._lane_feed(memoryview(data), stream, memoryview(dst), now, False)
        lane = self._lane or self._get_lane()
        result = lane.take(
            data,
            stream_id,
            stream.delivered,
            stream.recv_limit,
            self._conn_received,
            self._conn_recv_limit,
            dst,
        )
        if result.consumed != len(data) or result.spill:
            # something else came along: the general machinery goes on from here
            taken, attention, _ = self._take_run(
                memoryview(data), stream, memoryview(dst), now, False, result
            )
            return taken, attention
        # the usual read: whole records of this stream, all of them in dst, read
        n = result.taken
        stream.delivered = stream.recv_highest = stream.delivered + n
        stream.consumed += n
        self._conn_received += n
        self._conn_consumed += n
        self.records_received += result.records
        self._lane_sid = stream_id
        if (
            self._conn_recv_limit - self._conn_consumed < self._conn_credit_at
            or stream.recv_limit - stream.consumed < self._stream_credit_at
        ):
            self._return_credit(stream)
        keepalive = self._keepalive
        return n, bool(
            self._events
            or self._pending_max_data
            or self._pending_stream_credit
            or (keepalive and now >= self._last_sent + keepalive)
        )

    # ----------------------------------------------------------------------------------
    # lending a stream: its hot state moves into the lane's flow (dtp_flow), so that an
    # adapter's send or receive on it is one C call with no bookkeeping here. Every
    # other entry point takes it back first (_take_back), so the connection never acts
    # on stale fields; the adapter only ever sees the lane.

    def lend(self, stream_id: int, now: float, recv: bool = True) -> Any:
        """Lend ``stream_id`` to the lane, when the connection has nothing else to do
        first: returns the lane (its ``flow`` filled; ``flow_seal`` / ``flow_take``
        then move the stream's bytes) or None. The loan lasts until any other method
        of the connection is called, or :meth:`take_back`. ``recv=False`` lends the
        stream for sending only (:attr:`lent_can_recv` is then False).

        While lent, :attr:`lent_timer` is a time no later than the next timer (the
        adapter wakes by then and calls :meth:`get_timer`)."""
        if self.lent_lane is not None:
            if self.lent_stream_id == stream_id:
                return self.lent_lane
            self._take_back()
        stream = self._streams.get(stream_id)
        if stream is None or not self._nothing_goes_first() or self._events:
            return None
        can_send = stream.send_state is SendState.OPEN and not stream.send_buf
        can_recv = (
            recv and stream.recv_state is RecvState.OPEN and stream.recv_highest == stream.delivered
        )
        inbuf = self._inbuf
        if inbuf:
            # the start of a record the carrier has not brought whole yet: the lane
            # keeps it for its next read (anything more waits for the general path)
            have = len(inbuf)
            if (
                not can_recv
                or have > MAX_RECORD_PLAINTEXT + 28
                or (have >= 12 and have >= 12 + (inbuf[2] | inbuf[3] << 8))
            ):
                return None
        if not (can_send or can_recv):
            return None
        timer = self.get_timer()
        lane = self._lane or self._get_lane()
        if inbuf:
            lane.rview[: len(inbuf)] = inbuf
            lane.pending = len(inbuf)
            inbuf.clear()
        f = lane.flow
        f.stream_id = stream_id
        f.can_send = can_send
        f.can_recv = can_recv
        f.send_counter = self._send_counter
        f.send_offset = stream.next_offset
        f.send_limit = max(stream.send_credit, stream.next_offset)
        f.conn_sent = self._conn_sent
        f.conn_send_limit = max(self._conn_send_credit, self._conn_sent)
        f.records_sent = f.wire_sent = f.records_received = f.wire_received = 0
        f.last_sent = self._last_sent
        f.last_received = self._last_received
        rx = f.rx
        rx.stream_id = stream_id
        rx.offset = stream.delivered
        rx.stream_limit = stream.recv_limit
        rx.conn_received = self._conn_received
        rx.conn_limit = self._conn_recv_limit
        # credit is due (see _return_credit) once what is read leaves less than the
        # *_credit_at of a window; reads here are taken as read at once
        f.credit_offset = stream.delivered + max(
            0, stream.recv_limit - stream.consumed - self._stream_credit_at
        )
        f.credit_conn = self._conn_received + max(
            0, self._conn_recv_limit - self._conn_consumed - self._conn_credit_at
        )
        self.lent_lane = lane
        self.lent_stream_id = stream_id
        self.lent_timer = timer
        self.lent_can_recv = can_recv
        self._lent = stream
        return lane

    def take_back(
        self,
        now: float,
        spill: bytes | memoryview = b"",
        rest: bytes | bytearray | memoryview = b"",
    ) -> None:
        """End the loan of :meth:`lend` after a lane call that did not go cleanly:
        ``spill`` is the data of a record ``flow_take`` could not fit (the stream's next
        bytes, still to be read), ``rest`` what the adapter read from the carrier past
        the records taken (the general path has it next, also when the loan had
        already ended)."""
        stream = self._lent
        if stream is not None:
            self._take_back(len(spill))
            if spill:
                handler = self.stream_data_handler
                if handler is not None:
                    handler(stream.stream_id, spill, False)
                else:
                    self._deliver(StreamDataReceived(stream.stream_id, bytes(spill), False))
        if rest:
            self.receive_data(rest, now)  # also when the loan had ended already

    def _take_back(self, unread: int = 0) -> None:
        """The lent stream's state back from the lane's flow (``unread``: bytes taken
        there that the application has not read)."""
        lane = self.lent_lane
        f = lane.flow
        stream = self._lent
        assert stream is not None
        self.lent_lane = self.lent_stream_id = self.lent_timer = self._lent = None
        self.lent_can_recv = False
        # a lane call made with a stale view of the loan (an adapter that waited
        # without the lock meanwhile) now moves nothing
        f.can_send = f.can_recv = 0
        pending = lane.pending
        if pending:
            # the start of a record the lane kept: the general path completes it
            self._inbuf += lane.rview[:pending]
            lane.pending = 0
        self._send_counter = f.send_counter
        if f.send_offset != stream.next_offset:
            stream.announce = False
            stream.next_offset = stream.base_offset = f.send_offset
            self._conn_sent = f.conn_sent
            self.records_sent += f.records_sent
            self.bytes_sent += f.wire_sent
            self._last_sent = f.last_sent
        rx = f.rx
        got = rx.offset - stream.delivered
        if got:
            stream.delivered = stream.recv_highest = rx.offset
            self._conn_received = rx.conn_received
            read = got - unread
            stream.consumed += read
            self._conn_consumed += read
            self.records_received += f.records_received
            self.bytes_received += f.wire_received
            self._last_received = f.last_received
            self._lane_sid = stream.stream_id
            self._return_credit(stream)

    def _lane_buffer(self, size: int) -> memoryview:
        """The buffer the lane opens records into for the handler (a run of a read
        is at most the read plus the record it completes)."""
        size += MAX_RECORD_PLAINTEXT
        buf = self._lane_buf
        if buf is None or len(buf) < size:
            buf = memoryview(bytearray(size))
            if size <= _LANE_BUFFER_KEEP:
                self._lane_buf = buf
        return buf

    def _lane_feed(
        self, view: memoryview, stream: _Stream, dst: memoryview, now: float, deliver: bool
    ) -> tuple[int, bool]:
        """Bytes from the carrier (bookkeeping done) through the lane for ``stream``:
        first the record a previous read ended inside, if any, then the rest. With
        ``deliver`` the bytes go to the handler (``dst`` is scratch space); without,
        they stay in ``dst`` for the caller. Returns (bytes taken, attention)."""
        if self._inbuf:
            # the last read ended inside a record: complete it, so the lane sees it whole
            inbuf = self._inbuf
            have = len(inbuf)
            if have < 12:
                inbuf += view[: 12 - have]
                view = view[12 - have :]
                if len(inbuf) < 12:
                    return 0, False
            body = inbuf[2] | inbuf[3] << 8
            if inbuf[0] != REC_DATA or inbuf[1] or not 16 <= body <= MAX_RECORD_PLAINTEXT + 16:
                self._receive(view, now)  # the general path judges (and reports) it
                return 0, True
            need = 12 + body - len(inbuf)
            if len(view) < need:
                inbuf += view
                return 0, False
            first = bytes(inbuf) + view[:need]
            inbuf.clear()
            taken, attention, general = self._take_run(first, stream, dst, now, deliver)
            rest = view[need:]
            if general or not rest:
                self._receive(rest, now)  # after what the general path took
                return taken, attention
            more, attention2, _ = self._take_run(
                rest, stream, dst if deliver else dst[taken:], now, deliver
            )
            return taken + more, attention or attention2
        taken, attention, _ = self._take_run(view, stream, dst, now, deliver)
        return taken, attention

    def _take_run(
        self,
        view: bytes | memoryview,
        stream: _Stream,
        dst: bytearray | memoryview,
        now: float,
        deliver: bool = False,
        result: TakeResult | None = None,
    ) -> tuple[int, bool, bool]:
        """:meth:`_lane_feed` over whole records and perhaps a partial one at the end:
        returns the bytes taken, attention, and whether the general path took over for
        good (then later bytes must go that way too). ``result``: the lane's take of
        ``view`` into ``dst`` already made, to go on from."""
        lane = self._lane or self._get_lane()
        stream_id = stream.stream_id
        taken = 0
        attention = general = False
        out = dst if type(dst) is memoryview else memoryview(dst)
        handler = self.stream_data_handler
        while view:
            if result is None:
                result = lane.take(
                    view,
                    stream_id,
                    stream.delivered,
                    stream.recv_limit,
                    self._conn_received,
                    self._conn_recv_limit,
                    out[taken:] if taken and not deliver else out,
                )
            if result.records:
                n = result.taken
                spill = result.spill
                got = n + len(spill)
                stream.delivered = stream.recv_highest = stream.delivered + got
                self._conn_received += got
                self.records_received += result.records
                taken += n
                if deliver and n and handler is not None:
                    handler(stream_id, out[:n], False)
                if spill:
                    if handler is not None:
                        handler(stream_id, spill, False)
                    else:
                        self._deliver(StreamDataReceived(stream_id, bytes(spill), False))
            view = view[result.consumed :]
            status, result = result.status, None
            if not view:
                break
            attention = True
            if status != STOP:
                # a partial record (kept for the next read), or dst is full: the rest
                # waits in the general path's buffers, after what dst holds
                self._receive(view, now)
                general = True
                break
            # one record for the general path (a control frame, another stream, a FIN,
            # something bad); past it the lane goes on if it delivered nothing of ours
            before = stream.delivered
            size = 12 + (view[2] | view[3] << 8) if len(view) >= 12 else len(view)
            self._lane_sid = None
            self._receive(view[:size], now)
            view = view[size:]
            if deliver and self._lane_sid not in (None, stream_id):
                # the general path delivered to another stream: follow it
                other = self._streams.get(self._lane_sid)
                if other is not None and other.recv_highest == other.delivered:
                    stream, stream_id, before = other, other.stream_id, other.delivered
            if (
                self._state is not ConnState.ESTABLISHED
                or stream.delivered != before
                or stream.recv_state is not RecvState.OPEN
                or self._inbuf
            ):
                self._receive(view, now)
                general = True
                break
        self._lane_sid = stream_id
        if taken and not deliver:
            self.acknowledge_read(stream_id, taken)
        if not attention:
            keepalive = self._keepalive
            attention = bool(
                self._events
                or self._pending_max_data
                or self._pending_stream_credit
                or (keepalive and now >= self._last_sent + keepalive)
            )
        return taken, attention, general

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """Abandon sending on a stream; unsent bytes are dropped. Nothing is sent when
        its sending was reset already or is done (its FIN and every byte before it
        acknowledged; on a reliable carrier, handed to it)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        _check_code(error_code)
        stream = self._get_stream(stream_id, create=False)
        # Nothing to abandon once our sending is reset already, or done (RFC 9000 3.1,
        # "Data Recvd": the peer has every byte and the FIN, and a RESET_STREAM then
        # is only a frame to send and drop), as for the peer's STOP_SENDING
        if stream.send_state is SendState.RESET or _send_done(stream):
            return
        stream.send_state = SendState.RESET
        final = stream.next_offset
        self._unacked -= final - stream.base_offset  # (always 0 on a reliable carrier)
        stream.send_buf.clear()
        stream.base_offset = final
        stream.retransmit = RangeSet()
        self._ctrl.append(RawFrame(FRAME_RESET_STREAM, stream_id, error_code, final))
        self._maybe_forget(stream)

    def stop_sending(self, stream_id: int, error_code: int = 0) -> None:
        """Ask the peer to stop sending on a stream (we will not read it)."""
        if self.lent_lane is not None:
            self._take_back()
        self._require_open()
        _check_code(error_code)
        stream = self._get_stream(stream_id, create=False)
        if stream.recv_state in (RecvState.OPEN, RecvState.FIN_RECEIVED):
            self._ctrl.append(RawFrame(FRAME_STOP_SENDING, stream_id, error_code))

    def acknowledge_read(self, stream_id: int, nbytes: int) -> None:
        """The application consumed ``nbytes`` of a stream: return flow-control credit."""
        if self.lent_lane is not None:
            self._take_back()
        if nbytes <= 0 or self._state is ConnState.CLOSED:
            return
        self._conn_consumed += nbytes
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.consumed += nbytes
        self._return_credit(stream)

    def _return_credit(self, stream: _Stream | None) -> None:
        """After the application consumed bytes (of ``stream``): queue credit updates
        for the windows that are used up enough."""
        # Credit goes back once a quarter of the window is used: a sender on a fast
        # carrier then always has most of a window to go on while the update travels.
        # Limits are varints: one past VARINT_MAX failed to encode (a window near it
        # reaches that once some bytes are read), so they stop there.
        if self._conn_recv_limit - self._conn_consumed < self._conn_credit_at:
            limit = min(self._conn_consumed + self.config.connection_window, VARINT_MAX)
            if limit > self._conn_recv_limit:
                self._conn_recv_limit = limit
                self._pending_max_data = True
        if (
            stream is not None
            and stream.recv_state is RecvState.OPEN
            and stream.recv_limit - stream.consumed < self._stream_credit_at
        ):
            limit = min(stream.consumed + self.config.stream_window, VARINT_MAX)
            if limit > stream.recv_limit:
                stream.recv_limit = limit
                self._pending_stream_credit.add(stream.stream_id)

    def defer_stream_credit(self) -> None:
        """From now on a stream the peer opens is given back to its stream limit
        (MAX_STREAMS) only once it ended *and* the application took it
        (:meth:`stream_taken`), so that ``max_streams`` also bounds the streams waiting
        to be accepted. The adapters' Session calls this: it keeps a buffer for each
        stream until the application accepts it, and a peer that opened a stream,
        finished it at once and had us stop sending on it (the connection then forgets
        it) would otherwise get its place back while that buffer stays -- without end."""
        if self._untaken is None:
            self._untaken = set()

    def stream_taken(self, stream_id: int) -> None:
        """The application took the peer's stream ``stream_id`` (after
        :meth:`defer_stream_credit`): if it ended already, its place in the stream
        limit goes back to the peer now."""
        untaken = self._untaken
        if untaken is None or stream_id not in untaken:
            return
        untaken.discard(stream_id)
        if stream_id not in self._streams and self._state is not ConnState.CLOSED:
            if self.lent_lane is not None:
                self._take_back()
            self._peer_streams_done += 1
            self._pending_max_streams = True

    def send_buffered(self, stream_id: int | None = None) -> int:
        """Bytes queued but not yet sent (on one stream, or on all)."""
        if stream_id is not None:
            stream = self._streams.get(stream_id)
            return stream.unsent() if stream else 0
        return sum(s.unsent() for s in self._streams.values())

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
            body = bytes_like(data)
            if len(body) > limit:
                raise LocalProtocolError(f"datagram of {len(body)} bytes exceeds {limit}")
            frames.append(RawFrame(FRAME_DATAGRAM, 0, 0, 0, body))
            size += len(body)
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
        _check_code(error_code)
        if self._send_aead is not None:
            self._close_frame = RawFrame(
                FRAME_CLOSE, int(error_code), 0, 0, close_reason_bytes(reason)
            )
        self._terminate(int(error_code), reason, by_peer=False, now=None)

    # ----------------------------------------------------------------------------------
    # input

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

    def _complete_partial(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> bytes | bytearray | memoryview:
        """Move into the input buffer only the bytes that complete the partial record
        held there, and process it; returns the rest of ``data``. (Same as feeding the
        data in two pieces, which any split must handle alike.)"""
        view = memoryview(data)
        inbuf = self._inbuf
        while inbuf and view and self._state is not ConnState.CLOSED:
            have = len(inbuf)
            if have < 12:
                need = 12 - have  # the header first: its checks come as soon as it is whole
            else:
                need = 12 + (inbuf[2] | inbuf[3] << 8) - have
                if need <= 0:
                    break  # a whole record the general path left for later
            inbuf += view[:need]
            view = view[need:]
            self._process_input(now)
            inbuf = self._inbuf  # _terminate rebinds it
        return view

    def _process_direct(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> bytes | bytearray | memoryview:
        """Open the DATA records at the start of ``data`` without copying it; returns
        what is left for :meth:`_process_input` (a partial record, or a record that
        needs its attention: an error or a handshake record)."""
        view = memoryview(data)
        pos = 0
        size = len(view)
        while pos < size:
            result = self._recv_aead.open_frames(view[pos:] if pos else view)
            if not self._handle_records(result.records, now):
                return b""
            pos += result.consumed
            if result.status != FULL or result.error is not None:
                break
        return view[pos:] if pos else data

    def _drop_bad_record(self) -> None:
        batch = _core.parse_records(self._inbuf, max_records=1)
        skip = (12 + batch.records[0].body_len) if batch.records else len(self._inbuf)
        del self._inbuf[:skip]

    def _handle_late_handshake_record(self, now: float) -> None:
        batch = _core.parse_records(self._inbuf, max_records=1)
        if not batch.records:
            return
        record = batch.records[0]
        start = record.offset + 12
        body = bytes(self._inbuf[start : start + record.body_len])
        del self._inbuf[: 12 + record.body_len]
        if self.config.reliable_carrier:
            raise RemoteProtocolError("handshake record after the handshake", ErrorCode.ARG)
        # a lossy carrier repeated a handshake message: answer a repeated first message
        if (
            not self.is_client
            and record.kind == REC_HS_INIT
            and record.counter == 0
            and body == self._hs_init
        ):
            self._resend_handshake()

    def _resend_handshake(self) -> None:
        for kind, message in self._hs_messages:
            self._out.append(_core.write_record_header(kind, 0, len(message), 0) + message)

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
                self._early_records.append(bytes(self._inbuf[: batch.consumed]))
            # else dropped, as lossy carriers drop what they cannot take: anyone can
            # forge unauthenticated records, and failing here let a few dozen of them
            # end a handshake in progress
            del self._inbuf[: batch.consumed]
            return True
        del self._inbuf[: batch.consumed]
        if record.counter != 0:
            # docs/protocol.md 8.1: a handshake record's counter is 0, like a reserved
            # field; anything else is a damaged or forged handshake message
            if self.config.reliable_carrier:
                raise HandshakeError(
                    f"handshake record with counter {record.counter} (it must be 0)"
                )
            logger.debug("dropping a handshake record with counter %d", record.counter)
            return True
        self._handle_handshake_message(record.kind, body, now)
        return True

    def _handle_handshake_message(self, kind: int, body: bytes, now: float) -> None:
        expected = {
            ConnState.SERVER_WAIT: REC_HS_INIT,
            ConnState.CLIENT_HELLO: REC_HS_RESP,
            ConnState.SERVER_FINAL: REC_HS_FINAL,
        }.get(self._state)
        if kind != expected:
            if not self.config.reliable_carrier:
                if not self.is_client and kind == REC_HS_INIT and body == self._hs_init:
                    self._resend_handshake()  # our reply was lost: the client repeats
                return  # any other stray repeat on a lossy carrier
            raise HandshakeError(f"unexpected handshake record kind {kind}")
        if self.config.reliable_carrier:
            payload = self._hs.read_message(body)
        else:
            # anyone can slip a forged or damaged message in before the genuine one: it
            # is dropped, the handshake left as it was for the genuine one (or its resend)
            try:
                payload = self._hs.read_message(body, keep_state=True)
            except HandshakeError as exc:
                logger.debug("dropping a handshake message that failed: %s", exc)
                return
        self._last_received = now  # an authentic message (lossy carriers wait for one)
        if kind == REC_HS_INIT:
            try:
                params = _parse_params(payload, from_client=True)
                proof = params.pop("auth", None)
                if self._hs.pattern == PATTERN_IK:
                    if proof is None:
                        raise HandshakeError("IK message 1 carries no identity proof")
                    address = verify_auth_proof(proof, self._hs.auth_binding, early=True)
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
                self._hs.unread_first_message()
                return
            # only a copy of this very message is answered again (lossy carriers): any
            # other, which anyone can forge, would have us send message 2 on demand
            self._hs_init = body
            self._peer_params = params
            if self._hs.pattern == PATTERN_IK:
                assert proof is not None
                self._authenticated(proof, address)
                self.peer_static = self._hs.remote_static
                # message 2 waits for the application's verdict (accept / refuse)
                self._state = transition(self._state, ConnState.SERVER_DECIDING)
                return
            reply = self._hs.write_message(self._transport_params())
            self._send_handshake(REC_HS_RESP, reply, now, resend=False)
            if self._hs.complete:
                self._finish_handshake(ConnState.AUTHENTICATING)
            else:
                self._state = transition(self._state, ConnState.SERVER_FINAL)
        elif kind == REC_HS_RESP:
            # before XX message 3, which carries our static key: an impostor gets nothing
            expected_key = self.config.expected_server_static
            if expected_key is not None and self._hs.remote_static != expected_key:
                raise HandshakeError("the server's static key is not the expected one")
            self._peer_params = _parse_params(payload)
            if not self._hs.complete:
                final = self._hs.write_message(b"")
                self._hs_messages.clear()
                self._send_handshake(REC_HS_FINAL, final, now)
            else:
                self._hs_messages.clear()
                self._hs_resend_at = None
            self._finish_handshake(ConnState.AUTHENTICATING)
            if self.pattern == "XX":  # in IK the proof went in message 1
                proof = make_auth_proof(self.config.identity, self._hs.handshake_hash)
                self._ctrl.insert(0, RawFrame(FRAME_CONTROL, int(ControlKind.AUTH), 0, 0, proof))
        else:  # REC_HS_FINAL
            self._finish_handshake(ConnState.AUTHENTICATING)
        early, self._early_records = self._early_records, []
        for blob in early:
            self._inbuf[:0] = blob

    def _finish_handshake(self, new_state: ConnState) -> None:
        send_key, recv_key = self._hs.transport_keys()
        self._send_aead = _core.Aead(send_key)
        self._recv_aead = _core.Aead(recv_key)
        if self.config.reliable_carrier:
            # records come as they were sent (0, 1, 2, ...): one missing or moved was
            # removed or moved on the way, which a window of unseen counters would not
            # notice (an application CONTROL message, a DATAGRAM or a RESET_STREAM,
            # dropped from the byte stream without a trace)
            self._recv_aead.set_in_order()
        self.peer_static = self._hs.remote_static
        self.handshake_hash = self._hs.handshake_hash
        self.pattern = "IK" if self._hs.pattern == PATTERN_IK else "XX"
        params = self._peer_params
        self._conn_send_credit = params["md"]
        self._peer_max_streams = params["ms"]
        if self._keepalive:
            # a PING at half the peer's idle timeout, or a quiet connection (or one we
            # only send on, whose peer may answer nothing) dies at its end: the peer
            # hears nothing from us for our whole interval. Not below MIN_KEEPALIVE,
            # whatever the peer asks (a PING every millisecond would be its to order)
            peer_idle = params["it"] / 1000
            self._keepalive = min(self._keepalive, max(peer_idle / 2, MIN_KEEPALIVE))
        self._state = transition(self._state, new_state)
        assert self.peer_static is not None and self.handshake_hash is not None
        self._events.append(HandshakeCompleted(self.pattern, self.peer_static, self.handshake_hash))

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

    def _fast_stream_frame(self, stream_id: int, offset: int, data: bytes | memoryview) -> bool:
        """In-order data on an open stream of an established connection over a reliable
        carrier, within flow control, with a handler to take it: deliver it and return
        True. Anything else returns False for the general path to judge."""
        handler = self.stream_data_handler
        stream = self._streams.get(stream_id)
        if (
            handler is None
            or stream is None
            or stream.recv_state is not RecvState.OPEN
            or offset != stream.delivered
            or self._acks is not None
            or self._state is not ConnState.ESTABLISHED
        ):
            return False
        end = offset + len(data)
        if end > stream.recv_limit:
            return False
        grown = end - stream.recv_highest
        if grown > 0:
            if self._conn_received + grown > self._conn_recv_limit:
                return False
            self._conn_received += grown
            stream.recv_highest = end
        if data:
            stream.delivered = end
            self._lane_sid = stream_id
            handler(stream_id, data, False)
        return True

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
                and not _send_done(stream)
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

    def _on_control(self, kind: int, data: bytes) -> None:
        lossy = not self.config.reliable_carrier
        if kind == ControlKind.AUTH:
            if lossy and self.peer_address is not None and data == self._auth_proof:
                return  # a retransmitted copy of the proof we already accepted
            if self.is_client or self.peer_address is not None:
                raise RemoteProtocolError("unexpected AUTH frame", ErrorCode.FRAME_VALUE)
            assert self.handshake_hash is not None
            self._authenticated(data, verify_auth_proof(data, self.handshake_hash))
        elif kind == ControlKind.ACCEPT:
            if lossy and self.is_client and self._state is ConnState.ESTABLISHED:
                return  # a retransmitted copy
            if not self.is_client or self._state is not ConnState.AUTHENTICATING:
                raise RemoteProtocolError("unexpected ACCEPT frame", ErrorCode.FRAME_VALUE)
            self._state = transition(self._state, ConnState.ESTABLISHED)
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
        if self.pattern != "IK" or 0 in self._streams:
            return
        if not self.is_client and self._peer_opened:
            # the client opened it already, with frames of its own (before the hooks
            # decided), and may have ended it since: opened again, the peer's next ID
            # was past it and the server's task died on an AssertionError
            return
        if self.is_client:
            if self._next_stream_id == 0 and self._peer_max_streams > 0:
                self._get_stream(0, create=True)
                self._next_stream_id = 2
                self._opened_by_us = 1
                self._first_stream_unclaimed = True
        elif self._local_max_streams > 0:
            self._open_peer_streams_up_to(0)

    def _authenticated(self, proof: bytes, address: str) -> None:
        """The client's identity proof checked out: it is ``address``."""
        self.peer_address = address
        self.peer_public_key = proof[65:97]
        self._auth_proof = proof
        self._events.append(PeerAuthenticated(address, proof[65:97]))

    def _answer_hello(self) -> None:
        """Server, IK: message 2, which completes the handshake (sent with the verdict)."""
        reply = self._hs.write_message(self._transport_params())
        self._send_handshake(REC_HS_RESP, reply, None, resend=False)

    def _deliver(self, event: Event) -> None:
        """Application-facing events wait for accept() on the server."""
        if not self.is_client and self._state is ConnState.AUTHENTICATING:
            if isinstance(event, (DatagramReceived, ControlReceived, ReceiptReceived)):
                # flow control bounds held stream bytes, nothing these: a client could
                # fill the server's memory while the application decides on it
                self._held_bytes += len(event.data) + 64
            else:
                # every other event weighs too. Flow control bounds the held stream
                # bytes, not the events that carry them (one-byte frames held a hundred
                # times the connection window); and a stream the client opened, reset
                # and had us stop sending on is forgotten, which gives it a new stream
                # in MAX_STREAMS: unweighed, that cycle held three events per stream for
                # as long as the application decided, without end
                self._held_bytes += 64
            if self._held_bytes > self.config.connection_window:
                if isinstance(event, DatagramReceived):
                    return  # unreliable anyway: dropped, as a full carrier would
                raise RemoteProtocolError(
                    "too many frames before the server accepted", ErrorCode.FRAME_VALUE
                )
            self._held_events.append(event)
        else:
            self._events.append(event)

    def _on_stream_frame(self, stream_id: int, offset: int, data: bytes, fin: bool) -> None:
        if self._state is ConnState.AUTHENTICATING and (self.is_client or not self.peer_address):
            raise RemoteProtocolError("stream data before authentication", ErrorCode.FRAME_VALUE)
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_ours(stream_id):
                self._check_not_unopened(stream_id)
                return  # a late frame for a stream we already forgot
            if stream_id < self._peer_next_id():
                return  # a late frame for a finished peer stream
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
        if grown > 0 and self._conn_received + grown > self._conn_recv_limit:
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
            self._conn_received += grown
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
            if done:
                self._maybe_forget(stream)

    def _on_reset(self, stream_id: int, error_code: int, final_size: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_not_unopened(stream_id)
            if self._is_ours(stream_id) or stream_id < self._peer_next_id():
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
        self._conn_received += unsent
        if self._conn_received > self._conn_recv_limit:
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
            self._conn_consumed += undelivered
            self._return_credit(None)
        self._deliver(StreamResetReceived(stream_id, error_code))
        self._maybe_forget(stream)

    # ----------------------------------------------------------------------------------
    # output

    def _transport_params(self) -> bytes:
        params: dict[str, Any] = {
            "v": TRANSPORT_VERSION,
            "md": self.config.connection_window,
            "msd": self.config.stream_window,
            "ms": self.config.max_streams,
            "it": int(min(self.config.idle_timeout * 1000, 2**62 - 1)),
        }
        if self.is_client:
            if self._hs.pattern == PATTERN_IK:
                params["auth"] = make_auth_proof(
                    self.config.identity, self._hs.auth_binding, early=True
                )
            # optional binding to a ledger connection: part of message 1's payload, which
            # only the holder of the ephemeral key the identity proof names can write
            if self.config.connection_id is not None:
                params["cid"] = bytes(self.config.connection_id)
            if self.config.port is not None:
                params["port"] = self.config.port
        packed: bytes = msgpack.packb(params)
        return packed

    def _send_handshake(
        self, kind: int, message: bytes, now: float | None, resend: bool = True
    ) -> None:
        record = _core.write_record_header(kind, 0, len(message), 0) + message
        self._out.append(record)
        if resend:
            self._hs_messages.append((kind, message))
        else:
            self._hs_messages = [(kind, message)]
        if not self.config.reliable_carrier and self.is_client:
            assert now is not None  # only the client resends on its own
            self._hs_resend_at = now + self._hs_resend_interval

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
            frames_now.append(
                RawFrame(
                    FRAME_MAX_STREAMS,
                    min(self._local_max_streams + self._peer_streams_done, VARINT_MAX),
                )
            )
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
                # a lossy carrier may lose it: kept to be sent again (_input_while_closing)
                self._closing = close
                self._closing_until = now + 3 * self._recovery.pto_interval()
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
            cost = _frame_bound(frame)
            if group and bound + cost > limit:
                plaintexts.append(_core.encode_frames(group))
                items_per_record.append(items)
                eliciting.append(any_eliciting)
                group, items, bound, any_eliciting = [], [], 0, False
            group.append(frame)
            bound += cost
            if frame.type != FRAME_ACK:
                any_eliciting = True
            if frame.type in _RETRANSMITTED_CONTROL:
                items.append(_ResendFrame(frame))
            elif frame.type in (FRAME_MAX_DATA, FRAME_MAX_STREAM_DATA, FRAME_MAX_STREAMS):
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

    def _seal_queued(self, stream: _Stream, length: int) -> None:
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
        stream: _Stream,
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
    # recovery (lossy carriers)

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

    def _advance_acked(self, stream: _Stream) -> None:
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

    # ----------------------------------------------------------------------------------
    # helpers

    def _require_open(self) -> None:
        if self._state is ConnState.CLOSED:
            raise ConnectionClosed("the connection is closed")
        if self._send_aead is None:
            raise LocalProtocolError("the handshake has not finished")

    def _is_ours(self, stream_id: int) -> bool:
        return stream_initiator_is_client(stream_id) == self.is_client

    def stream_ended(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was opened (by either side) and the connection is done
        with it (forgotten: both ways ended)."""
        if stream_id in self._streams or stream_id < 0:
            return False
        if self._is_ours(stream_id):
            return stream_id < self._next_stream_id
        return stream_id < self._peer_next_id()

    def _check_not_unopened(self, stream_id: int) -> None:
        """A frame naming a stream of our own parity that we never opened: no honest
        peer can know of it (STREAM on one always failed; the other stream frames were
        dropped unnoticed)."""
        if self._is_ours(stream_id) and stream_id >= self._next_stream_id:
            raise RemoteProtocolError(
                f"a frame on stream {stream_id}, which we never opened", ErrorCode.FRAME_VALUE
            )

    def _peer_next_id(self) -> int:
        first = 1 if self.is_client else 0
        return first + 2 * self._peer_opened

    def _open_peer_streams_up_to(self, stream_id: int) -> _Stream:
        """A peer stream ID implicitly opens every lower peer stream ID (as in QUIC)."""
        new_total = (stream_id - (1 if self.is_client else 0)) // 2 + 1
        if new_total > self._local_max_streams + self._peer_streams_done:
            raise RemoteProtocolError("peer opened too many streams", ErrorCode.FRAME_VALUE)
        stream: _Stream | None = None
        untaken = self._untaken
        for sid in range(self._peer_next_id(), stream_id + 1, 2):
            stream = self._get_stream(sid, create=True)
            self._peer_opened += 1
            if untaken is not None:
                untaken.add(sid)
            self._deliver(StreamOpened(sid))
        assert stream is not None
        return stream

    def _get_stream(self, stream_id: int, create: bool) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            if not create:
                raise LocalProtocolError(f"no stream {stream_id}")
            stream = _Stream(
                stream_id,
                send_credit=self._peer_params.get("msd", 0),
                recv_limit=self.config.stream_window,
            )
            self._streams[stream_id] = stream
        return stream

    def _maybe_forget(self, stream: _Stream) -> None:
        send_done = stream.send_state is SendState.RESET or _send_done(stream)
        recv_done = stream.recv_state in (RecvState.DONE, RecvState.RESET)
        if send_done and recv_done and stream.stream_id in self._streams:
            del self._streams[stream.stream_id]
            if not self._is_ours(stream.stream_id) and (
                self._untaken is None or stream.stream_id not in self._untaken
            ):
                self._peer_streams_done += 1
                self._pending_max_streams = True

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


def _frame_bound(frame: RawFrame) -> int:
    """An upper bound of a frame's encoded size (the C encoder's budget): type, three
    varints and a length, plus the data; an ACK's ranges at 16 bytes each."""
    if frame.type == FRAME_ACK:
        return 27 + 16 * len(frame.ranges)
    padding = frame.a if frame.type == FRAME_PADDING else 0
    return 33 + len(frame.data) + padding


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


_RETRANSMITTED_CONTROL = {FRAME_RESET_STREAM, FRAME_STOP_SENDING, FRAME_CONTROL, FRAME_RECEIPT}


class _FlowControlViolation(RemoteProtocolError):
    pass


def _close_code_for(exc: ProtocolError) -> CloseCode:
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


def _check_seconds(name: str, value: object, what: str, most: float = math.inf) -> float:
    """A config's ``name`` as a float of seconds, refused unless it is a positive,
    finite real number (an int, a float, a Fraction: what ``numbers.Real`` holds) of at
    most ``most``: TypeError for anything else (a bool too: True passed as 1 s; a
    Decimal, not a ``numbers.Real``, as a socket's settimeout refuses it), saying it
    must be ``what``; ValueError for a number out of range (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int (or a Fraction) beyond the float range
        seconds = math.inf
    if not (math.isfinite(seconds) and 0 < seconds <= most):
        limit = f" up to {most:.0f}" if most < math.inf else ""
        raise ValueError(
            f"{name} must be a positive, finite number of seconds{limit}, not {repr(value)[:40]}"
        )
    return seconds


def _send_done(stream: _Stream) -> bool:
    """Whether ``stream``'s FIN and every byte before it were acknowledged (RFC 9000's
    "Data Recvd"; on a reliable carrier, handed to it). On a lossy carrier the FIN's
    record can be acknowledged before a resent chunk, hence the other checks."""
    return (
        stream.send_state is SendState.FIN_SENT
        and stream.fin_acked
        and stream.base_offset == stream.end_offset
        and not stream.retransmit
    )


def close_reason_bytes(reason: str, limit: int = MAX_CLOSE_REASON) -> bytes:
    """``reason`` as a CLOSE frame carries it: UTF-8, at most ``limit`` bytes
    (:data:`MAX_CLOSE_REASON`), cut at a character boundary. A cut at the byte limit
    could split a multi-byte character, which the peer (decoding with "replace") showed
    as a U+FFFD at the end.
    A lone surrogate (no UTF-8 form) becomes "?": raising here would leave a close (or
    a failure on its way out) half done."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded
    cut = limit
    # the first byte left out is a continuation byte (0b10xxxxxx): the character it
    # belongs to started before the cut, and goes whole
    while cut > 0 and encoded[cut] & 0xC0 == 0x80:
        cut -= 1
    return encoded[:cut]


def _check_code(code: int) -> None:
    """An error code for the wire: checked when the application passes it, not when
    data_to_send encodes it (which then failed on every call)."""
    if not 0 <= code < 1 << 62:
        raise LocalProtocolError(f"error code {code} is outside 0 .. 2**62 - 1", ErrorCode.VARINT)


def _varint(value: int) -> bytes:
    encoded = varint_encode(value)
    if encoded is None:
        raise LocalProtocolError("value out of varint range", ErrorCode.VARINT)
    return encoded


def _parse_params(payload: bytes, *, from_client: bool = False) -> dict[str, Any]:
    """Decode and validate the peer's transport parameters: the required integers, and
    the optional ``"cid"`` (32 bytes) and ``"port"`` (0..65535) a client may send, and
    the ``"auth"`` identity proof an IK client sends (its size checked here, its
    signature by the caller).

    ``v``: a client offers the highest version it speaks, so a server (``from_client``)
    takes any version from :data:`TRANSPORT_VERSION` up and answers with its own; a
    client takes only the version it offered (docs/protocol.md 8.2)."""
    try:
        params = msgpack.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HandshakeError("malformed transport parameters") from exc
    if not isinstance(params, dict) or not all(isinstance(key, str) for key in params):
        # one map with string keys (docs/protocol.md 8.2); msgpack alone refused only
        # some other keys (integers) and let bytes keys pass as unknown ones
        raise HandshakeError("malformed transport parameters")
    out: dict[str, Any] = {}
    for key in ("v", "md", "msd", "ms", "it"):
        value = params.get(key)
        if (
            isinstance(value, bool)  # msgpack's true and false are not integers
            or not isinstance(value, int)
            or value < 0
            or value >= 2**62
        ):
            raise HandshakeError(f"transport parameter {key!r} missing or invalid")
        out[key] = value
    version = out["v"]
    if version < TRANSPORT_VERSION or (version > TRANSPORT_VERSION and not from_client):
        raise HandshakeError(f"peer speaks DTP transport version {version}")
    if "cid" in params:
        cid = params["cid"]
        if not isinstance(cid, bytes) or len(cid) != 32:
            raise HandshakeError("transport parameter 'cid' must be 32 bytes")
        out["cid"] = cid
    if "port" in params:
        port = params["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise HandshakeError("transport parameter 'port' must be an integer in 0..65535")
        out["port"] = port
    if "auth" in params:
        proof = params["auth"]
        if not isinstance(proof, bytes) or len(proof) != AUTH_PROOF_SIZE:
            raise HandshakeError(f"transport parameter 'auth' must be {AUTH_PROOF_SIZE} bytes")
        out["auth"] = proof
    return out


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
    if code >= CloseCode.APPLICATION or not event.by_peer:
        return ConnectionClosed(reason, code)
    return ConnectionLost(f"peer closed the connection: {reason} (code {code})")
