"""The broadcaster's side (:class:`BroadcastStation`): made of its listeners and air time
(:mod:`~dtp.messaging.broadcast.station_listeners`, :mod:`~dtp.messaging.broadcast.air_time`)
and its inbox of requests and tips (:mod:`~dtp.messaging.broadcast.inbox`,
:mod:`~dtp.messaging.broadcast.tips`, :mod:`~dtp.messaging.broadcast.tip_state`); here are
its start, its money (claim, cancel) and its closing."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.broadcast.air_time import StationAirTime
from dtp.messaging.broadcast.events import ListenerRequest, Tip
from dtp.messaging.broadcast.station_link import _StationLink
from dtp.messaging.broadcast.tips import _TipIds
from dtp.messaging.broadcast.wire import SESSION_BYTES

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger


class BroadcastStation(StationAirTime):
    """The broadcaster's side: signs and fans out messages while the ledger says it is on
    air, collects tips and requests, claims earnings."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        broadcast_id: str,
        *,
        link_queue: int = 256,
        max_listeners: int = 1024,
        inbox_size: int = 256,
        tipped: Mapping[str, int] | None = None,
        tip_state: str | os.PathLike[str] | None = None,
        keep_alive: bool = True,
    ) -> None:
        """``link_queue`` (frames per listener) and ``inbox_size`` (tips, requests) are
        at least 1 and ``max_listeners`` at least 0 (ValueError; TypeError when not ints):
        a queue of 0 was unbounded, so listeners' tips and requests could fill memory.

        Each station is a new session (:attr:`session`): tips signed for another one
        are refused, but the rule "a tipper's accepted tips never exceed its recorded
        contributions" counts only what this instance accepted unless it is told what
        earlier ones did: ``tipped`` (tipper address → MIST accepted, e.g. an earlier
        station's :attr:`tipped`) and/or ``tip_state``, a JSON file read at start (when
        it exists) and rewritten, atomically, at every accepted tip, so a station
        restarted with the same path goes on from its predecessor's totals.

        ``keep_alive`` (on by default): while the station sends, it records a heartbeat
        on the ledger at most every half ``Broadcast.idle_ms`` (:meth:`heartbeat`), so
        its listeners cannot leave the broadcast as idle (docs/escrow.md §9). Off, the
        station's listeners may leave once it has been live on the ledger for none of
        that bound."""
        for name, value, low in (
            ("link_queue", link_queue, 1),
            ("max_listeners", max_listeners, 0),
            ("inbox_size", inbox_size, 1),
        ):
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
            if value < low:
                raise ValueError(f"{name} must be at least {low}")
        b = ledger.get_broadcast(broadcast_id)
        if b.broadcaster != identity.sui_address:
            raise E.StationError("this identity is not the broadcaster")
        self.ledger = ledger
        self.identity = identity
        self.broadcast_id = b.id
        self.channel = b.channel
        self._start_ms = b.start_ms
        self._slot_ms = b.slot_ms
        #: The TicketSale whose holders alone are admitted (None: anyone may listen).
        self.ticket_sale = b.ticket_sale
        # the last read of the sale's holders: (when it began, monotonic; the holders)
        self._ticket_lock = threading.Lock()
        self._ticket_read: tuple[float, Mapping[str, int]] | None = None
        #: Listeners refused for holding no ticket.
        self.refused_listeners = 0
        self.link_queue = link_queue
        self.max_listeners = max_listeners
        self._lock = threading.Lock()
        self._links: list[_StationLink] = []
        # links attached so far: a default name counted the links open, so a newcomer
        # took the name of one still listening once another had left
        self._attached = 0
        #: This station's session nonce (random; in the HELLO and every signature).
        self.session = os.urandom(SESSION_BYTES)
        #: When the station's session started (ms since the epoch, the host's clock; in the
        #: HELLO).
        self.session_started_ms = time.time_ns() // 1_000_000
        self._seq = 1
        self._on_air = False
        self._checked_slot = -1
        self._checked_ms = b.start_ms
        self._cancelled = b.cancelled
        # heartbeats: when the next is due (ledger ms), and the thread of the one under way
        self._keep_alive_on = bool(keep_alive)
        self._idle_ms = b.idle_ms
        self._next_beat_ms = b.last_live_ms + b.idle_ms // 2
        self._beat: threading.Thread | None = None
        self._tip_state = None if tip_state is None else os.fspath(tip_state)
        self._tipped: dict[str, int] = {}
        for source in (self._load_tip_state(), tipped or {}):
            for address, total in source.items():
                if type(total) is not int or total < 0:
                    raise ValueError(f"a tipped total is an int of MIST >= 0, not {total!r}")
                key = normalize_id(address, "tipper address")
                self._tipped[key] = max(self._tipped.get(key, 0), total)
        # per tipper, the tip IDs (as 128-bit numbers) accepted in the station's session,
        # a bounded window of them (a set of every ID would grow by one entry per 1-MIST
        # tip for the station's life)
        self._tip_ids: dict[str, _TipIds] = {}
        # held while the tip state file is written (not _lock: send() needs that one,
        # and a slow disk must not stall the broadcast)
        self._save_lock = threading.Lock()
        # per tipper, tips counted whose save is under way (and notified as each ends)
        self._saving: dict[str, int] = {}
        self._tip_saved = threading.Condition(self._lock)
        # the last ledger read of the broadcast for tips, (when it began, monotonic;
        # whether cancelled; the contributions), and when the last one began and whether
        # it is still under way (see _contributed)
        self._reads = threading.Condition(threading.Lock())
        self._read: tuple[float, bool, Mapping[str, int]] | None = None
        self._read_began = -math.inf
        self._reading = False
        self._inbox_lock = threading.Lock()
        #: Accepted tips (bounded; the oldest are dropped when full and counted in
        #: :attr:`inbox_dropped` and :attr:`tips_dropped`).
        self.tips: queue.Queue[Tip] = queue.Queue(inbox_size)
        #: Listener requests (bounded likewise, counted in :attr:`inbox_dropped`).
        self.requests: queue.Queue[ListenerRequest] = queue.Queue(inbox_size)
        self.invalid_tips = 0
        #: Tips that could not be checked because the ledger (or the tip state file)
        #: failed (not accepted).
        self.unchecked_tips = 0
        #: Tips and requests dropped (the oldest) from a full :attr:`tips` or
        #: :attr:`requests` queue.
        self.inbox_dropped = 0
        #: Accepted (paid) tips among those: the money is in the pool, unseen (logged).
        self.tips_dropped = 0
        self._monitor: threading.Thread | None = None
        self._stop = threading.Event()
        # set by close() (under _lock): a link attached after it, or while it ran, was
        # started and broadcast to for good, its threads never stopped
        self._closed = False

    def claim(self) -> int:
        """Claim everything the completed, covered slots earned; returns the amount."""
        return self.ledger.broadcast_claim(self.identity, self.broadcast_id)

    def cancel(self) -> None:
        """Cancel the broadcast on the ledger (listeners can then withdraw their share of
        the pool) and tell every listener."""
        self.ledger.broadcast_cancel(self.identity, self.broadcast_id)
        self._set_air(False, "cancelled", self._checked_slot)

    def close(self) -> None:
        """Stop the monitor, close every listener link and wait for a heartbeat under way;
        :meth:`attach` refuses from then on. The streams are left to their owners, and so
        are the links' reader threads: each ends when its stream does, or at the next
        bytes it receives (:meth:`_StationLink.close`)."""
        self._stop.set()
        with self._lock:
            self._closed = True
            links = list(self._links)
            beat = self._beat
        for link in links:
            link.close()
        if beat is not None:
            # (a heartbeat under way: the ledger may be closed by the caller next)
            beat.join()
