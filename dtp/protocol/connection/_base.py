"""What the two mixins of :class:`~dtp.protocol.connection._core.Connection` share:
``_ConnectionState``, the attributes ``Connection.__init__`` sets, and the few methods
one part calls in another, declared once so that each mixin type-checks on its own.
Declarations only: at run time ``_ConnectionState`` is empty, and every attribute lives
in a slot of ``Connection`` (its ``__slots__``: an attribute added here is added
there; tests/protocol/test_connection_slots.py). (What has state of its own is an
object the connection holds: the stream table,
:mod:`~dtp.protocol.connection._stream_table`, and the record layer,
:mod:`~dtp.protocol.connection._records`.)"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.protocol.connection._records import RecordLayer
from dtp.protocol.connection._stream_table import Stream as Stream
from dtp.protocol.connection._stream_table import StreamTable

if TYPE_CHECKING:
    from dtp.native.types import OpenedFrames, OpenFramesResult
    from dtp.protocol._events import Event
    from dtp.protocol._state import ConnState
    from dtp.protocol.connection._config import ConnectionConfig


class _ConnectionState:
    """What the mixins of ``Connection`` share; ``Connection.__init__`` says what each
    attribute holds."""

    config: ConnectionConfig
    is_client: bool
    _state: ConnState
    _events: deque[Event]
    _inbuf: bytearray
    _last_received: float
    _last_sent: float
    _keepalive: float | None
    _hs_resend_at: float | None
    _recv_aead: Any
    _lane: Any
    _lane_sid: int | None
    lent_lane: Any
    lent_stream_id: int | None
    lent_timer: float | None
    lent_can_recv: bool
    _lent: Stream | None
    peer_address: str | None
    streams: StreamTable
    _streams: dict[int, Stream]
    _peer_params: dict[str, Any]
    records: RecordLayer
    _lossy: bool
    _held_events: list[Event] | None
    _held_bytes: int
    stream_data_handler: Callable[[int, bytes | memoryview, bool], None] | None
    datagram_handler: Callable[[bytes], None] | None
    datagram_run_handler: Callable[[list[bytes]], None] | None
    bytes_sent: int
    bytes_received: int
    records_received: int

    if TYPE_CHECKING:
        # the methods a mixin calls outside itself (and only those): the fast paths
        # hand records to the general path and back (_core.py), and the streams API
        # seals at once or takes a lent stream back first (_fast_paths.py), and hands a
        # record it does not open a stream with (or a datagram it does not hand on) to
        # the general path; the fast paths call nothing of _streams.py

        # defined in _core.py (Connection itself)
        def receive_data(
            self, data: bytes | bytearray | memoryview, now: float, size: int | None = None
        ) -> None: ...
        def _receive(
            self,
            data: bytes | bytearray | memoryview,
            now: float,
            opened: OpenFramesResult | None = None,
        ) -> None: ...
        def get_timer(self) -> float | None: ...
        def _process_input(self, now: float) -> None: ...
        def _handle_records(self, records: list[OpenedFrames], now: float) -> bool: ...
        def _take_datagram_run(self, counter: int, run: list[bytes], now: float) -> bool: ...
        def _deliver(self, event: Event) -> None: ...

        # defined in _fast_paths.py
        def _can_seal_now(self) -> bool: ...
        def _seal_stream_now(
            self, stream: Stream, data: bytes | bytearray | memoryview, end_stream: bool
        ) -> bytes | bytearray | memoryview: ...
        def _take_back(self, unread: int = 0) -> None: ...
