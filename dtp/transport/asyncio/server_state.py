"""What an asyncio :class:`~dtp.transport.asyncio.server.DTPServer` knows of itself,
declared once for all its parts (``server_admission``, ``server_tasks``,
``server_handshakes``) so that each type-checks on its own; the hooks and the callback
it is given; and the look at the current task its tasks make when a cancellation comes
(:func:`_being_cancelled`). Declarations only: ``DTPServer.__init__`` sets every
attribute and says what it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio.protocol import Protocol
from dtp.transport.asyncio.server_arrival import _Arrival
from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter
from dtp.transport.handshake_gate import Admission
from dtp.transport.handshake_slots import AddressSlots, ServerSlots
from dtp.transport.heap_release import HeapRelease
from dtp.transport.hooks import Listener, PeerInfo, Reservations
from dtp.transport.replay_guard import ReplayGuard

AcceptHook = Callable[[str], "bool | str | Awaitable[bool | str | None] | None"]
AdmitHook = Callable[[PeerInfo], "bool | str | Awaitable[bool | str | None] | None"]
"""Like AcceptHook but given a :class:`~dtp.hostid.admission.PeerInfo`. A plain (non-async)
admit hook runs in a worker thread, since it may read the ledger."""
ClientCallback = Callable[["DTPStreamReader", "DTPStreamWriter"], "Awaitable[None] | None"]


def _being_cancelled() -> bool:
    """Whether the current task was cancelled (``Task.cancelling``), rather than a
    CancelledError having come from something it awaited (a future cancelled
    elsewhere)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class ServerState:
    """The attributes of an asyncio server, and the methods one of its parts calls in
    another (see ``DTPServer.__init__`` for what each holds)."""

    identity: HostIdentity
    handshakes_failed: int
    refused: int
    busy_refused: int
    unproven_closed: int
    half_handshakes_evicted: int
    _admission: Admission[_Arrival]
    _handshake_slots: ServerSlots[_Arrival]
    _address_slots: AddressSlots[_Arrival] | None
    _expiry: asyncio.TimerHandle | None
    _heap: HeapRelease
    _heap_look: asyncio.TimerHandle | None
    _serving: Reservations | None
    _limit: int
    _callback: ClientCallback
    _accept: AcceptHook | None
    _admit: AdmitHook | None
    _config: ConnectionConfig
    _server: asyncio.base_events.Server | None
    _websockets: list[asyncio.base_events.Server]
    _attached: Listener | None
    _attached_watch: asyncio.Task[None] | None
    _closed: asyncio.Event
    _tasks: set[asyncio.Task[None]]
    _loop: asyncio.AbstractEventLoop | None
    _replays: ReplayGuard

    if TYPE_CHECKING:
        # defined in server_admission.py
        def _arm_expiry(self) -> None: ...

        # defined in server_tasks.py
        def _start_serving(self, arrival: _Arrival) -> None: ...

        # defined in server_handshakes.py
        async def _handshake(self, proto: Protocol, arrival: _Arrival) -> bool: ...
