"""What one broadcast listener holds (:class:`ListenerState`), declared once for every
part of :class:`~dtp.messaging.broadcast.listener.BroadcastListener`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.broadcast.events import AirChange, BroadcastMessage

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import BlockingStream


class ListenerState:
    """The state of one :class:`~dtp.messaging.broadcast.listener.BroadcastListener` (see
    its ``__init__`` for what each attribute holds)."""

    # what it was given, and what the station's HELLO said
    stream: BlockingStream
    ledger: Ledger | None
    identity: HostIdentity | None
    broadcast_id: str | None
    broadcaster: str | None
    channel: str | None
    _public: bytes | None
    session: bytes | None
    session_started_ms: int | None
    hello: threading.Event
    # what it received
    _queue_size: int
    _queue: queue.Queue[BroadcastMessage | AirChange | None]
    _queue_lock: threading.Lock
    _last_seq: int
    _unreported: int
    on_air: bool
    received: int
    forged: int
    replayed: int
    violations: int
    missed: int
    dropped: int
    last_error: DTPError | None
    refusal: E.NoTicket | None
    _on_error: Callable[[DTPError], None] | None
    # what it sends
    _send_lock: threading.Lock
    _last_tip_id: int
    # its reader and its closing
    _reader: threading.Thread
    close_reason: str | None
    closed: threading.Event
    _settled: threading.Event
