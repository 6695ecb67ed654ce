"""What one broadcast station holds (:class:`StationState`), declared once for every part
of :class:`~dtp.messaging.broadcast.station.BroadcastStation`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dtp.messaging.broadcast.events import ListenerRequest, Tip

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.broadcast.station_link import _StationLink


class StationState:
    """The state of one :class:`~dtp.messaging.broadcast.station.BroadcastStation` (see
    its ``__init__`` for what each attribute holds)."""

    # the broadcast, as the ledger had it at start
    ledger: Ledger
    identity: HostIdentity
    broadcast_id: str
    channel: str
    _start_ms: int
    _slot_ms: int
    ticket_sale: str | None
    # admission
    _ticket_lock: threading.Lock
    _ticket_read: tuple[float, Mapping[str, int]] | None
    refused_listeners: int
    link_queue: int
    max_listeners: int
    _lock: threading.Lock
    _links: list[_StationLink]
    _attached: int
    # the session and the air time
    session: bytes
    session_started_ms: int
    _seq: int
    _on_air: bool
    _checked_slot: int
    _checked_ms: int
    _cancelled: bool
    # heartbeats (docs/escrow.md §9)
    _keep_alive_on: bool
    _idle_ms: int
    _next_beat_ms: int
    _beat: threading.Thread | None
    # tips
    _tip_state: str | None
    _tipped: dict[str, int]
    _save_lock: threading.Lock
    _saving: dict[str, int]
    _tip_saved: threading.Condition
    _reads: threading.Condition
    _read: tuple[float, bool, Mapping[str, int]] | None
    _read_began: float
    _reading: bool
    # the inbox
    _inbox_lock: threading.Lock
    tips: queue.Queue[Tip]
    requests: queue.Queue[ListenerRequest]
    invalid_tips: int
    unchecked_tips: int
    inbox_dropped: int
    tips_dropped: int
    # the monitor and the closing
    _monitor: threading.Thread | None
    _stop: threading.Event
    _closed: bool
