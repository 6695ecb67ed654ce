"""What the parts of :class:`~dtp.protocol.connection.core.Connection` share: what a sent
record carried (``_Item``: kept to send again if it is lost), and ``_ConnectionState``:
the attributes ``Connection.__init__`` sets, and the few methods one part calls in
another, declared once so that each mixin type-checks on its own. Declarations only: at
run time ``_ConnectionState`` is empty, and every attribute lives in the connection's own
``__dict__``. (The state of one stream, :class:`Stream`, and the table of them are in
:mod:`~dtp.protocol.connection.stream_table`.)"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from dtp.native.types import RawFrame
from dtp.protocol.connection.stream_table import Stream as Stream
from dtp.protocol.connection.stream_table import StreamTable

if TYPE_CHECKING:
    from dtp.identity.noise import Handshake
    from dtp.native.types import OpenedFrames
    from dtp.protocol.connection.config import ConnectionConfig
    from dtp.protocol.events import ConnectionTerminated, Event
    from dtp.protocol.recovery import AckTracker, LossRecovery
    from dtp.protocol.state import ConnState


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


class _ConnectionState:
    """What the mixins of ``Connection`` share; ``Connection.__init__`` says what each
    attribute holds."""

    config: ConnectionConfig
    is_client: bool
    _state: ConnState
    _events: deque[Event]
    _out: list[bytes]
    _inbuf: bytearray
    _created: float
    _last_received: float
    _last_sent: float
    _keepalive: float | None
    _hs: Handshake
    _hs_messages: list[tuple[int, bytes]]
    _hs_resend_at: float | None
    _hs_resend_interval: float
    _hs_init: bytes | None
    _send_aead: Any
    _recv_aead: Any
    _send_counter: int
    _lane: Any
    _lane_sid: int | None
    lent_lane: Any
    lent_stream_id: int | None
    lent_timer: float | None
    lent_can_recv: bool
    _lent: Stream | None
    _early_records: list[bytes]
    peer_static: bytes | None
    handshake_hash: bytes | None
    peer_address: str | None
    peer_public_key: bytes | None
    _auth_proof: bytes | None
    pattern: str | None
    streams: StreamTable
    _streams: dict[int, Stream]
    _streams_dirty: bool
    _peer_params: dict[str, Any]
    _conn_send_credit: int
    _conn_sent: int
    _conn_recv_limit: int
    _conn_received: int
    _conn_consumed: int
    _conn_credit_at: int
    _stream_credit_at: int
    _ctrl: list[RawFrame]
    _pending_max_data: bool
    _pending_stream_credit: set[int]
    _pending_max_streams: bool
    _held_events: list[Event]
    _held_bytes: int
    _ping_pending: bool
    _close_frame: RawFrame | None
    _closing: bytes | None
    _closing_until: float
    _closing_resend_at: float
    _closing_interval: float
    _closing_inputs: int
    _closing_next: int
    _terminated: ConnectionTerminated | None
    _acks: AckTracker | None
    _ack_lead: bytes | None
    _recovery: LossRecovery | None
    _unacked: int
    _unacked_blocked: bool
    stream_data_handler: Callable[[int, bytes | memoryview, bool], None] | None
    datagram_handler: Callable[[bytes], None] | None
    bytes_sent: int
    bytes_received: int
    records_sent: int
    records_received: int
    datagrams_send_dropped: int
    records_dropped_fragmented: int
    datagram_bytes: int

    if TYPE_CHECKING:
        # the methods one part calls in another (and only those)

        # defined in core.py (Connection itself)
        def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None: ...
        def _receive(self, data: bytes | bytearray | memoryview, now: float) -> None: ...
        def get_timer(self) -> float | None: ...
        def _process_input(self, now: float) -> None: ...
        def _handle_records(self, records: list[OpenedFrames], now: float) -> bool: ...
        def _deliver(self, event: Event) -> None: ...

        # defined in streams.py
        def acknowledge_read(self, stream_id: int, nbytes: int) -> None: ...
        def _return_credit(self, stream: Stream | None) -> None: ...
        def _require_open(self) -> None: ...
        def _maybe_forget(self, stream: Stream) -> None: ...

        # defined in fast_paths.py
        def _can_seal_now(self) -> bool: ...
        def _seal_stream_now(
            self, stream: Stream, data: bytes | bytearray | memoryview, end_stream: bool
        ) -> bytes | bytearray | memoryview: ...
        def _take_back(self, unread: int = 0) -> None: ...

        # defined in records.py
        def _seal_plaintexts(
            self,
            plaintexts: list[bytes],
            items_per_record: list[list[_Item]],
            eliciting: list[bool],
            now: float,
        ) -> None: ...
