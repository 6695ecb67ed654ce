"""What the parts of :class:`~dtp.protocol.connection.core.Connection` share: the state of
one stream (:class:`Stream`), what a sent record carried (``_Item``: kept to send again if
it is lost), and ``_ConnectionState``: the attributes ``Connection.__init__`` sets, and the
methods one mixin calls in another, declared once so that each mixin type-checks on its
own. Declarations only: at run time ``_ConnectionState`` is empty, and every attribute
lives in the connection's own ``__dict__`` as before."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from dtp.native.types import RawFrame
from dtp.protocol.recovery import RangeSet
from dtp.protocol.state import RecvState, SendState

if TYPE_CHECKING:
    from dtp.identity.noise import Handshake
    from dtp.native.types import OpenedFrames
    from dtp.protocol.connection.config import ConnectionConfig
    from dtp.protocol.events import ConnectionTerminated, Event
    from dtp.protocol.recovery import AckTracker, LossRecovery, SentRecord
    from dtp.protocol.state import CloseCode, ConnState


@dataclass
class Stream:
    """One stream's state: its sending half and its receiving half."""

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
    _streams: dict[int, Stream]
    _streams_dirty: bool
    _next_stream_id: int
    _peer_params: dict[str, Any]
    _conn_send_credit: int
    _conn_sent: int
    _conn_recv_limit: int
    _conn_received: int
    _conn_consumed: int
    _conn_credit_at: int
    _stream_credit_at: int
    _peer_max_streams: int
    _opened_by_us: int
    _local_max_streams: int
    _peer_opened: int
    _peer_streams_done: int
    _untaken: set[int] | None
    _first_stream_unclaimed: bool
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
    bytes_sent: int
    bytes_received: int
    records_sent: int
    records_received: int
    datagrams_send_dropped: int
    records_dropped_fragmented: int
    datagram_bytes: int

    if TYPE_CHECKING:
        # defined in core.py (Connection itself)
        def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None: ...
        def _receive(self, data: bytes | bytearray | memoryview, now: float) -> None: ...
        def get_timer(self) -> float | None: ...
        def close(self, error_code: int = CloseCode.NO_ERROR, reason: str = "") -> None: ...

        # defined in inbound.py
        def _process_input(self, now: float) -> None: ...
        def _handle_records(self, records: list[OpenedFrames], now: float) -> bool: ...

        # defined in handshake.py
        def _deliver(self, event: Event) -> None: ...
        def _process_handshake_records(self, now: float) -> bool: ...
        def _handle_late_handshake_record(self, now: float) -> None: ...
        def _on_control(self, kind: int, data: bytes) -> None: ...

        # defined in streams.py
        def acknowledge_read(self, stream_id: int, nbytes: int) -> None: ...
        def reset_stream(self, stream_id: int, error_code: int = 0) -> None: ...
        def _on_stream_frame(self, stream_id: int, offset: int, data: bytes, fin: bool) -> None: ...
        def _on_reset(self, stream_id: int, error_code: int, final_size: int) -> None: ...
        def _check_not_unopened(self, stream_id: int) -> None: ...
        def _return_credit(self, stream: Stream | None) -> None: ...
        def _require_open(self) -> None: ...
        def _open_peer_streams_up_to(self, stream_id: int) -> Stream: ...
        def _get_stream(self, stream_id: int, create: bool) -> Stream: ...
        def _maybe_forget(self, stream: Stream) -> None: ...
        def _is_ours(self, stream_id: int) -> bool: ...

        # defined in fast_send.py
        def _can_seal_now(self) -> bool: ...
        def _seal_stream_now(
            self, stream: Stream, data: bytes | bytearray | memoryview, end_stream: bool
        ) -> bytes | bytearray | memoryview: ...
        def _get_lane(self) -> Any: ...
        def _nothing_goes_first(self) -> bool: ...

        # defined in fast_receive.py
        def _fast_stream_frame(
            self, stream_id: int, offset: int, data: bytes | memoryview
        ) -> bool: ...

        # defined in lending.py
        def _take_back(self, unread: int = 0) -> None: ...

        # defined in records.py
        def _seal_plaintexts(
            self,
            plaintexts: list[bytes],
            items_per_record: list[list[_Item]],
            eliciting: list[bool],
            now: float,
        ) -> None: ...

        # defined in retransmit.py
        def _on_acked(self, records: list[SentRecord]) -> None: ...
        def _requeue(self, lost: list[SentRecord]) -> None: ...
